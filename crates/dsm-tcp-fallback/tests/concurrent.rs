//! Several application threads of one node sending to the same peer at once through the ring
//! thread's queue: every byte stream must stay whole and in each thread's order, with every
//! page read answered by its own page, while the receiver stalls and sends end part-way.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;

use dsm_core::{EventSink, Transport, TransportEvent};
use dsm_tcp_fallback::{TcpConfig, TcpTransport};
use dsm_wire::{Message, PAGE_SIZE, PageId, ViewMsg};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{CLUSTER, Collect, HomeBuffer, listeners, pattern, start_all, wait_for};

const THREADS: u32 = 4;
const PER_THREAD: u64 = 1_500;
const PAGES: u32 = 32;

/// A receiver that stalls now and then, like a busy engine: the sender's socket buffer fills,
/// so sends end part-way and their rest must not interleave with other threads' frames.
struct Stalling {
    events: Sender<TransportEvent>,
    seen: AtomicU64,
}

impl EventSink for Stalling {
    fn deliver(&self, event: TransportEvent) {
        if self
            .seen
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(1000)
        {
            std::thread::sleep(Duration::from_millis(250));
        }
        let _ = self.events.send(event);
    }
}

fn payload(thread: u32, seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (thread as usize * 5 + seq as usize * 11 + k) as u8)
        .collect()
}

#[test]
fn concurrent_senders_keep_each_stream_whole_and_in_order() {
    senders_keep_each_stream_whole_and_in_order(true);
}

/// The same with every frame going through the transport thread (`send_from_caller` off, as
/// where nodes outnumber CPUs).
#[test]
fn concurrent_senders_through_the_transport_thread_keep_each_stream_whole_and_in_order() {
    senders_keep_each_stream_whole_and_in_order(false);
}

