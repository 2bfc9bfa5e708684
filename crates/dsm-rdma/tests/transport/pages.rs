//! One-sided page access: READ from and WRITE into a home's exposed memory.

use std::time::Duration;

use dsm_core::{Transport, TransportEvent};
use dsm_wire::{PAGE_SIZE, PageId};

use crate::support::{Events, Home, pair, rdma_or_skip};

const REGION: u32 = 3;

fn page(index: u32) -> PageId {
    PageId {
        region: REGION,
        page: index,
    }
}

/// Waits until node 0 has node 1's key for `REGION` (sent by `expose` as a SEND).
pub fn wait_for_key(transport: &dsm_rdma::RdmaTransport, home: u32) {
    for _ in 0..3000 {
        match transport.read_page(home, page(u32::MAX), 0) {
            Err(dsm_core::TransportError::NotExposed { .. }) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(dsm_core::TransportError::OutOfRange { .. }) => return,
            other => panic!("probe read of page u32::MAX gave {other:?}"),
        }
    }
    panic!("timed out after 30 s waiting for node {home}'s region key");
}

fn read(
    node: &dsm_rdma::RdmaTransport,
    events: &Events,
    index: u32,
    token: u64,
) -> Box<[u8; PAGE_SIZE]> {
    node.read_page(1, page(index), token)
        .expect("post RDMA READ");
    match events.next("the page read") {
        TransportEvent::PageRead { token: got, result } => {
            assert_eq!(got, token);
            result.expect("RDMA READ completed")
        }
        other => panic!("unexpected event {other:?}"),
    }
}

#[test]
fn read_page_returns_the_home_copy_without_the_home() {
    if !rdma_or_skip("read_page_returns_the_home_copy_without_the_home") {
        return;
    }
    let mut home = Home::new(8, |i| 0x10 + i as u8);
    let pair = pair();
    pair.nodes[1].expose(REGION, home.memory()).expect("expose");
    wait_for_key(&pair.nodes[0], 1);
    for index in [0, 5, 7] {
        let got = read(
            &pair.nodes[0],
            &pair.events[0],
            index,
            100 + u64::from(index),
        );
        assert!(
            got.iter().all(|&b| b == 0x10 + index as u8),
            "page {index} content"
        );
    }
    // One-sided: the home changes its copy and tells nobody; the next READ sees it.
    home.fill(5, 0xee);
    let got = read(&pair.nodes[0], &pair.events[0], 5, 7);
    assert!(got.iter().all(|&b| b == 0xee));
    assert!(
        pair.events[1].quiet_for(Duration::from_millis(100)),
        "the home saw events for one-sided reads"
    );
}

#[test]
fn write_page_lands_in_the_home_copy() {
    if !rdma_or_skip("write_page_lands_in_the_home_copy") {
        return;
    }
    let mut home = Home::new(4, |_| 0);
    let pair = pair();
    pair.nodes[1].expose(REGION, home.memory()).expect("expose");
    wait_for_key(&pair.nodes[0], 1);
    let mut data = Box::new([0u8; PAGE_SIZE]);
    data.iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i % 251) as u8);
    let expected = *data;
    pair.nodes[0]
        .write_page(1, page(2), data, 55)
        .expect("post RDMA WRITE");
    match pair.events[0].next("the page write") {
        TransportEvent::PageWritten { token, result } => {
            assert_eq!(token, 55);
            result.expect("RDMA WRITE completed");
        }
        other => panic!("unexpected event {other:?}"),
    }
    assert_eq!(home.page(2), expected, "written page");
    assert_eq!(home.page(1), [0; PAGE_SIZE], "neighbour below untouched");
    assert_eq!(home.page(3), [0; PAGE_SIZE], "neighbour above untouched");
}

#[test]
fn many_reads_in_flight_complete_once_each() {
    if !rdma_or_skip("many_reads_in_flight_complete_once_each") {
        return;
    }
    let mut home = Home::new(64, |i| i as u8);
    let pair = pair();
    pair.nodes[1].expose(REGION, home.memory()).expect("expose");
    wait_for_key(&pair.nodes[0], 1);
    // All 64 staging slots at once.
    for index in 0..64 {
        pair.nodes[0]
            .read_page(1, page(index), u64::from(index))
            .expect("post");
    }
    let mut seen = [false; 64];
    for _ in 0..64 {
        let TransportEvent::PageRead { token, result } = pair.events[0].next("a page read") else {
            panic!("unexpected event");
        };
        let data = result.expect("READ completed");
        assert!(
            data.iter().all(|&b| u64::from(b) == token),
            "page {token} content"
        );
        assert!(
            !std::mem::replace(&mut seen[token as usize], true),
            "token {token} twice"
        );
    }
}

#[test]
fn threads_reading_at_once_each_get_their_pages() {
    if !rdma_or_skip("threads_reading_at_once_each_get_their_pages") {
        return;
    }
    let mut home = Home::new(64, |i| i as u8 ^ 0x5a);
    let pair = pair();
    pair.nodes[1].expose(REGION, home.memory()).expect("expose");
    wait_for_key(&pair.nodes[0], 1);
    let reader = &pair.nodes[0];
    // Four threads post 16 reads each at once: 64 staging slots, all in flight.
    std::thread::scope(|scope| {
        for thread in 0..4u32 {
            scope.spawn(move || {
                for index in thread * 16..(thread + 1) * 16 {
                    reader
                        .read_page(1, page(index), u64::from(index))
                        .expect("post");
                }
            });
        }
    });
    let mut seen = [false; 64];
    for _ in 0..64 {
        let TransportEvent::PageRead { token, result } = pair.events[0].next("a page read") else {
            panic!("unexpected event");
        };
        let data = result.expect("READ completed");
        assert!(
            data.iter().all(|&b| b == token as u8 ^ 0x5a),
            "page {token} content"
        );
        assert!(
            !std::mem::replace(&mut seen[token as usize], true),
            "token {token} twice"
        );
    }
}
