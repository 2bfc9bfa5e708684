//! Control messages by SEND/RECV.

use dsm_core::{Transport, TransportEvent};
use dsm_wire::{Message, SyncMsg};

use crate::support::{pair, rdma_or_skip};

fn barrier(epoch: u64) -> Message {
    Message::Sync(SyncMsg::LockRequest {
        lock: 7,
        timestamp: epoch,
    })
}

#[test]
fn messages_arrive_in_order_from_the_right_sender() {
    if !rdma_or_skip("messages_arrive_in_order_from_the_right_sender") {
        return;
    }
    let pair = pair();
    // More than the 32 receives posted per peer: receives must be reposted.
    let count = 100;
    for epoch in 0..count {
        pair.nodes[0].send(1, &barrier(epoch)).expect("send 0 -> 1");
    }
    for epoch in 0..count {
        match pair.events[1].next("a message from node 0") {
            TransportEvent::Message { from, message } => {
                assert_eq!(from, 0);
                assert_eq!(message, barrier(epoch), "message {epoch} out of order");
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    pair.nodes[1].send(0, &barrier(999)).expect("send 1 -> 0");
    match pair.events[0].next("the reply from node 1") {
        TransportEvent::Message { from, message } => assert_eq!((from, message), (1, barrier(999))),
        other => panic!("unexpected event {other:?}"),
    }
}
