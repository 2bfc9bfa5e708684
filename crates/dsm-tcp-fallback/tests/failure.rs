//! Peer failure: a real process killed mid-stream, and an endpoint dropped mid-stream, are
//! reported to every other node; nothing waits forever; the survivors keep working.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use dsm_core::{EventSink, Transport, TransportError, TransportEvent};
use dsm_tcp_fallback::{TcpConfig, TcpTransport};
use dsm_wire::{Membership, Message, PageId};

use crate::common::{
    CLUSTER, Collect, HomeBuffer, channel_mesh, listeners, pattern, start_all, wait_for,
};

const CHILD_ENV: &str = "DSM_TCP_TEST_CHILD_PEERS";
const TIMEOUT: Duration = Duration::from_secs(20);

fn beat(b: u64) -> Message {
    Message::Membership(Membership::Heartbeat { beat: b })
}

/// Counts heartbeats from `from` until `n` arrived.
fn await_beats(rx: &Receiver<TransportEvent>, from: u32, n: u64) {
    let mut seen = 0;
    wait_for(
        rx,
        TIMEOUT,
        &format!("{n} heartbeats from node {from}"),
        |e| match e {
            TransportEvent::Message { from: f, .. } if f == from => {
                seen += 1;
                (seen >= n).then_some(())
            }
            _ => None,
        },
    );
}

/// Waits until `failed` is reported; any page completion seen meanwhile must be a success or
/// that peer's failure.
fn await_failure(rx: &Receiver<TransportEvent>, failed: u32) {
    wait_for(
        rx,
        TIMEOUT,
        &format!("PeerFailed for node {failed}"),
        |e| match e {
            TransportEvent::PeerFailed { node, .. } => {
                assert_eq!(node, failed);
                Some(())
            }
            TransportEvent::PageRead { result: Err(e), .. } => {
                assert!(
                    matches!(e, TransportError::PeerFailed { node, .. } if node == failed),
                    "{e}"
                );
                None
            }
            _ => None,
        },
    );
}

/// The survivors still exchange messages and pages.
fn survivors_work(
    a: (&TcpTransport, &Receiver<TransportEvent>),
    b: (&TcpTransport, &Receiver<TransportEvent>),
) {
    let home = HomeBuffer::new(4, |p, k| pattern(1, p, k));
    b.0.expose(5, home.memory()).unwrap();
    a.0.send(b.0.local(), &beat(4242)).unwrap();
    wait_for(b.1, TIMEOUT, "a message between survivors", |e| match e {
        TransportEvent::Message { message, .. } => (message == beat(4242)).then_some(()),
        _ => None,
    });
    a.0.read_page(b.0.local(), PageId { region: 5, page: 3 }, 99)
        .unwrap();
    let page = wait_for(a.1, TIMEOUT, "a page between survivors", |e| match e {
        TransportEvent::PageRead { token: 99, result } => Some(result),
        _ => None,
    });
    assert_eq!(
        page.unwrap()[..],
        (0..4096).map(|k| pattern(1, 3, k)).collect::<Vec<u8>>()[..]
    );
    b.0.withdraw(5).unwrap();
}

#[test]
fn killed_peer_process_is_reported_to_every_node() {
    let (listeners, mut addrs) = listeners(2);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "failure::child_peer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{},{}", addrs[0], addrs[1]))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the child peer");
    // Rank 2 dials ranks 0 and 1; its own address is never used by them.
    addrs.push("127.0.0.1:9".parse().unwrap());
    let (sinks, receivers): (Vec<Arc<dyn EventSink>>, Vec<_>) = (0..2)
        .map(|_| {
            let (tx, rx) = channel();
            (Arc::new(Collect(tx)) as Arc<dyn EventSink>, rx)
        })
        .unzip();
    let configs = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let mut c = TcpConfig::new(rank as u32, l, addrs.clone(), CLUSTER);
            c.connect_timeout = TIMEOUT;
            c
        })
        .collect();
    let transports: Vec<TcpTransport> = start_all(configs, sinks)
        .into_iter()
        .map(|t| t.unwrap())
        .collect();
    // Mid-stream: the child is sending as fast as it can to both.
    await_beats(&receivers[0], 2, 2000);
    await_beats(&receivers[1], 2, 2000);
    transports[0]
        .read_page(2, PageId { region: 0, page: 1 }, 7)
        .unwrap();
    child.kill().expect("kill the child");
    let _ = child.wait();
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    await_failure(&receivers[0], 2);
    await_failure(&receivers[1], 2);
    assert!(matches!(
        transports[0].read_page(2, PageId { region: 0, page: 1 }, 8),
        Err(TransportError::PeerFailed { node: 2, .. })
    ));
    survivors_work(
        (&transports[0], &receivers[0]),
        (&transports[1], &receivers[1]),
    );
}

