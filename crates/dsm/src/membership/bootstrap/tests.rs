//! Boot-up over real loopback sockets, nodes as threads of this process.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

fn free_address() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

const KEY: &str = "bootstrap test key";

fn config(rank: u32, size: u32, coordinator: &str, timeout_ms: u64) -> Config {
    Config::builder(rank, size)
        .coordinator(coordinator)
        .cluster_key(KEY)
        .join_timeout(Duration::from_millis(timeout_ms))
        .build()
        .unwrap()
}

/// Boots `ranks` of a cluster of `size`, rank `r` starting after `delays[r]`.
fn boot(
    size: u32,
    ranks: &[u32],
    delays_ms: &[u64],
    timeout_ms: u64,
) -> Vec<(u32, Result<Booted>)> {
    let coordinator = free_address();
    let handles: Vec<_> = ranks
        .iter()
        .zip(delays_ms)
        .map(|(&rank, &delay)| {
            let c = config(rank, size, &coordinator, timeout_ms);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(delay));
                (rank, run(&c, 0))
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn nodes_started_in_shuffled_order_agree_on_the_node_list() {
    // Rank 0 (the coordinator) starts last.
    let results = boot(4, &[2, 0, 3, 1], &[0, 300, 50, 120], 10_000);
    let mut lists = Vec::new();
    for (rank, result) in results {
        let booted = result.unwrap_or_else(|e| panic!("rank {rank}: {e}"));
        assert_eq!(
            booted.peers[rank as usize],
            booted.listener.local_addr().unwrap()
        );
        lists.push(booted.peers);
    }
    assert!(
        lists.iter().all(|l| l == &lists[0] && l.len() == 4),
        "{lists:?}"
    );
}

#[test]
fn a_rank_that_never_comes_is_named_by_every_node() {
    let results = boot(4, &[0, 1, 3], &[0, 0, 0], 400);
    for (rank, result) in results {
        match result {
            Err(Error::JoinTimeout { missing }) => assert_eq!(missing, vec![2], "rank {rank}"),
            other => panic!("rank {rank}: expected JoinTimeout, got {other:?}"),
        }
    }
}

#[test]
fn a_missing_coordinator_is_rank_0() {
    let results = boot(2, &[1], &[0], 200);
    assert!(matches!(&results[0].1, Err(Error::JoinTimeout { missing }) if missing == &[0]));
}

#[test]
fn intruders_and_impostors_do_not_disturb_the_join() {
    let coordinator = free_address();
    let c0 = config(0, 2, &coordinator, 5_000);
    let node0 = std::thread::spawn(move || run(&c0, 0));
    let limits = Limits::new(config(0, 2, &coordinator, 1).cluster_id());
    // Garbage, then a bare Join (no handshake) of the right cluster, then one of a foreign
    // cluster: each is dropped.
    let garbage = connect_until(
        coordinator.parse().unwrap(),
        Instant::now() + Duration::from_secs(5),
    );
    garbage.unwrap().write_all(&[0x55; 64]).unwrap();
    let wrong_size = Message::Membership(Membership::Join {
        rank: 1,
        size: 3,
        endpoint: to_endpoint("127.0.0.1:1".parse().unwrap(), 0),
    });
    TcpStream::connect(&coordinator)
        .unwrap()
        .write_all(&dsm_wire::encode(&wrong_size, limits.cluster, 1))
        .unwrap();
    TcpStream::connect(&coordinator)
        .unwrap()
        .write_all(&dsm_wire::encode(&wrong_size, 0xbad, 1))
        .unwrap();
    let c1 = config(1, 2, &coordinator, 5_000);
    let booted1 = run(&c1, 0).unwrap();
    let booted0 = node0.join().unwrap().unwrap();
    assert_eq!(booted0.peers, booted1.peers);
}

/// Reads whatever `stream` gets until it closes (bounded), as command codes of whole frames.
fn commands_received(mut stream: TcpStream) -> Vec<u16> {
    use std::io::Read;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    let mut commands = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= dsm_wire::HEADER_LEN {
        commands.push(u16::from_le_bytes([rest[6], rest[7]]));
        let body = u32::from_le_bytes(rest[20..24].try_into().unwrap()) as usize;
        rest = &rest[(dsm_wire::HEADER_LEN + body).min(rest.len())..];
    }
    commands
}

#[test]
fn a_joiner_without_the_key_gets_nothing_and_the_cluster_boots() {
    let coordinator = free_address();
    let c0 = config(0, 2, &coordinator, 5_000);
    let node0 = std::thread::spawn(move || run(&c0, 0));
    // Same cluster id (an eavesdropper read it off the wire), no key: zero MACs.
    let cluster = config(0, 2, &coordinator, 1).cluster_id();
    let stranger = Credentials::new(1, cluster, None, Purpose::Bootstrap);
    let mut s = connect_until(
        coordinator.parse().unwrap(),
        Instant::now() + Duration::from_secs(5),
    )
    .unwrap();
    let refused = handshake::dial(&stranger, &mut s, 0);
    assert!(refused.is_err(), "a keyless joiner passed the handshake");
    assert!(
        !commands_received(s).contains(&0x0102),
        "the stranger got the node list"
    );
    // A joiner of another key (hence another cluster id) is turned away too.
    let other = Config::builder(1, 2)
        .coordinator(&coordinator)
        .cluster_key("another key")
        .join_timeout(Duration::from_millis(2_000))
        .build()
        .unwrap();
    let err = run(&other, 0).unwrap_err();
    assert!(err.to_string().contains("rejected our Join"), "{err}");
    let booted1 = run(&config(1, 2, &coordinator, 5_000), 0).unwrap();
    assert_eq!(node0.join().unwrap().unwrap().peers, booted1.peers);
}

/// The log lines of this test binary, once [`capture_logs`] installed the global subscriber.
static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends every warning of this process (any thread) to [`LOGS`].
fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

fn logged() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

/// A proxy to `upstream` for one connection that records what the client says.
fn recording_proxy(upstream: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    use std::io::Read;
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = proxy.local_addr().unwrap();
    let captured = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&captured);
    std::thread::spawn(move || {
        let (mut client, _) = proxy.accept().unwrap();
        // The coordinator's thread may not listen yet: retry for a while, not forever.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut server = loop {
            match TcpStream::connect(upstream) {
                Ok(server) => break server,
                Err(e) if Instant::now() > deadline => panic!("coordinator never listened: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let (mut back_from, mut back_to) =
            (server.try_clone().unwrap(), client.try_clone().unwrap());
        std::thread::spawn(move || std::io::copy(&mut back_from, &mut back_to));
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = client.read(&mut chunk) {
            record.lock().unwrap().extend_from_slice(&chunk[..n]);
            if server.write_all(&chunk[..n]).is_err() {
                break;
            }
        }
    });
    (address, captured)
}

#[test]
fn a_replayed_join_is_rejected_and_reported() {
    capture_logs();
    let coordinator = free_address();
    let (size, timeout) = (3, 10_000);
    let c0 = config(0, size, &coordinator, timeout);
    let node0 = std::thread::spawn(move || run(&c0, 0));
    // Rank 1 joins through a recording proxy (it keys its frames for the real coordinator
    // address, as an eavesdropped node would).
    let (proxy, captured) = recording_proxy(coordinator.parse().unwrap());
    let c1 = config(1, size, &coordinator, timeout);
    let node1 = std::thread::spawn(move || {
        let gate = Gate {
            credentials: Credentials::new(1, c1.cluster_id(), c1.key(), Purpose::Bootstrap),
            limits: Limits::new(c1.cluster_id()),
            size: c1.size,
            deadline: Instant::now() + c1.join_timeout,
        };
        let own = to_endpoint("127.0.0.1:1".parse().unwrap(), 0);
        subscribe(&c1, proxy, own, &gate)
    });
    // Hello (68 bytes), Response (64), Join (59) and its tag (16).
    let deadline = Instant::now() + Duration::from_secs(10);
    while captured.lock().unwrap().len() < 68 + 64 + 59 + 16 {
        assert!(
            Instant::now() < deadline,
            "rank 1 never joined through the proxy"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let recording = captured.lock().unwrap().clone();
    // The whole capture replayed, then the Join frame alone: no node list either time.
    for replay in [&recording[..], &recording[68 + 64..]] {
        let mut s = TcpStream::connect(&coordinator).unwrap();
        let replayer = s.local_addr().unwrap().to_string();
        s.write_all(replay).unwrap();
        let commands = commands_received(s);
        assert!(!commands.contains(&0x0102), "a replay got the node list");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !logged().contains(&replayer) {
            assert!(
                Instant::now() < deadline,
                "replay from {replayer} not reported: {}",
                logged()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let line = logged()
            .lines()
            .find(|l| l.contains(&replayer))
            .unwrap()
            .to_owned();
        assert!(
            line.contains("rejected a connection to the coordinator"),
            "{line}"
        );
    }
    assert!(logged().contains("MAC mismatch"), "{}", logged());
    // The cluster still boots.
    let booted2 = run(&config(2, size, &coordinator, timeout), 0).unwrap();
    assert_eq!(node0.join().unwrap().unwrap().peers, booted2.peers);
    assert_eq!(
        node1.join().unwrap().unwrap(),
        booted2
            .peers
            .iter()
            .map(|a| to_endpoint(*a, 0))
            .collect::<Vec<_>>()
    );
}

#[test]
fn sixteen_idle_connections_do_not_delay_the_boot() {
    let coordinator = free_address();
    let c0 = config(0, 4, &coordinator, 10_000);
    let started = Instant::now();
    let node0 = std::thread::spawn(move || run(&c0, 0));
    let idle: Vec<TcpStream> = (0..16)
        .map(|_| {
            connect_until(
                coordinator.parse().unwrap(),
                Instant::now() + Duration::from_secs(5),
            )
            .unwrap()
        })
        .collect();
    let results = boot_against(&coordinator, 4, &[1, 2, 3], 10_000);
    let took = started.elapsed();
    for (rank, result) in results {
        result.unwrap_or_else(|e| panic!("rank {rank}: {e}"));
    }
    node0.join().unwrap().unwrap();
    // Served one by one, 16 idle connections would hold the boot for 16 x 2 s.
    assert!(took < Duration::from_millis(1500), "boot took {took:?}");
    drop(idle);
}

/// Boots `ranks` of a cluster of `size` coordinated at `coordinator`, concurrently.
fn boot_against(
    coordinator: &str,
    size: u32,
    ranks: &[u32],
    timeout_ms: u64,
) -> Vec<(u32, Result<Booted>)> {
    let handles: Vec<_> = ranks
        .iter()
        .map(|&rank| {
            let c = config(rank, size, coordinator, timeout_ms);
            std::thread::spawn(move || (rank, run(&c, 0)))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}
