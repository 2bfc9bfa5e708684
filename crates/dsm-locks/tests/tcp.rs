//! Real processes over the io_uring TCP transport: N processes each increment a counter kept
//! in a file (read, then write back: lost updates without mutual exclusion) 1,000 times under
//! one lock; the total is exact. Each process is this test binary re-run as `tcp::node`
//! (ignored when run directly), meeting its peers through its parent.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use dsm_core::{EventSink, Transport, TransportEvent};
use dsm_locks::{
    BarrierEngine, BarrierKind, LockEngine, LockKind, LockTable, NoConsistency, TableConfig,
    TransportOutbox,
};
use dsm_tcp_fallback::{TcpConfig, TcpTransport};
use dsm_wire::Message;

const INCREMENTS: u64 = 1_000;
const CLUSTER: u64 = 0x10c5;
const WAIT: Duration = Duration::from_secs(60);

/// Feeds lock and barrier messages to the table, on the transport thread.
struct Sink(Arc<LockTable>);

impl EventSink for Sink {
    fn deliver(&self, event: TransportEvent) {
        if let TransportEvent::Message {
            from,
            message: Message::Sync(m),
        } = event
        {
            self.0
                .handle(from, &m)
                .expect("a correct peer's lock message");
        }
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

/// One process of the cluster (run by `counter_over_tcp`, never directly).
#[test]
#[ignore = "a child process of counter_over_tcp"]
fn node() {
    let rank: u32 = env("DSM_LOCKS_RANK").parse().unwrap();
    let size: u32 = env("DSM_LOCKS_SIZE").parse().unwrap();
    let file = env("DSM_LOCKS_FILE");
    let kind = if env("DSM_LOCKS_KIND") == "home" {
        LockKind::HomeQueue
    } else {
        LockKind::RicartAgrawala
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    println!("ADDR {}", listener.local_addr().unwrap());
    let mut stdin = BufReader::new(std::io::stdin());
    let mut line = String::new();
    stdin.read_line(&mut line).unwrap();
    let peers: Vec<SocketAddr> = line
        .split_whitespace()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let outbox = TransportOutbox::new();
    let table = Arc::new(LockTable::new(
        LockEngine::new(rank, size, kind),
        BarrierEngine::new(rank, size, BarrierKind::Dissemination),
        Box::new(outbox.clone()),
        Box::new(NoConsistency),
        TableConfig::default(),
    ));
    let config = TcpConfig::new(rank, listener, peers, CLUSTER);
    let transport: Arc<dyn Transport> =
        Arc::new(TcpTransport::start(config, Arc::new(Sink(table.clone()))).unwrap());
    outbox.connect(transport.clone());
    for _ in 0..INCREMENTS {
        let _guard = table.acquire(1).expect("acquire over TCP");
        let value: u64 = std::fs::read_to_string(&file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::fs::write(&file, (value + 1).to_string()).unwrap();
    }
    // Everyone stays up, answering requests, until every increment is done.
    table.barrier().expect("final barrier");
    println!("DONE");
    line.clear();
    stdin.read_line(&mut line).unwrap();
    assert_eq!(outbox.failed_sends(), 0);
}

/// A child process and a channel of its stdout lines.
struct Proc {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Proc {
    fn spawn(rank: u32, size: u32, file: &str, kind: &str) -> Proc {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "tcp::node",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("DSM_LOCKS_RANK", rank.to_string())
            .env("DSM_LOCKS_SIZE", size.to_string())
            .env("DSM_LOCKS_FILE", file)
            .env("DSM_LOCKS_KIND", kind)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn a node process");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            stdin,
            lines,
        }
    }

    /// The text after `prefix` on the next line starting with it, within the deadline.
    fn expect(&mut self, prefix: &str, deadline: Instant) -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                let _ = self.child.kill();
                panic!("node process did not print {prefix:?} in time")
            });
            // libtest prints "test tcp::node ... " before the test's own output, on one line.
            if let Some(at) = line.find(prefix) {
                return line[at + prefix.len()..].trim().to_string();
            }
        }
    }
}

fn counter_over_tcp(size: u32, kind: &str) {
    let dir = std::env::temp_dir().join(format!("dsm-locks-{}-{kind}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("counter");
    std::fs::write(&file, "0").unwrap();
    let file_name = file.to_str().unwrap();
    let deadline = Instant::now() + WAIT;
    let mut procs: Vec<Proc> = (0..size)
        .map(|rank| Proc::spawn(rank, size, file_name, kind))
        .collect();
    let addrs: Vec<String> = procs
        .iter_mut()
        .map(|p| p.expect("ADDR ", deadline))
        .collect();
    for p in &mut procs {
        writeln!(p.stdin, "PEERS {}", addrs.join(" ")).unwrap();
    }
    for p in &mut procs {
        p.expect("DONE", deadline);
    }
    for p in &mut procs {
        writeln!(p.stdin, "EXIT").unwrap();
    }
    for mut p in procs {
        assert!(p.child.wait().unwrap().success(), "a node process failed");
    }
    let total: u64 = std::fs::read_to_string(&file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        total,
        u64::from(size) * INCREMENTS,
        "lost updates: mutual exclusion broke"
    );
}

#[test]
fn ricart_agrawala_counter_over_tcp_processes() {
    counter_over_tcp(3, "ra");
}

#[test]
fn home_queue_counter_over_tcp_processes() {
    counter_over_tcp(3, "home");
}