/// The child side of `killed_peer_process_is_reported_to_every_node`: rank 2 of a 3-node
/// mesh, streaming heartbeats until killed (or for at most a minute).
#[test]
#[ignore = "run as a child process by killed_peer_process_is_reported_to_every_node"]
fn child_peer() {
    let Ok(peers) = std::env::var(CHILD_ENV) else {
        eprintln!("child_peer: {CHILD_ENV} unset; this is not a child run");
        return;
    };
    let mut addrs: Vec<SocketAddr> = peers.split(',').map(|a| a.parse().unwrap()).collect();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    addrs.push(listener.local_addr().unwrap());
    let (tx, _rx) = channel();
    let mut config = TcpConfig::new(2, listener, addrs, CLUSTER);
    config.connect_timeout = TIMEOUT;
    let transport = TcpTransport::start(config, Arc::new(Collect(tx))).unwrap();
    let home = HomeBuffer::new(4, |p, k| pattern(2, p, k));
    transport.expose(0, home.memory()).unwrap();
    println!("child connected");
    let until = Instant::now() + Duration::from_secs(60);
    let mut b = 0;
    while Instant::now() < until {
        b += 1;
        for to in 0..2 {
            if transport.send(to, &beat(b)).is_err() {
                return;
            }
        }
        if b % 256 == 0 {
            std::thread::yield_now();
        }
    }
}

#[test]
fn dropped_endpoint_fails_pending_reads_and_is_reported() {
    let (mut transports, receivers) = channel_mesh(3, Some([7; 32]));
    let home = HomeBuffer::new(8, |p, k| pattern(2, p, k));
    transports[2].expose(0, home.memory()).unwrap();
    for b in 0..500 {
        transports[2].send(0, &beat(b)).unwrap();
        transports[2].send(1, &beat(b)).unwrap();
    }
    for t in 0..64 {
        transports[0]
            .read_page(
                2,
                PageId {
                    region: 0,
                    page: t as u32 % 8,
                },
                t,
            )
            .unwrap();
    }
    let gone = transports.pop().unwrap();
    drop(gone);
    drop(home);
    // Every read completes: with the page or with node 2's failure, never hanging.
    let mut done = 0;
    let mut failed_seen = false;
    wait_for(
        &receivers[0],
        TIMEOUT,
        "64 read completions and PeerFailed(2)",
        |e| {
            match e {
                TransportEvent::PageRead { result, .. } => {
                    match result {
                        Ok(_) | Err(TransportError::PeerFailed { node: 2, .. }) => {}
                        Err(e) => panic!("unexpected read error {e}"),
                    }
                    done += 1;
                }
                TransportEvent::PeerFailed { node, .. } => {
                    assert_eq!(node, 2);
                    failed_seen = true;
                }
                _ => {}
            }
            (done == 64 && failed_seen).then_some(())
        },
    );
    await_failure(&receivers[1], 2);
    survivors_work(
        (&transports[0], &receivers[0]),
        (&transports[1], &receivers[1]),
    );
}

/// Panics on the first message, like a buggy engine.
struct PanickingSink;

impl EventSink for PanickingSink {
    fn deliver(&self, event: TransportEvent) {
        if let TransportEvent::Message { .. } = event {
            panic!("sink bug (expected by the test)");
        }
    }
}

#[test]
fn a_panicking_sink_stops_its_transport_without_hanging_anyone() {
    let (listeners, addrs) = listeners(2);
    let (tx, rx) = channel();
    let sinks: Vec<Arc<dyn EventSink>> = vec![Arc::new(Collect(tx)), Arc::new(PanickingSink)];
    let configs = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| TcpConfig::new(rank as u32, l, addrs.clone(), CLUSTER))
        .collect();
    let transports: Vec<TcpTransport> = start_all(configs, sinks)
        .into_iter()
        .map(|t| t.unwrap())
        .collect();
    transports[0].send(1, &beat(1)).unwrap();
    // Node 1's thread died: its sockets closed, node 0 sees it fail.
    await_failure(&rx, 1);
    // Node 1's own calls fail fast instead of queueing work nobody takes.
    let deadline = Instant::now() + TIMEOUT;
    while transports[1].send(0, &beat(2)).is_ok() {
        assert!(Instant::now() < deadline, "node 1 still accepts work");
        std::thread::yield_now();
    }
    assert!(matches!(
        transports[1].read_page(0, PageId { region: 0, page: 0 }, 1),
        Err(TransportError::Closed | TransportError::PeerFailed { .. })
    ));
    assert!(matches!(
        transports[1].shutdown(),
        Err(dsm_tcp_fallback::Error::ThreadPanicked(1))
    ));
}