fn senders_keep_each_stream_whole_and_in_order(send_from_caller: bool) {
    let (listeners, addrs) = listeners(2);
    let (tx0, rx0) = channel();
    let (tx1, rx1) = channel();
    let sinks: Vec<Arc<dyn EventSink>> = vec![
        Arc::new(Collect(tx0)),
        Arc::new(Stalling {
            events: tx1,
            seen: AtomicU64::new(0),
        }),
    ];
    let configs = (0..)
        .zip(listeners)
        .map(|(rank, l)| {
            // Keyed: tags must follow the frames of many senders in queue order.
            let mut c = TcpConfig::new(rank, l, addrs.clone(), CLUSTER);
            c.key = Some([0xc0; 32]);
            c.send_from_caller = send_from_caller;
            c
        })
        .collect();
    let transports: Vec<TcpTransport> = start_all(configs, sinks)
        .into_iter()
        .map(|t| t.expect("mesh start"))
        .collect();
    let receivers = [rx0, rx1];
    let home = HomeBuffer::new(PAGES, |p, k| pattern(1, p, k));
    transports[1].expose(0, home.memory()).unwrap();
    let sender = &transports[0];
    std::thread::scope(|s| {
        for thread in 0..THREADS {
            s.spawn(move || {
                let mut rng = StdRng::seed_from_u64(0xc0c0 + u64::from(thread));
                // Thread 1 sends in corked bursts of four (its page reads in between queue
                // behind): the burst leaves in one write when the cork ends.
                let mut cork = None;
                for seq in 0..PER_THREAD {
                    if thread == 1 && seq % 4 == 0 {
                        cork = Some(dsm_tcp_fallback::Cork::new());
                    }
                    // Thread 0 sends bulk (up to 500 KB, more than fits while the receiver
                    // stalls: sends end part-way); the others small messages and page reads,
                    // now and then pausing so that connections fall idle.
                    let bulk = thread == 0;
                    if !bulk && rng.random_range(0..4) == 0 {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    let len = match rng.random_range(0..3) {
                        0 if bulk => rng.random_range(100_000..500_000usize),
                        _ => rng.random_range(0..3_000usize),
                    };
                    let message = Message::View(ViewMsg::Merge {
                        req: seq,
                        view: thread,
                        offset: len as u64,
                        data: payload(thread, seq, len),
                    });
                    sender.send(1, &message).expect("send");
                    if seq % 4 == 3 {
                        drop(cork.take());
                    }
                    if bulk {
                        continue;
                    }
                    let page = PageId {
                        region: 0,
                        page: rng.random_range(0..PAGES),
                    };
                    let token = (u64::from(thread) << 32) | (u64::from(page.page) << 20) | seq;
                    sender.read_page(1, page, token).expect("read_page");
                }
            });
        }
    });
    let timeout = Duration::from_secs(60);
    let total = u64::from(THREADS) * PER_THREAD;
    expect_merges_in_order(&receivers[1], total);
    let mut reads = 0;
    let total = total - PER_THREAD;
    wait_for(&receivers[0], timeout, "every page read", |e| {
        match e {
            TransportEvent::PageRead { token, result } => {
                let page = ((token >> 20) & 0xfff) as u32;
                let data = result.unwrap_or_else(|e| panic!("read {token:#x}: {e}"));
                let want: Vec<u8> = (0..PAGE_SIZE).map(|k| pattern(1, page, k)).collect();
                assert!(data[..] == want[..], "read {token:#x}: wrong page");
                reads += 1;
            }
            other => panic!("unexpected event at node 0: {other:?}"),
        }
        (reads == total).then_some(())
    });
    assert!(!transports[0].is_failed(1) && !transports[1].is_failed(0));
}

/// A frame larger than a socket takes at once leaves from its sending thread in part: the
/// rest must reach the peer before anything sent after it, by this thread or another, with
/// every tag in sequence (a torn or reordered frame would close the keyed connection).
#[test]
fn frames_larger_than_the_socket_go_in_part_and_their_rest_first() {
    // The largest merge, more than a socket's send buffer takes at once until the kernel has
    // grown it (from tens of KiB): sends end part-way from the sending thread itself.
    const BIG: usize = dsm_wire::msg::view::MAX_MERGE_LEN;
    const PER_SENDER: u64 = 400;
    let (listeners, addrs) = listeners(2);
    let (tx0, _rx0) = channel();
    let (tx1, rx1) = channel();
    // The receiver stalls at its first frame: the socket fills, and a sender's frame goes in
    // part (or not at all) while nothing else is owed to the peer.
    let stalling = Stalling {
        events: tx1,
        seen: AtomicU64::new(0),
    };
    let sinks: Vec<Arc<dyn EventSink>> = vec![Arc::new(Collect(tx0)), Arc::new(stalling)];
    let configs = (0..)
        .zip(listeners)
        .map(|(rank, l)| {
            let mut c = TcpConfig::new(rank, l, addrs.clone(), CLUSTER);
            c.key = Some([0xd1; 32]);
            c
        })
        .collect();
    let transports: Vec<TcpTransport> = start_all(configs, sinks)
        .into_iter()
        .map(|t| t.expect("mesh start"))
        .collect();
    let sender = &transports[0];
    std::thread::scope(|s| {
        for thread in 0..2u32 {
            s.spawn(move || {
                for seq in 0..PER_SENDER {
                    // Thread 0 alternates huge and small frames; thread 1 sends small ones.
                    let len = if thread == 0 && seq % 2 == 0 {
                        BIG
                    } else {
                        100
                    };
                    let message = Message::View(ViewMsg::Merge {
                        req: seq,
                        view: thread,
                        offset: len as u64,
                        data: payload(thread, seq, len),
                    });
                    sender.send(1, &message).expect("send");
                }
            });
        }
    });
    expect_merges_in_order(&rx1, 2 * PER_SENDER);
    assert!(!transports[0].is_failed(1) && !transports[1].is_failed(0));
}

/// Waits for `total` merges from node 0, checking each sending thread's order and every
/// payload.
fn expect_merges_in_order(rx: &std::sync::mpsc::Receiver<TransportEvent>, total: u64) {
    let mut next: HashMap<u32, u64> = HashMap::new();
    let mut got = 0;
    wait_for(
        rx,
        Duration::from_secs(60),
        "every message, in order",
        |e| {
            match e {
                TransportEvent::Message {
                    from: 0,
                    message:
                        Message::View(ViewMsg::Merge {
                            req,
                            view,
                            offset,
                            data,
                        }),
                } => {
                    let want = next.entry(view).or_insert(0);
                    assert_eq!(req, *want, "thread {view}: out of order");
                    let expected = payload(view, req, offset as usize);
                    assert!(data == expected, "thread {view} seq {req}: payload differs");
                    *want += 1;
                    got += 1;
                }
                other => panic!("unexpected event at node 1: {other:?}"),
            }
            (got == total).then_some(())
        },
    );
}
