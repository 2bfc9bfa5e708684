//! One node of the benchmark cluster: a `LockTable` over the io_uring TCP transport, plus a
//! ping echo for the round-trip baseline. The parent process is rank 0; ranks 1.. are this
//! binary re-run as children (`DSM_BENCH_LOCKS_CHILD=rank,size`), driven over stdin/stdout.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dsm_core::{EventSink, Transport, TransportEvent};
use dsm_locks::{
    BarrierEngine, BarrierKind, LockEngine, LockKind, LockTable, NoConsistency, TableConfig,
    TransportOutbox,
};
use dsm_tcp_fallback::{TcpConfig, TcpTransport};
use dsm_wire::{Membership, Message, NodeId};

/// Environment variable that makes `dsm-bench locks` a child node.
pub const CHILD_ENV: &str = "DSM_BENCH_LOCKS_CHILD";
const CLUSTER: u64 = 0x10c5_be4c;
/// Lock ids: 1 is a home-queue lock whose home is node 1; 2 is Ricart–Agrawala; 4 is a
/// home-queue lock whose home is node 0 (with 2 or 4 nodes).
pub const LOCK_HOME_REMOTE: u32 = 1;
/// Ricart–Agrawala lock.
pub const LOCK_RA: u32 = 2;
/// Home-queue lock homed at rank 0.
pub const LOCK_HOME_LOCAL: u32 = 4;

/// Delivers lock messages to the table; echoes pings (children) or reports pongs (parent).
struct Sink {
    table: Arc<LockTable>,
    transport: OnceLock<Arc<TcpTransport>>,
    pongs: Mutex<Sender<(NodeId, u64)>>,
    echo: bool,
}

impl EventSink for Sink {
    fn deliver(&self, event: TransportEvent) {
        let TransportEvent::Message { from, message } = event else {
            return;
        };
        match message {
            Message::Sync(m) => {
                if let Err(e) = self.table.handle(from, &m) {
                    eprintln!("lock message from node {from} rejected: {e}");
                }
            }
            Message::Membership(Membership::Heartbeat { beat }) if self.echo => {
                if let Some(t) = self.transport.get() {
                    let _ = t.send(from, &Message::Membership(Membership::Heartbeat { beat }));
                }
            }
            Message::Membership(Membership::Heartbeat { beat }) => {
                let _ = self.pongs.lock().unwrap().send((from, beat));
            }
            _ => {}
        }
    }
}

/// A running node.
pub struct Node {
    pub table: Arc<LockTable>,
    pub transport: Arc<TcpTransport>,
    pub pongs: Receiver<(NodeId, u64)>,
}

/// Starts node `rank` of `size` on `listener`, meshing with `peers`.
pub fn start(
    rank: NodeId,
    size: u32,
    listener: TcpListener,
    peers: Vec<SocketAddr>,
    barrier: BarrierKind,
) -> anyhow::Result<Node> {
    let mut engine = LockEngine::new(rank, size, LockKind::RicartAgrawala);
    engine.set_kind(LOCK_HOME_REMOTE, LockKind::HomeQueue)?;
    engine.set_kind(LOCK_HOME_LOCAL, LockKind::HomeQueue)?;
    let outbox = TransportOutbox::new();
    let config = TableConfig {
        timeout: Duration::from_secs(10),
        ..TableConfig::default()
    };
    let table = Arc::new(LockTable::new(
        engine,
        BarrierEngine::new(rank, size, barrier),
        Box::new(outbox.clone()),
        Box::new(NoConsistency),
        config,
    ));
    let (tx, pongs) = mpsc::channel();
    let sink = Arc::new(Sink {
        table: table.clone(),
        transport: OnceLock::new(),
        pongs: Mutex::new(tx),
        echo: rank != 0,
    });
    let tcp = TcpConfig::new(rank, listener, peers, CLUSTER);
    let transport = Arc::new(TcpTransport::start(tcp, sink.clone()).context("tcp mesh")?);
    let _ = sink.transport.set(transport.clone());
    outbox.connect(transport.clone() as Arc<dyn Transport>);
    Ok(Node {
        table,
        transport,
        pongs,
    })
}

