//! Path confinement with real directories and real symlinks.

use std::fs;
use std::os::unix::fs::symlink;

use dsm_views::{Error, MAX_PATH_LEN, confine};

use crate::common::TempDir;

#[test]
fn plain_relative_paths_resolve_under_the_root() {
    let dir = TempDir::new("confine-plain");
    let root = fs::canonicalize(dir.path()).unwrap();
    fs::create_dir(root.join("data")).unwrap();
    fs::write(root.join("data/grid.bin"), b"x").unwrap();
    assert_eq!(
        confine(&root, "data/grid.bin").unwrap(),
        root.join("data/grid.bin")
    );
    assert_eq!(
        confine(&root, "./data/./grid.bin").unwrap(),
        root.join("data/grid.bin")
    );
    // Not there yet: resolved all the same (the caller decides whether to create).
    assert_eq!(
        confine(&root, "data/new/deeper.bin").unwrap(),
        root.join("data/new/deeper.bin")
    );
    assert_eq!(confine(&root, "data/").unwrap(), root.join("data"));
}

#[test]
fn bad_syntax_is_refused() {
    let dir = TempDir::new("confine-syntax");
    let root = dir.path();
    assert!(matches!(confine(root, ""), Err(Error::PathEmpty)));
    assert!(matches!(confine(root, "."), Err(Error::PathEmpty)));
    assert!(matches!(confine(root, "a\0b"), Err(Error::PathNul)));
    assert!(matches!(
        confine(root, "/etc/passwd"),
        Err(Error::PathAbsolute(_))
    ));
    assert!(matches!(confine(root, "../x"), Err(Error::PathParent(_))));
    assert!(matches!(
        confine(root, "a/../../x"),
        Err(Error::PathParent(_))
    ));
    assert!(matches!(confine(root, "a/.."), Err(Error::PathParent(_))));
    let long = "a/".repeat(MAX_PATH_LEN / 2 + 1);
    assert!(matches!(
        confine(root, &long),
        Err(Error::PathTooLong { .. })
    ));
    assert!(matches!(
        confine(root, ".grid.bin.dsm-journal"),
        Err(Error::PathReserved(_))
    ));
}

#[test]
fn symlink_to_etc_passwd_is_refused() {
    let dir = TempDir::new("confine-passwd");
    symlink("/etc/passwd", dir.path().join("passwd")).unwrap();
    match confine(dir.path(), "passwd") {
        Err(Error::PathEscapes { target, .. }) => {
            assert_eq!(target, fs::canonicalize("/etc/passwd").unwrap());
        }
        other => panic!("expected PathEscapes, got {other:?}"),
    }
    // A relative link climbing out is the same thing.
    symlink(
        "../../../../../../../../etc/passwd",
        dir.path().join("climb"),
    )
    .unwrap();
    assert!(matches!(
        confine(dir.path(), "climb"),
        Err(Error::PathEscapes { .. })
    ));
}

#[test]
fn symlinked_directory_outside_is_refused() {
    let outside = TempDir::new("confine-outside");
    let dir = TempDir::new("confine-dirlink");
    fs::write(outside.path().join("secret"), b"s").unwrap();
    symlink(outside.path(), dir.path().join("out")).unwrap();
    assert!(matches!(
        confine(dir.path(), "out/secret"),
        Err(Error::PathEscapes { .. })
    ));
    assert!(matches!(
        confine(dir.path(), "out/not-yet"),
        Err(Error::PathEscapes { .. })
    ));
    // Deeper on the path too.
    fs::create_dir(dir.path().join("sub")).unwrap();
    symlink("/etc", dir.path().join("sub/etc")).unwrap();
    assert!(matches!(
        confine(dir.path(), "sub/etc/passwd"),
        Err(Error::PathEscapes { .. })
    ));
}

#[test]
fn dangling_symlink_is_refused() {
    let dir = TempDir::new("confine-dangling");
    symlink("/nonexistent-dsm-views/target", dir.path().join("dangling")).unwrap();
    assert!(matches!(
        confine(dir.path(), "dangling"),
        Err(Error::DanglingSymlink(_))
    ));
}

#[test]
fn symlinks_inside_the_root_are_followed() {
    let dir = TempDir::new("confine-inside");
    let root = fs::canonicalize(dir.path()).unwrap();
    fs::create_dir(root.join("real")).unwrap();
    fs::write(root.join("real/f"), b"x").unwrap();
    symlink("real", root.join("alias")).unwrap();
    symlink("real/f", root.join("flink")).unwrap();
    assert_eq!(confine(&root, "alias/f").unwrap(), root.join("real/f"));
    assert_eq!(confine(&root, "flink").unwrap(), root.join("real/f"));
    // A symlinked root is fine: the check uses its canonical form.
    let holder = TempDir::new("confine-rootlink");
    symlink(&root, holder.path().join("root")).unwrap();
    assert_eq!(
        confine(&holder.path().join("root"), "alias/f").unwrap(),
        root.join("real/f")
    );
    // A link inside the root to a journal is still a journal.
    symlink(".f.dsm-journal", root.join("real/j")).unwrap();
    fs::write(root.join("real/.f.dsm-journal"), b"").unwrap();
    assert!(matches!(
        confine(&root, "real/j"),
        Err(Error::PathReserved(_))
    ));
}
