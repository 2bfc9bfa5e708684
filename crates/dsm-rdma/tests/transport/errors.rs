//! Error paths: bad input from peers, pages the home does not hold, unknown peers, no device.

use std::io::Write;
use std::time::Duration;

use dsm_core::{Transport, TransportError, TransportEvent};
use dsm_rdma::{Error, RdmaConfig, RdmaConnector};
use dsm_wire::{Alloc, Message, PageId, RdmaConnInfo};

use crate::pages::wait_for_key;
use crate::support::{CLUSTER, Home, pair, rdma_or_skip};

fn page(region: u32, index: u32) -> PageId {
    PageId {
        region,
        page: index,
    }
}

#[test]
fn pages_the_home_does_not_hold_are_refused_before_posting() {
    if !rdma_or_skip("pages_the_home_does_not_hold_are_refused_before_posting") {
        return;
    }
    let mut home = Home::new(8, |_| 1);
    let pair = pair();
    pair.nodes[1].expose(3, home.memory()).unwrap();
    wait_for_key(&pair.nodes[0], 1);
    let reader = &pair.nodes[0];
    assert!(matches!(
        reader.read_page(1, page(3, 8), 1),
        Err(TransportError::OutOfRange { home: 1, .. })
    ));
    assert!(matches!(
        reader.read_page(1, page(3, u32::MAX), 1),
        Err(TransportError::OutOfRange { .. })
    ));
    assert!(matches!(
        reader.read_page(1, page(4, 0), 1),
        Err(TransportError::NotExposed { region: 4, home: 1 })
    ));
    let data = Box::new([0u8; dsm_wire::PAGE_SIZE]);
    assert!(matches!(
        reader.write_page(1, page(3, 8), data, 1),
        Err(TransportError::OutOfRange { .. })
    ));
    assert!(
        pair.events[0].quiet_for(Duration::from_millis(200)),
        "a refused request completed anyway"
    );
    // Withdrawn: the zero-length key reaches the reader, later reads are refused.
    pair.nodes[1].withdraw(3).unwrap();
    let refused = (0..3000).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        matches!(
            reader.read_page(1, page(3, 0), 1),
            Err(TransportError::NotExposed { .. })
        )
    });
    assert!(refused, "reads still accepted 30 s after withdraw");
    assert!(matches!(
        pair.nodes[1].withdraw(3),
        Err(TransportError::NotExposed { .. })
    ));
}

#[test]
fn forged_region_keys_fail_the_request_never_the_memory() {
    if !rdma_or_skip("forged_region_keys_fail_the_request_never_the_memory") {
        return;
    }
    // Each forgery breaks its queue pair (remote access error), so each gets a fresh pair.
    for forge in ["address past the registered memory", "wrong rkey"] {
        let mut home = Home::new(2, |i| 0x40 + i as u8);
        let mut neighbour = Home::new(4, |_| 0x77);
        let pair = pair();
        pair.nodes[1].expose(3, home.memory()).unwrap();
        pair.nodes[1].expose(5, neighbour.memory()).unwrap();
        let Some(Alloc::RegionKey {
            addr, len, rkey, ..
        }) = pair.nodes[1].region_key(3)
        else {
            panic!("no key for an exposed region");
        };
        let forged = match forge {
            "wrong rkey" => Alloc::RegionKey {
                region: 9,
                addr,
                len,
                rkey: rkey ^ 0x5a5a_0000,
            },
            _ => Alloc::RegionKey {
                region: 9,
                addr: addr + len,
                len: 4 * 4096,
                rkey,
            },
        };
        pair.nodes[0].add_remote_region(1, &forged).unwrap();
        let data = Box::new([0xbd; dsm_wire::PAGE_SIZE]);
        pair.nodes[0]
            .write_page(1, page(9, 0), data, 31)
            .expect("posting is allowed");
        let mut failed = false;
        let mut errored = false;
        while !(failed && errored) {
            match pair.events[0].next("the forged WRITE's failure") {
                TransportEvent::PageWritten { token: 31, result } => errored = result.is_err(),
                TransportEvent::PeerFailed { node: 1, .. } => failed = true,
                other => panic!("{forge}: unexpected event {other:?}"),
            }
        }
        assert!(
            (0..2).all(|i| home.page(i) == [0x40 + i as u8; 4096]),
            "{forge}: home copy changed"
        );
        assert!(
            (0..4).all(|i| neighbour.page(i) == [0x77; 4096]),
            "{forge}: other memory changed"
        );
        assert!(matches!(
            pair.nodes[0].read_page(1, page(3, 0), 1),
            Err(TransportError::PeerFailed { node: 1, .. })
        ));
    }
}

