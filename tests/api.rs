//! The public API on a single node, in this process: regions, element and byte access,
//! locks, barriers, stats, free and leave.
//!
//! One test function: every node allocates from the same address range, so two nodes in one
//! process would collide.

use dsm::{Config, Consistency, Error, Node};

#[test]
fn a_single_node_uses_every_call_of_the_api() {
    let node = Node::join(Config::single()).expect("join a cluster of one");
    assert_eq!((node.rank(), node.size()), (0, 1));
    for consistency in [Consistency::Sequential, Consistency::Release] {
        let values = node.alloc::<u64>("values", 3000, consistency).unwrap();
        let bytes = node.alloc::<u8>("bytes", 10_000, consistency).unwrap();
        assert_eq!((values.len(), bytes.len()), (3000, 10_000));
        assert_eq!(values.consistency(), consistency);
        // Zero-filled, then element writes read back.
        assert_eq!(values.get(2999), 0);
        for i in 0..3000 {
            values.set(i, i as u64 * 3);
        }
        assert!((0..3000).all(|i| values.get(i) == i as u64 * 3));
        // Plain pointer access goes through the same path.
        // SAFETY: in bounds of a live region of this node.
        unsafe { values.as_ptr().add(5).write_volatile(77) };
        assert_eq!(values.get(5), 77);
        // An index past the end panics like a slice's, before any access.
        let past = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| values.get(3000)));
        assert!(past.is_err());
        // Byte access across page boundaries, and a range past the end.
        let data: Vec<u8> = (0..6000u32).map(|i| (i % 251) as u8).collect();
        bytes.write_at(4000, &data).unwrap();
        let mut back = vec![0u8; 6000];
        bytes.read_at(4000, &mut back).unwrap();
        assert_eq!(back, data);
        assert!(matches!(
            bytes.read_at(9_000, &mut [0u8; 2000]),
            Err(Error::OutOfRange {
                offset: 9_000,
                len: 2000,
                size: 10_000
            })
        ));
        {
            let _guard = node.lock(3).acquire().unwrap();
            values.set(0, values.get(0) + 1);
        }
        node.barrier().unwrap();
        assert_eq!(values.get(0), 1);
        node.free(values).unwrap();
        node.free(bytes).unwrap();
    }
    let s = node.stats();
    assert!(
        s.write_faults > 0 && s.read_faults + s.write_faults >= 8,
        "{s:?}"
    );
    assert_eq!(s.lock_acquires, 2);
    assert!(s.barriers >= 2);
    assert!(s.fault_latency_p50_ns > 0 && s.fault_latency_p99_ns >= s.fault_latency_p50_ns);
    node.leave().unwrap();
}
