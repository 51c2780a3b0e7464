//! The HTML file: a strict Content-Security-Policy (nothing may be fetched: no network, no
//! other file; inline scripts and styles and `data:` images only), the styles, uPlot, the
//! report's data as inline JSON, and the script that renders it.

use anyhow::Result;

use super::data::Report;

const UPLOT_JS: &str = include_str!("vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("vendor/uPlot.min.css");
const PAGE_JS: &str = include_str!("page.js");
const VIEWS_JS: &str = include_str!("views.js");
const PAGE_CSS: &str = include_str!("page.css");

/// What the page may load: nothing from anywhere, except its own inline code and styles
/// and `data:` images (uPlot draws on canvases).
pub const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'";

pub fn render(r: &Report) -> Result<String> {
    let data = inline_json(&serde_json::to_string(r)?);
    let title = escape(&format!(
        "expflow report: {} run {}",
        r.run.pipeline, r.run.id
    ));
    Ok(format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{UPLOT_CSS}</style>
<style>{PAGE_CSS}</style>
</head>
<body>
<noscript>This report renders with JavaScript; its data is the JSON in the element with id "report-data".</noscript>
<div id="app"></div>
<script type="application/json" id="report-data">{data}</script>
<script>{UPLOT_JS}</script>
<script>(function () {{
'use strict';
{VIEWS_JS}
{PAGE_JS}
}})();</script>
</body>
</html>
"#
    ))
}

/// JSON made safe inside `<script>`: `<` only occurs inside JSON strings, where `\u003c`
/// means the same, so no `</script>` or `<!--` can end the element early.
fn inline_json(json: &str) -> String {
    json.replace('<', "\\u003c")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_json_cannot_close_its_script_element_and_reads_back_the_same() {
        let v = serde_json::json!({"log": "</script><script>alert(1)</script><!--"});
        let inline = inline_json(&v.to_string());
        assert!(!inline.contains('<'), "{inline}");
        let back: serde_json::Value = serde_json::from_str(&inline).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn the_vendored_chart_library_is_uplot_and_the_page_allows_no_fetch() {
        assert!(UPLOT_JS.contains("uPlot"));
        assert!(CSP.starts_with("default-src 'none'"));
        assert!(!CSP.contains("http"), "{CSP}");
    }
}