#[test]
fn bad_peer_data_is_refused() {
    if !rdma_or_skip("bad_peer_data_is_refused") {
        return;
    }
    let pair = pair();
    for (addr, len) in [(0x1001, 4096), (0x1000, 100), (!4095, 8192), (0, 4096)] {
        let key = Alloc::RegionKey {
            region: 2,
            addr,
            len,
            rkey: 1,
        };
        let refused = pair.nodes[0].add_remote_region(1, &key);
        assert!(
            matches!(
                refused,
                Err(Error::BadRegionKey {
                    peer: 1,
                    region: 2,
                    ..
                })
            ),
            "{addr:#x}+{len:#x}"
        );
    }
    assert!(matches!(
        pair.nodes[0].read_page(1, page(2, 0), 1),
        Err(TransportError::NotExposed { .. })
    ));

    let mut connector = RdmaConnector::open(0, 2, RdmaConfig::from_env(CLUSTER)).unwrap();
    let good = connector.conn_info(1).unwrap();
    for bad in [
        RdmaConnInfo {
            qp_num: 0,
            ..good.clone()
        },
        RdmaConnInfo {
            qp_num: 1 << 24,
            ..good.clone()
        },
        RdmaConnInfo {
            psn: 1 << 24,
            ..good.clone()
        },
        RdmaConnInfo {
            gid: [0; 16],
            ..good.clone()
        },
    ] {
        assert!(
            matches!(
                connector.connect(1, &bad),
                Err(Error::BadConnInfo { peer: 1, .. })
            ),
            "{bad:?}"
        );
    }
    assert!(
        matches!(connector.conn_info(0), Err(Error::UnknownPeer(0))),
        "a node has no QP to itself"
    );
    assert!(matches!(
        connector.connect(2, &good),
        Err(Error::UnknownPeer(2))
    ));
}

#[test]
fn unknown_peers_and_oversized_messages_are_refused() {
    if !rdma_or_skip("unknown_peers_and_oversized_messages_are_refused") {
        return;
    }
    let pair = pair();
    let small = Message::Alloc(Alloc::Free { region: 1 });
    assert!(matches!(
        pair.nodes[0].send(5, &small),
        Err(TransportError::UnknownPeer(5))
    ));
    assert!(matches!(
        pair.nodes[0].send(0, &small),
        Err(TransportError::UnknownPeer(0))
    ));
    assert!(matches!(
        pair.nodes[0].read_page(5, page(0, 0), 1),
        Err(TransportError::UnknownPeer(5))
    ));
    let big = Message::Alloc(Alloc::PWrite {
        req: 1,
        region: 1,
        offset: 0,
        data: vec![7; 100_000],
    });
    match pair.nodes[0].send(1, &big) {
        Err(TransportError::Io { detail, .. }) => assert!(detail.contains("exceeds"), "{detail}"),
        other => panic!("a 100 kB frame gave {other:?}"),
    }
    pair.nodes[0].send(1, &small).expect("the pair still works");
    match pair.events[1].next("the small message") {
        TransportEvent::Message { from: 0, message } => assert_eq!(message, small),
        other => panic!("unexpected event {other:?}"),
    }
}

#[test]
fn without_a_device_open_fails_with_one_clear_line() {
    match RdmaConnector::open(0, 2, RdmaConfig::new(CLUSTER)) {
        Ok(_) => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIP without_a_device_open_fails_with_one_clear_line: this machine has an RDMA device"
            );
        }
        Err(error) => {
            assert!(error.is_no_device(), "{error}");
            let line = error.to_string();
            assert!(
                !line.contains('\n') && line.contains("no RDMA device"),
                "{line}"
            );
            let transport_error = dsm_core::TransportError::from(error);
            assert!(transport_error.to_string().contains("no RDMA device"));
        }
    }
}
