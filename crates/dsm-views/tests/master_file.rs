//! The master file in one process: merges, bounds, hand-made journals, recovery outcomes.

use std::fs;

use dsm_views::journal::JOURNAL_HEADER_LEN;
use dsm_views::{Durability, Error, MasterFile, Recovery, encode_journal};

use crate::common::TempDir;

fn contents(master: &MasterFile) -> Vec<u8> {
    let mut buf = vec![0; master.len() as usize];
    master.read_at(0, &mut buf).unwrap();
    buf
}

#[test]
fn merge_writes_every_record_in_order() {
    let dir = TempDir::new("mf-merge");
    let mut m = MasterFile::open(dir.path(), "f.bin", Some(100)).unwrap();
    assert_eq!(m.recovery(), &Recovery::Clean);
    assert_eq!(m.len(), 100);
    let r = m
        .merge(&[(3, b"abc"), (97, b"xyz"), (4, b"Z")], Durability::Fsync)
        .unwrap();
    assert_eq!((r.records, r.bytes), (3, 7));
    let c = contents(&m);
    assert_eq!(&c[3..6], b"aZc", "a later record wins");
    assert_eq!(&c[97..], b"xyz");
    assert_eq!(
        fs::metadata(m.journal_path()).unwrap().len(),
        0,
        "journal cleared"
    );
    let r2 = m.merge(&[], Durability::NoSync).unwrap();
    assert_eq!(r2.sequence, r.sequence + 1);
    drop(m);
    let m = MasterFile::open(dir.path(), "f.bin", None).unwrap();
    assert_eq!(m.recovery(), &Recovery::Clean);
    assert_eq!(&contents(&m)[3..6], b"aZc");
}

#[test]
fn out_of_bounds_merge_changes_nothing() {
    let dir = TempDir::new("mf-bounds");
    let mut m = MasterFile::open(dir.path(), "f.bin", Some(10)).unwrap();
    for batch in [
        vec![(0u64, &b"ok"[..]), (9, b"xx")],
        vec![(0, &b"ok"[..]), (u64::MAX, b"x")],
        vec![(10, &b"x"[..])],
    ] {
        assert!(matches!(
            m.merge(&batch, Durability::Fsync),
            Err(Error::MergeOutOfBounds { file_len: 10, .. })
        ));
    }
    assert_eq!(contents(&m), vec![0; 10]);
    m.merge(&[(10, b"")], Durability::Fsync).unwrap();
    let mut buf = [0; 2];
    assert!(matches!(
        m.read_at(9, &mut buf),
        Err(Error::BeyondEnd { .. })
    ));
}

#[test]
fn open_refuses_what_it_must() {
    let dir = TempDir::new("mf-open");
    assert!(matches!(
        MasterFile::open(dir.path(), "missing", None),
        Err(Error::NotFound(_))
    ));
    fs::create_dir(dir.path().join("d")).unwrap();
    assert!(matches!(
        MasterFile::open(dir.path(), "d", Some(1)),
        Err(Error::NotRegularFile(_))
    ));
    assert!(matches!(
        MasterFile::open(dir.path(), "../x", Some(1)),
        Err(Error::PathParent(_))
    ));
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("p")).unwrap();
    assert!(matches!(
        MasterFile::open(dir.path(), "p", None),
        Err(Error::PathEscapes { .. })
    ));
    // One master per file.
    let _m = MasterFile::open(dir.path(), "f", Some(8)).unwrap();
    assert!(matches!(
        MasterFile::open(dir.path(), "f", None),
        Err(Error::Busy(_))
    ));
    // An existing file keeps its length.
    drop(_m);
    assert_eq!(
        MasterFile::open(dir.path(), "f", Some(99)).unwrap().len(),
        8
    );
}

/// Writes `journal` where the master of `dir/name` looks for it.
fn plant_journal(dir: &TempDir, name: &str, journal: &[u8]) {
    fs::write(dir.path().join(format!(".{name}.dsm-journal")), journal).unwrap();
}

#[test]
fn a_committed_journal_is_replayed_and_a_torn_one_discarded() {
    let dir = TempDir::new("mf-recover");
    drop(MasterFile::open(dir.path(), "f", Some(16)).unwrap());
    let journal = encode_journal(41, &[(0, b"new!"), (12, b"tail")]).unwrap();

    // Torn: every strict prefix is discarded and leaves the file alone.
    for cut in [1, JOURNAL_HEADER_LEN, journal.len() - 1] {
        plant_journal(&dir, "f", &journal[..cut]);
        let m = MasterFile::open(dir.path(), "f", None).unwrap();
        assert!(
            matches!(m.recovery(), Recovery::Discarded { .. }),
            "cut {cut}"
        );
        assert_eq!(contents(&m), vec![0; 16]);
        assert_eq!(fs::metadata(m.journal_path()).unwrap().len(), 0);
    }
    // Corrupt: a flipped byte in the payload.
    let mut bad = journal.clone();
    bad[JOURNAL_HEADER_LEN + 17] ^= 0x40;
    plant_journal(&dir, "f", &bad);
    let m = MasterFile::open(dir.path(), "f", None).unwrap();
    assert!(matches!(m.recovery(), Recovery::Discarded { .. }));
    assert_eq!(contents(&m), vec![0; 16]);
    drop(m);

    // Committed: replayed, and the sequence continues after it.
    plant_journal(&dir, "f", &journal);
    let mut m = MasterFile::open(dir.path(), "f", None).unwrap();
    assert_eq!(
        m.recovery(),
        &Recovery::Replayed {
            sequence: 41,
            records: 2
        }
    );
    assert_eq!(contents(&m), b"new!\0\0\0\0\0\0\0\0tail");
    assert_eq!(m.merge(&[], Durability::Fsync).unwrap().sequence, 42);
}

#[test]
fn a_journal_outside_the_file_is_a_typed_error() {
    let dir = TempDir::new("mf-outside");
    drop(MasterFile::open(dir.path(), "f", Some(16)).unwrap());
    let journal = encode_journal(1, &[(0, b"in"), (15, b"out")]).unwrap();
    plant_journal(&dir, "f", &journal);
    assert!(matches!(
        MasterFile::open(dir.path(), "f", None),
        Err(Error::JournalRecordOutOfBounds {
            offset: 15,
            len: 3,
            file_len: 16
        })
    ));
    // Nothing applied, and the journal is kept for a human to look at.
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), vec![0; 16]);
    assert_eq!(
        fs::read(dir.path().join(".f.dsm-journal")).unwrap(),
        journal
    );
}

#[test]
fn recover_runs_again_on_an_open_file() {
    let dir = TempDir::new("mf-rerecover");
    let mut m = MasterFile::open(dir.path(), "f", Some(8)).unwrap();
    assert!(!m.needs_recovery());
    assert_eq!(m.recover().unwrap(), &Recovery::Clean);
    // What a failed merge past its commit leaves: a committed journal, the file not (all)
    // written.
    plant_journal(&dir, "f", &encode_journal(5, &[(2, b"late")]).unwrap());
    assert_eq!(
        m.recover().unwrap(),
        &Recovery::Replayed {
            sequence: 5,
            records: 1
        }
    );
    assert_eq!(contents(&m), b"\0\0late\0\0");
    assert_eq!(m.merge(&[], Durability::NoSync).unwrap().sequence, 6);
}
