//! The view table against a brute-force model.

use dsm_views::{Access, Error, ViewId, ViewTable};
use rand::Rng;

use crate::common::rng;

#[test]
fn refuses_zero_length_overflow_and_beyond_end() {
    let mut t = ViewTable::new(1000);
    assert!(matches!(
        t.define(1, 10, 0),
        Err(Error::ZeroLength { offset: 10 })
    ));
    assert!(matches!(
        t.define(1, u64::MAX, 2),
        Err(Error::RangeOverflow { .. })
    ));
    assert!(matches!(
        t.define(1, 999, 2),
        Err(Error::BeyondEnd { file_len: 1000, .. })
    ));
    assert!(matches!(t.define(1, 1000, 1), Err(Error::BeyondEnd { .. })));
    assert!(matches!(
        t.define_read(1, 0, 1001),
        Err(Error::BeyondEnd { .. })
    ));
    assert!(t.is_empty(), "refused defines changed the table");
    let last = t.define(1, 999, 1).unwrap();
    let whole = t.define_read(2, 0, 1000).unwrap();
    assert_eq!(t.get(last).unwrap().end(), 1000);
    assert_eq!(t.get(whole).unwrap().access, Access::Read);
}

#[test]
fn overlap_names_the_other_view_and_its_owner() {
    let mut t = ViewTable::new(1 << 20);
    let a = t.define(7, 4096, 100).unwrap();
    let err = t.define(3, 4000, 97).unwrap_err();
    match err {
        Error::Overlap {
            other,
            other_offset,
            other_len,
            owner,
            ..
        } => {
            assert_eq!((other, other_offset, other_len, owner), (a, 4096, 100, 7));
        }
        e => panic!("expected Overlap, got {e}"),
    }
    assert!(err_text(t.define(3, 4195, 1)).contains("owned by node 7"));
    // The same owner may not overlap itself either.
    assert!(matches!(
        t.define(7, 4100, 1),
        Err(Error::Overlap { owner: 7, .. })
    ));
    // Read views overlap anything.
    t.define_read(3, 4000, 500).unwrap();
    // Adjacent on both sides is fine.
    t.define(3, 4000, 96).unwrap();
    t.define(3, 4196, 1).unwrap();
}

fn err_text<T: std::fmt::Debug>(r: dsm_views::Result<T>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn close_and_remove_owner_free_ranges() {
    let mut t = ViewTable::new(100);
    let a = t.define(1, 0, 50).unwrap();
    let b = t.define(2, 50, 50).unwrap();
    t.define_read(1, 0, 100).unwrap();
    assert!(t.define(3, 10, 1).is_err());
    t.close(a).unwrap();
    assert!(matches!(t.close(a), Err(Error::UnknownView(v)) if v == a));
    let c = t.define(3, 10, 1).unwrap();
    assert!(c.0 > b.0, "ids are not reused");
    let removed = t.remove_owner(1);
    assert_eq!(removed.len(), 1, "node 1's read view");
    assert!(matches!(
        t.owned(b, 3),
        Err(Error::NotOwner {
            owner: 2,
            node: 3,
            ..
        })
    ));
    assert_eq!(t.remove_owner(2).len(), 1);
    t.define(4, 50, 50).unwrap();
    assert!(matches!(
        t.owned(ViewId(999), 4),
        Err(Error::UnknownView(_))
    ));
}

/// Random defines and closes against a list of ranges checked pairwise.
#[test]
fn random_operations_match_a_model() {
    let mut rng = rng("table::random_operations_match_a_model");
    for _ in 0..50 {
        let file_len = rng.random_range(1..5000u64);
        let mut t = ViewTable::new(file_len);
        let mut model: Vec<(ViewId, u32, u64, u64)> = Vec::new();
        for _ in 0..200 {
            if rng.random_bool(0.25) && !model.is_empty() {
                let i = rng.random_range(0..model.len());
                let (id, ..) = model.swap_remove(i);
                t.close(id).unwrap();
                continue;
            }
            let owner = rng.random_range(0..4);
            let offset = rng.random_range(0..file_len + 10);
            let len = rng.random_range(0..200);
            let expect_ok = len > 0
                && offset + len <= file_len
                && model
                    .iter()
                    .all(|&(_, _, o, l)| offset + len <= o || o + l <= offset);
            let before = t.len();
            match t.define(owner, offset, len) {
                Ok(id) => {
                    assert!(expect_ok, "accepted {offset}+{len} against {model:?}");
                    model.push((id, owner, offset, len));
                }
                Err(Error::Overlap {
                    other,
                    other_offset,
                    other_len,
                    owner: o,
                    ..
                }) => {
                    assert!(!expect_ok);
                    assert!(model.contains(&(other, o, other_offset, other_len)));
                    assert!(offset < other_offset + other_len && other_offset < offset + len);
                    assert_eq!(t.len(), before);
                }
                Err(e) => {
                    assert!(!expect_ok, "refused {offset}+{len}: {e}");
                    assert_eq!(t.len(), before);
                }
            }
        }
        assert_eq!(t.len(), model.len());
        for &(id, owner, offset, len) in &model {
            let v = t.get(id).unwrap();
            assert_eq!((v.owner, v.offset, v.len), (owner, offset, len));
        }
    }
}
