//! Four endpoints in a full mesh exchange 100,000 messages of random sizes and page reads and
//! writes, every one checked: content, per-sender FIFO order, and page outcomes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dsm_core::{EventSink, Transport, TransportError, TransportEvent};
use dsm_tcp_fallback::{TcpConfig, TcpTransport};
use dsm_wire::{Message, PAGE_SIZE, PageId, ViewMsg};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{CLUSTER, HomeBuffer, listeners, pattern, start_all};

const NODES: usize = 4;
const MESSAGES_PER_NODE: usize = 25_000;
const READ_PAGES: u32 = 64;
/// Region 1 pages per writer: writer `w` owns pages `w*SLOTS..(w+1)*SLOTS` at every home.
const SLOTS: u32 = 16;

/// What a page completion must carry.
#[derive(Debug, Clone)]
enum Expect {
    Page(Box<[u8; PAGE_SIZE]>),
    Written,
    NotExposed,
    OutOfRange,
}

/// Checks every event of one node as it arrives, on the transport thread; records errors
/// instead of panicking there.
struct Checker {
    node: u32,
    expected: Mutex<HashMap<u64, Expect>>,
    next_seq: Mutex<[u64; NODES]>,
    messages: AtomicU64,
    completions: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Checker {
    fn error(&self, e: String) {
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 20 {
            errors.push(e);
        }
    }

    fn check_message(&self, from: u32, message: Message) {
        let Message::View(ViewMsg::Merge {
            req,
            view,
            offset,
            data,
        }) = message
        else {
            return self.error(format!("unexpected message {message:?}"));
        };
        let mut next = self.next_seq.lock().unwrap();
        if view != from || req != next[from as usize] {
            self.error(format!(
                "node {}: from {from}: seq {req} view {view}, expected seq {}",
                self.node, next[from as usize]
            ));
        }
        next[from as usize] = req + 1;
        if data != payload(from, req, offset as usize) {
            self.error(format!(
                "node {}: payload of {from}/{req} corrupted",
                self.node
            ));
        }
        self.messages.fetch_add(1, Ordering::Relaxed);
    }

    fn check_completion(
        &self,
        token: u64,
        got: Result<Option<Box<[u8; PAGE_SIZE]>>, TransportError>,
    ) {
        let Some(want) = self.expected.lock().unwrap().remove(&token) else {
            return self.error(format!(
                "node {}: completion for unknown token {token}",
                self.node
            ));
        };
        let ok = match (&want, &got) {
            (Expect::Page(p), Ok(Some(g))) => p[..] == g[..],
            (Expect::Written, Ok(None)) => true,
            (Expect::NotExposed, Err(TransportError::NotExposed { .. })) => true,
            (Expect::OutOfRange, Err(TransportError::OutOfRange { .. })) => true,
            _ => false,
        };
        if !ok {
            let got = got.map(|p| p.map(|p| p[0]));
            self.error(format!(
                "node {}: token {token}: expected {want:?}, got {got:?}",
                self.node
            ));
        }
        self.completions.fetch_add(1, Ordering::Relaxed);
    }
}

impl EventSink for Checker {
    fn deliver(&self, event: TransportEvent) {
        match event {
            TransportEvent::Message { from, message } => self.check_message(from, message),
            TransportEvent::PageRead { token, result } => {
                self.check_completion(token, result.map(Some))
            }
            TransportEvent::PageWritten { token, result } => {
                self.check_completion(token, result.map(|()| None))
            }
            TransportEvent::PeerFailed { node, reason } => {
                self.error(format!("node {}: peer {node} failed: {reason}", self.node));
            }
        }
    }
}

/// Message payload: deterministic from sender, sequence and length.
fn payload(from: u32, seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (from as usize * 7 + seq as usize * 13 + k) as u8)
        .collect()
}

