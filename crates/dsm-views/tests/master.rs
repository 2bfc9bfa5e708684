//! The master service: requests from several nodes, replies, and refusals that change nothing.

use std::fs;

use dsm_views::{Access, Durability, Error, FileId, Master, Reply, Request, Run, ViewId, diff};

use crate::common::TempDir;

fn open(m: &mut Master, node: u32, path: &str, access: Access) -> dsm_views::Result<FileId> {
    match m.handle(
        node,
        Request::Open {
            path,
            access,
            create_len: Some(1000),
        },
    )? {
        Reply::Opened { file, len } => {
            assert_eq!(len, 1000);
            Ok(file)
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn define(
    m: &mut Master,
    node: u32,
    file: FileId,
    offset: u64,
    len: u64,
) -> dsm_views::Result<ViewId> {
    match m.handle(node, Request::Define { file, offset, len })? {
        Reply::Defined { view } => Ok(view),
        other => panic!("unexpected {other:?}"),
    }
}

fn merge(
    m: &mut Master,
    node: u32,
    file: FileId,
    view: ViewId,
    runs: &[Run],
) -> dsm_views::Result<Reply> {
    m.handle(node, Request::Merge { file, view, runs })
}

#[test]
fn nodes_merge_disjoint_views_of_one_file() {
    let dir = TempDir::new("master-basic");
    let mut m = Master::new(dir.path(), Durability::Fsync).unwrap();
    let f1 = open(&mut m, 1, "grid.bin", Access::ReadWrite).unwrap();
    let f2 = open(&mut m, 2, "./grid.bin", Access::ReadWrite).unwrap();
    assert_eq!(f1, f2, "one handle per path");
    assert!(matches!(
        open(&mut m, 1, "grid.bin", Access::Read),
        Err(Error::AlreadyOpen { .. })
    ));
    let v1 = define(&mut m, 1, f1, 3, 333).unwrap();
    let v2 = define(&mut m, 2, f1, 336, 500).unwrap();
    assert!(matches!(
        define(&mut m, 2, f1, 300, 30),
        Err(Error::Overlap { owner: 1, .. })
    ));

    let twin = vec![0u8; 333];
    let mut cur = twin.clone();
    cur[0..10].fill(1);
    cur[332] = 9;
    let Reply::Merged(report) = merge(&mut m, 1, f1, v1, &diff(&twin, &cur)).unwrap() else {
        panic!("not merged");
    };
    assert_eq!((report.records, report.bytes), (2, 11));
    let runs = [Run {
        offset: 0,
        bytes: vec![2; 500],
    }];
    merge(&mut m, 2, f1, v2, &runs).unwrap();
    // Another node's view, or outside the view: refused, nothing written.
    assert!(matches!(
        merge(&mut m, 2, f1, v1, &runs),
        Err(Error::NotOwner { .. })
    ));
    let long = [Run {
        offset: 1,
        bytes: vec![3; 500],
    }];
    assert!(matches!(
        merge(&mut m, 2, f1, v2, &long),
        Err(Error::RunOutOfBounds { .. })
    ));

    let mut expect = vec![0u8; 1000];
    expect[3..13].fill(1);
    expect[335] = 9;
    expect[336..836].fill(2);
    let mut got = vec![0; 1000];
    m.read_at(f1, 0, &mut got).unwrap();
    assert_eq!(got, expect);
    assert_eq!(fs::read(dir.path().join("grid.bin")).unwrap(), expect);
}

#[test]
fn readers_cannot_merge_and_closing_frees_views() {
    let dir = TempDir::new("master-close");
    let mut m = Master::new(dir.path(), Durability::NoSync).unwrap();
    let f = open(&mut m, 1, "f", Access::ReadWrite).unwrap();
    open(&mut m, 2, "f", Access::Read).unwrap();
    let w = define(&mut m, 1, f, 0, 100).unwrap();
    // A reader's view may cover a writer's: it never merges.
    let r = define(&mut m, 2, f, 0, 1000).unwrap();
    let runs = [Run {
        offset: 0,
        bytes: vec![1],
    }];
    assert!(matches!(
        merge(&mut m, 2, f, r, &runs),
        Err(Error::ReadOnly)
    ));
    // A node that has not opened the file is refused.
    assert!(matches!(
        define(&mut m, 3, f, 500, 1),
        Err(Error::NotOpen { node: 3, .. })
    ));

    // Close with merge: the node merges, then closes; after that the view is gone.
    merge(&mut m, 1, f, w, &runs).unwrap();
    m.handle(1, Request::Close { file: f }).unwrap();
    assert!(matches!(
        merge(&mut m, 1, f, w, &runs),
        Err(Error::NotOpen { .. })
    ));
    // Its range is free again.
    open(&mut m, 3, "f", Access::ReadWrite).unwrap();
    let w3 = define(&mut m, 3, f, 0, 100).unwrap();
    m.handle(3, Request::CloseView { file: f, view: w3 })
        .unwrap();
    assert!(matches!(
        merge(&mut m, 3, f, w3, &runs),
        Err(Error::UnknownView(_))
    ));

    // Last opener gone: the file closes, its handle is unknown.
    m.node_failed(3);
    m.handle(2, Request::Close { file: f }).unwrap();
    assert!(m.file(f).is_none());
    assert!(matches!(
        define(&mut m, 2, f, 0, 1),
        Err(Error::UnknownFile(_))
    ));
    assert_eq!(fs::read(dir.path().join("f")).unwrap()[0], 1);
}

#[test]
fn paths_escaping_the_root_are_refused() {
    let dir = TempDir::new("master-escape");
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("pw")).unwrap();
    let mut m = Master::new(dir.path(), Durability::Fsync).unwrap();
    for path in ["/etc/passwd", "../etc/passwd", "pw", "", ".f.dsm-journal"] {
        assert!(
            open(&mut m, 1, path, Access::Read).is_err(),
            "{path:?} opened"
        );
    }
    assert!(matches!(
        open(&mut m, 1, "pw", Access::Read),
        Err(Error::PathEscapes { .. })
    ));
}
