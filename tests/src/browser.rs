//! Loading `expflow report` pages in a real browser: Debian's `chromium`, headless, driven
//! by playwright-core (`tests/browser/`, installed by `npm ci`; it downloads no browser).
//! `.ci/run` installs both, so under `CI=true` their absence fails the test.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::Project;

/// The browser and its driver.
pub struct Browser {
    chromium: PathBuf,
    dir: PathBuf,
}

impl Browser {
    /// Chromium (`$EXPFLOW_CHROMIUM`, else `/usr/bin/chromium`), Node.js and playwright-core,
    /// or `None` after reporting the skip (a failure under `CI=true`).
    pub fn find() -> Option<Browser> {
        let chromium = std::env::var_os("EXPFLOW_CHROMIUM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/browser")).to_path_buf();
        let missing = if !chromium.exists() {
            Some(format!(
                "{} is missing (apt-get install chromium)",
                chromium.display()
            ))
        } else if !Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            Some("Node.js is missing (apt-get install nodejs npm)".to_string())
        } else if !dir
            .join("node_modules/playwright-core/package.json")
            .exists()
        {
            Some(format!(
                "playwright-core is not installed (cd {} && npm ci)",
                dir.display()
            ))
        } else {
            None
        };
        if let Some(why) = missing {
            crate::skip::skip_or_fail(&why);
            return None;
        }
        Some(Browser { chromium, dir })
    }

    /// Loads `report` headless, takes a full-page screenshot into `shot`, and returns what
    /// the page did (`tests/browser/check.mjs` lists the fields).
    pub fn load(&self, report: &Path, shot: &Path) -> Value {
        let out = Command::new("node")
            .arg(self.dir.join("check.mjs"))
            .arg(report)
            .arg(shot)
            .arg(&self.chromium)
            .current_dir(&self.dir)
            .output()
            .expect("run node");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "loading {} in chromium failed:\n{stdout}\n{}",
            report.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }
}

/// Where the screenshots go: `$EXPFLOW_SCREENSHOTS`, else `expflow-report-screenshots` in
/// the system's temporary directory (never the repository); they outlive the test's own
/// temporary project so that CI can keep them.
pub fn screenshots() -> PathBuf {
    let dir = std::env::var_os("EXPFLOW_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("expflow-report-screenshots"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// The distinct colours of a PNG (alpha ignored).
pub fn colours(png: &Path) -> HashSet<[u8; 3]> {
    let img = image::open(png)
        .unwrap_or_else(|e| panic!("{}: {e}", png.display()))
        .to_rgb8();
    img.pixels().map(|p| p.0).collect()
}

/// The colour the report gives executed nodes (`--executed` in page.css).
pub const EXECUTED_RGB: [u8; 3] = [0x2e, 0x7d, 0x32];

/// Writes `expflow report ARGS --out DIR/NAME.html` for project `p`, loads it in the
/// browser and asserts what every report must do: nothing fetched, no console or page
/// error, DAG nodes drawn, at least one chart, a screenshot that is not blank. Returns the
/// page's observations. The screenshot is kept, for CI to collect, in [`screenshots`] (its
/// path is printed).
pub fn check_report(p: &Project, browser: &Browser, name: &str, args: &[&str]) -> Value {
    let html = screenshots().join(format!("{name}.html"));
    let shot = screenshots().join(format!("{name}.png"));
    let mut full = vec!["report"];
    full.extend_from_slice(args);
    full.extend(["--out", html.to_str().unwrap()]);
    let out = p.expflow(&full);
    assert_eq!(
        out.status.code(),
        Some(0),
        "expflow {full:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = browser.load(&html, &shot);
    println!(
        "report {} and its screenshot {}",
        html.display(),
        shot.display()
    );
    assert_eq!(seen["requests"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["consoleErrors"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["pageErrors"], serde_json::json!([]), "{seen}");
    assert!(seen["dagNodes"].as_u64().unwrap_or(0) > 0, "{seen}");
    assert!(seen["charts"].as_u64().unwrap_or(0) > 0, "{seen}");
    assert_eq!(
        seen["charts"], seen["chartCanvases"],
        "every chart drew: {seen}"
    );
    let found = colours(&shot);
    assert!(
        found.len() > 32,
        "the screenshot {} has {} colours: blank",
        shot.display(),
        found.len()
    );
    assert!(
        found.contains(&EXECUTED_RGB),
        "no executed node drawn in {}",
        shot.display()
    );
    seen
}