/// Drives one node: random messages to random peers, page reads of every kind, writes each
/// followed by a read-back. Returns the messages sent to each peer.
fn drive(rank: u32, transport: &TcpTransport, checker: &Checker, seed: u64) -> [u64; NODES] {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sent = [0u64; NODES];
    let mut token = u64::from(rank) << 40;
    for _ in 0..MESSAGES_PER_NODE {
        let to = (rank + rng.random_range(1..NODES as u32)) % NODES as u32;
        let len = rng.random_range(0..6000usize);
        let seq = sent[to as usize];
        let data = payload(rank, seq, len);
        let message = Message::View(ViewMsg::Merge {
            req: seq,
            view: rank,
            offset: len as u64,
            data,
        });
        transport.send(to, &message).expect("send");
        sent[to as usize] += 1;
        // Pages to any home, this node included (served locally).
        let home = rng.random_range(0..NODES as u32);
        match rng.random_range(0..10) {
            0..2 => {
                let (page, want) = read_target(&mut rng, home);
                token += 1;
                checker.expected.lock().unwrap().insert(token, want);
                transport.read_page(home, page, token).expect("read_page");
            }
            2 => {
                let slot = rank * SLOTS + rng.random_range(0..SLOTS);
                let page = PageId {
                    region: 1,
                    page: slot,
                };
                let data: Box<[u8; PAGE_SIZE]> = Box::new(std::array::from_fn(|_| rng.random()));
                token += 1;
                checker
                    .expected
                    .lock()
                    .unwrap()
                    .insert(token, Expect::Written);
                transport
                    .write_page(home, page, data.clone(), token)
                    .expect("write_page");
                // Same connection, served in order: the read-back sees this write.
                token += 1;
                checker
                    .expected
                    .lock()
                    .unwrap()
                    .insert(token, Expect::Page(data));
                transport.read_page(home, page, token).expect("read_page");
            }
            _ => {}
        }
    }
    sent
}

fn read_target(rng: &mut StdRng, home: u32) -> (PageId, Expect) {
    match rng.random_range(0..50) {
        0 => (PageId { region: 9, page: 0 }, Expect::NotExposed),
        1 => (
            PageId {
                region: 0,
                page: READ_PAGES,
            },
            Expect::OutOfRange,
        ),
        _ => {
            let page = rng.random_range(0..READ_PAGES);
            let data = Box::new(std::array::from_fn(|k| pattern(home, page, k)));
            (PageId { region: 0, page }, Expect::Page(data))
        }
    }
}

#[test]
fn four_nodes_exchange_100k_checked_messages_and_pages() {
    let (listeners, addrs) = listeners(NODES);
    let checkers: Vec<Arc<Checker>> = (0..NODES as u32)
        .map(|node| {
            Arc::new(Checker {
                node,
                expected: Mutex::new(HashMap::new()),
                next_seq: Mutex::new([0; NODES]),
                messages: AtomicU64::new(0),
                completions: AtomicU64::new(0),
                errors: Mutex::new(Vec::new()),
            })
        })
        .collect();
    let configs = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            // Keyed: every frame and page below is tagged and checked.
            let mut c = TcpConfig::new(rank as u32, l, addrs.clone(), CLUSTER);
            c.key = Some([0x5e; 32]);
            c
        })
        .collect();
    let sinks = checkers
        .iter()
        .map(|c| Arc::clone(c) as Arc<dyn EventSink>)
        .collect();
    let transports: Vec<TcpTransport> = start_all(configs, sinks)
        .into_iter()
        .map(|t| t.unwrap())
        .collect();
    let homes: Vec<(HomeBuffer, HomeBuffer)> = (0..NODES as u32)
        .map(|h| {
            (
                HomeBuffer::new(READ_PAGES, |p, k| pattern(h, p, k)),
                HomeBuffer::new(SLOTS * NODES as u32, |_, _| 0),
            )
        })
        .collect();
    for (t, (read, write)) in transports.iter().zip(&homes) {
        t.expose(0, read.memory()).unwrap();
        t.expose(1, write.memory()).unwrap();
    }

    let started = Instant::now();
    let sent: Vec<[u64; NODES]> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..NODES)
            .map(|r| {
                let (t, c) = (&transports[r], &checkers[r]);
                s.spawn(move || drive(r as u32, t, c, 0x5eed + r as u64))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let expected_messages: Vec<u64> = (0..NODES)
        .map(|to| sent.iter().map(|s| s[to]).sum())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (node, c) in checkers.iter().enumerate() {
        while (c.messages.load(Ordering::Relaxed) < expected_messages[node]
            || !c.expected.lock().unwrap().is_empty())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let elapsed = started.elapsed();
    for (node, c) in checkers.iter().enumerate() {
        let errors = c.errors.lock().unwrap();
        assert!(errors.is_empty(), "node {node}: {errors:#?}");
        assert_eq!(
            c.messages.load(Ordering::Relaxed),
            expected_messages[node],
            "node {node}: messages received"
        );
        assert!(
            c.expected.lock().unwrap().is_empty(),
            "node {node}: page operations never completed"
        );
    }
    let messages: u64 = expected_messages.iter().sum();
    let completions: u64 = checkers
        .iter()
        .map(|c| c.completions.load(Ordering::Relaxed))
        .sum();
    eprintln!("{messages} messages and {completions} page operations checked in {elapsed:?}");
    assert_eq!(messages, (NODES * MESSAGES_PER_NODE) as u64);
    assert!(
        completions > messages / 5,
        "too few page operations: {completions}"
    );
    drop(transports);
}