/// Child side: bind, publish the address, get the peers, then obey commands until `exit`.
pub fn child(spec: &str) -> anyhow::Result<()> {
    let (rank, rest) = spec
        .split_once(',')
        .context("child spec rank,size,barrier")?;
    let (size, barrier) = rest
        .split_once(',')
        .context("child spec rank,size,barrier")?;
    let (rank, size): (u32, u32) = (rank.parse()?, size.parse()?);
    let barrier = parse_barrier(barrier)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("ADDR {}", listener.local_addr()?);
    let mut stdin = BufReader::new(std::io::stdin());
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    let peers = parse_peers(&line)?;
    let node = start(rank, size, listener, peers, barrier)?;
    println!("READY");
    loop {
        line.clear();
        if stdin.read_line(&mut line)? == 0 {
            bail!("parent closed stdin");
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["contend", lock, millis] => {
                let count = contend(
                    &node.table,
                    lock.parse()?,
                    Duration::from_millis(millis.parse()?),
                )?;
                println!("COUNT {count}");
            }
            ["barriers", count] => {
                for _ in 0..count.parse::<u32>()? {
                    node.table.barrier()?;
                }
                println!("DONE");
            }
            ["exit"] => break,
            other => bail!("unknown command {other:?}"),
        }
        std::io::stdout().flush()?;
    }
    node.transport.shutdown()?;
    Ok(())
}

/// Everyone: barrier, acquire/release `lock` in a loop for `length`, barrier (so every node
/// keeps answering until all are done). Returns the acquisitions made here.
pub fn contend(table: &LockTable, lock: u32, length: Duration) -> anyhow::Result<u64> {
    table.barrier()?;
    let start = Instant::now();
    let mut count = 0;
    while start.elapsed() < length {
        drop(table.acquire(lock)?);
        count += 1;
    }
    table.barrier()?;
    Ok(count)
}

fn parse_peers(line: &str) -> anyhow::Result<Vec<SocketAddr>> {
    line.split_whitespace()
        .skip(1)
        .map(|a| a.parse().context("peer address"))
        .collect()
}

pub fn barrier_name(kind: BarrierKind) -> &'static str {
    match kind {
        BarrierKind::Central => "central",
        _ => "dissemination",
    }
}

fn parse_barrier(name: &str) -> anyhow::Result<BarrierKind> {
    Ok(match name {
        "central" => BarrierKind::Central,
        "dissemination" => BarrierKind::Dissemination,
        other => bail!("unknown barrier {other}"),
    })
}

/// A child node process and its stdout lines.
pub struct ChildNode {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl ChildNode {
    pub fn spawn(rank: u32, size: u32, barrier: BarrierKind) -> anyhow::Result<ChildNode> {
        let spec = format!("{rank},{size},{}", barrier_name(barrier));
        let mut child = Command::new(std::env::current_exe()?)
            .args(["locks", "--json"])
            .env(CHILD_ENV, spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawn a child node")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let stdin = child.stdin.take().context("child stdin")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(ChildNode {
            child,
            stdin,
            lines,
        })
    }

    pub fn send(&mut self, command: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{command}")?;
        Ok(())
    }

    /// The rest of the next line starting with `prefix` (30 s at most).
    pub fn expect(&mut self, prefix: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .with_context(|| format!("child node did not print {prefix:?} within 30 s"))?;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.trim().to_string());
            }
        }
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "exit");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a cluster of `size`: this process as rank 0 plus `size - 1` children.
pub fn cluster(size: u32, barrier: BarrierKind) -> anyhow::Result<(Node, Vec<ChildNode>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut addrs = vec![listener.local_addr()?.to_string()];
    let mut children = (1..size)
        .map(|rank| ChildNode::spawn(rank, size, barrier))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for child in &mut children {
        addrs.push(child.expect("ADDR ")?);
    }
    let line = format!("PEERS {}", addrs.join(" "));
    for child in &mut children {
        child.send(&line)?;
    }
    let node = start(0, size, listener, parse_peers(&line)?, barrier)?;
    // Children echo pings only once their transport is set in their sink.
    for child in &mut children {
        child.expect("READY")?;
    }
    Ok((node, children))
}
