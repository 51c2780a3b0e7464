//! Swaps of every combination of file and directory, and moves that never land on a path
//! that appeared meanwhile.

use super::*;

fn tree(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        if d.is_file() {
            let rel = d.strip_prefix(root).unwrap().display().to_string();
            out.push((rel, fs::read_to_string(&d).unwrap()));
            continue;
        }
        for e in fs::read_dir(&d).unwrap() {
            stack.push(e.unwrap().path());
        }
    }
    out.sort();
    out
}

fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

fn setup(dest_is_dir: bool, staged_is_dir: bool) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("out");
    let staged = sibling(&dest, "new", 0);
    for (path, is_dir, text) in [(&dest, dest_is_dir, "old"), (&staged, staged_is_dir, "new")] {
        if is_dir {
            fs::create_dir_all(path.join("sub")).unwrap();
            fs::write(path.join("sub/f"), text).unwrap();
            fs::write(path.join(text), text).unwrap();
        } else {
            fs::write(path, text).unwrap();
        }
    }
    (t, dest, staged)
}

#[test]
fn swaps_every_combination_of_file_and_directory_leaving_nothing_beside() {
    for swap in [
        swap_in as fn(&Path, &Path) -> io::Result<()>,
        swap_by_renames,
    ] {
        for (dest_dir, staged_dir) in [(true, true), (false, true), (true, false), (false, false)] {
            let (t, dest, staged) = setup(dest_dir, staged_dir);
            let want = if staged_dir { tree(&staged) } else { vec![] };
            swap(&staged, &dest).unwrap();
            if staged_dir {
                assert_eq!(tree(&dest), want);
                assert!(dest.join("new").exists() && !dest.join("old").exists());
            } else {
                assert_eq!(fs::read_to_string(&dest).unwrap(), "new");
            }
            assert_eq!(names(t.path()), vec!["out".to_string()]);
        }
    }
}

#[test]
fn moves_into_an_absent_destination_and_never_over_one_that_appeared() {
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("out");
    let staged = sibling(&dest, "new", 0);
    fs::write(&staged, "new").unwrap();
    swap_in(&staged, &dest).unwrap();
    assert_eq!(fs::read_to_string(&dest).unwrap(), "new");
    assert_eq!(names(t.path()), vec!["out".to_string()]);
    // RENAME_NOREPLACE: a destination that exists is not clobbered by that path.
    fs::write(&staged, "other").unwrap();
    let err = rename2(&staged, &dest, Rename2::NoReplace);
    if !err.as_ref().is_err_and(unsupported) {
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&dest).unwrap(), "new");
    }
}

#[test]
fn what_a_killed_run_staged_beside_a_destination_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("all.parquet");
    std::fs::write(&dest, b"ours").unwrap();
    // A process that has exited: its pid names no live process.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale_new = dir
        .path()
        .join(format!(".all.parquet.expflow-new-{dead}-0"));
    let stale_old = dir
        .path()
        .join(format!(".all.parquet.expflow-old-{dead}-0"));
    let live = dir
        .path()
        .join(format!(".all.parquet.expflow-new-{}-7", std::process::id()));
    for p in [&stale_new, &stale_old, &live] {
        std::fs::write(p, b"partial").unwrap();
    }
    let other = dir.path().join(".other.expflow-new-1-0");
    std::fs::write(&other, b"not beside this destination").unwrap();
    clear_stale(&dest);
    assert!(!stale_new.exists() && !stale_old.exists());
    assert!(live.exists(), "this process's own staging is left alone");
    assert!(other.exists() && dest.exists());
}
