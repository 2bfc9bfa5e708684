//! Round trip of a 64-byte frame between two processes pinned to different CPUs (issue #14):
//! a dsm-shm channel against TCP on loopback (`TCP_NODELAY`), the transport same-host peers use
//! today, between the same two processes in the same run. Each both ways: busy-polling
//! (`shm_spin`, `tcp_spin`), and sleeping (`shm_futex`: futex wake only when the consumer
//! sleeps; `tcp_block`: blocking `read`).
//!
//! `cargo bench -p dsm-shm --bench round_trip` runs criterion's estimates, then prints one JSON
//! line: medians and p99 of `ROUNDS` timed round trips per mode (interleaved in blocks) and the
//! `ratio_*` of each shared-memory mode to its TCP counterpart. The child is this executable
//! again, with `ECHO_ENV` set.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use criterion::Criterion;
use dsm_shm::{Credentials, PairOptions, Receiver, Sender, accept, offer};

/// Set in the echo child: `abstract socket name,tcp port`.
const ECHO_ENV: &str = "DSM_SHM_BENCH_ECHO";
const FRAME: usize = 64;
const ROUNDS: usize = 20_000;
const BLOCKS: usize = 4;
const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    ShmSpin = 1,
    ShmFutex = 2,
    TcpSpin = 3,
    TcpBlock = 4,
}

const MODES: [(Mode, &str); 4] = [
    (Mode::ShmSpin, "shm_spin"),
    (Mode::ShmFutex, "shm_futex"),
    (Mode::TcpSpin, "tcp_spin"),
    (Mode::TcpBlock, "tcp_block"),
];

/// One end's media: the control socket, the channel halves, the TCP stream.
struct Ends {
    control: UnixStream,
    sender: Sender,
    receiver: Receiver,
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Ends {
    /// Sends one frame in `mode` and waits for one back.
    fn send(&mut self, mode: Mode, frame: &[u8; FRAME]) {
        match mode {
            Mode::ShmSpin | Mode::ShmFutex => self.sender.send_timeout(frame, WAIT).unwrap(),
            Mode::TcpSpin | Mode::TcpBlock => self.tcp.write_all(frame).unwrap(),
        }
    }

    fn receive(&mut self, mode: Mode) {
        match mode {
            Mode::ShmSpin => {
                while !self.receiver.try_recv(&mut self.buf).unwrap() {
                    std::hint::spin_loop();
                }
            }
            Mode::ShmFutex => assert!(self.receiver.recv_timeout(&mut self.buf, WAIT).unwrap()),
            Mode::TcpSpin => tcp_spin_read(&mut self.tcp, &mut self.buf),
            Mode::TcpBlock => {
                self.buf.resize(FRAME, 0);
                self.tcp.read_exact(&mut self.buf).unwrap();
            }
        }
    }

    /// Starts `rounds` echoes of `mode` in the child.
    fn start(&mut self, mode: Mode, rounds: u64) {
        self.tcp.set_nonblocking(mode == Mode::TcpSpin).unwrap();
        let mut order = [0u8; 9];
        order[0] = mode as u8;
        order[1..].copy_from_slice(&rounds.to_le_bytes());
        self.control.write_all(&order).unwrap();
        let mut ack = [0u8];
        self.control.read_exact(&mut ack).unwrap();
    }

    fn round_trip(&mut self, mode: Mode) {
        self.send(mode, &[7; FRAME]);
        self.receive(mode);
    }
}

fn tcp_spin_read(tcp: &mut TcpStream, buf: &mut Vec<u8>) {
    buf.resize(FRAME, 0);
    let mut got = 0;
    while got < FRAME {
        match tcp.read(&mut buf[got..]) {
            Ok(0) => panic!("peer closed"),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => panic!("{e}"),
        }
    }
}

fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn creds(rank: u32) -> Credentials {
    Credentials::new(rank, 0xbe_5e, Some([3; 32]))
}

/// The echo child: serves the parent's orders until the control socket closes.
fn echo(spec: &str) {
    pin(1);
    let (name, port) = spec.split_once(',').unwrap();
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let control = UnixStream::connect_addr(&addr).unwrap();
    let channel = accept(&control, &creds(1), |r| r == 0, &PairOptions::default()).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
    tcp.set_nodelay(true).unwrap();
    let (sender, receiver) = channel.split(Duration::ZERO);
    let mut ends = Ends {
        control,
        sender,
        receiver,
        tcp,
        buf: Vec::new(),
    };
    let mut order = [0u8; 9];
    while ends.control.read_exact(&mut order).is_ok() {
        let mode = MODES.iter().find(|(m, _)| *m as u8 == order[0]).unwrap().0;
        let rounds = u64::from_le_bytes(order[1..].try_into().unwrap());
        ends.tcp.set_nonblocking(mode == Mode::TcpSpin).unwrap();
        ends.control.write_all(b"k").unwrap();
        for _ in 0..rounds {
            ends.receive(mode);
            let mut frame = [0u8; FRAME];
            frame.copy_from_slice(&ends.buf[..FRAME]);
            ends.send(mode, &frame);
        }
    }
}

/// Starts the child and sets up every medium with it.
fn start() -> (Ends, Child) {
    pin(0);
    let name = format!("dsm-shm-bench-{}", std::process::id());
    let listener =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let tcp_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp_listener.local_addr().unwrap().port();
    let child = Command::new(std::env::current_exe().unwrap())
        .env(ECHO_ENV, format!("{name},{port}"))
        .spawn()
        .unwrap();
    let (control, _) = listener.accept().unwrap();
    let channel = offer(&control, &creds(0), 1, &PairOptions::default()).unwrap();
    let (tcp, _) = tcp_listener.accept().unwrap();
    tcp.set_nodelay(true).unwrap();
    let (sender, receiver) = channel.split(Duration::ZERO);
    (
        Ends {
            control,
            sender,
            receiver,
            tcp,
            buf: Vec::new(),
        },
        child,
    )
}

/// Median and 99th percentile, µs.
fn summarize(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() * 99 / 100])
}

/// Timed round trips of every mode, interleaved in blocks so drift hits all alike.
fn measure(ends: &mut Ends) -> serde_json::Value {
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    for _ in 0..BLOCKS {
        for (i, (mode, _)) in MODES.iter().enumerate() {
            let rounds = ROUNDS / BLOCKS;
            ends.start(*mode, rounds as u64 + 100);
            for _ in 0..100 {
                ends.round_trip(*mode); // warm-up
            }
            for _ in 0..rounds {
                let t = Instant::now();
                ends.round_trip(*mode);
                samples[i].push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    let mut figures = serde_json::Map::new();
    let mut medians = Vec::new();
    for ((_, name), v) in MODES.iter().zip(samples) {
        let (median, p99) = summarize(v);
        medians.push(median);
        figures.insert(format!("{name}_rtt_us_median"), median.into());
        figures.insert(format!("{name}_rtt_us_p99"), p99.into());
    }
    figures.insert(
        "ratio_shm_spin_to_tcp_spin".into(),
        (medians[0] / medians[2]).into(),
    );
    figures.insert(
        "ratio_shm_futex_to_tcp_block".into(),
        (medians[1] / medians[3]).into(),
    );
    serde_json::json!({
        "suite": "shm_round_trip",
        "frame_bytes": FRAME,
        "round_trips_per_mode": ROUNDS,
        "placement": "two processes pinned to CPU 0 and CPU 1",
        "figures": figures,
    })
}

fn main() {
    if let Ok(spec) = std::env::var(ECHO_ENV) {
        echo(&spec);
        return;
    }
    let (mut ends, mut child) = start();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut group = c.benchmark_group("round_trip_64B");
    for (mode, name) in MODES {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                ends.start(mode, iters);
                let t = Instant::now();
                for _ in 0..iters {
                    ends.round_trip(mode);
                }
                t.elapsed()
            });
        });
    }
    group.finish();
    println!("{}", measure(&mut ends));
    drop(ends);
    child.wait().unwrap();
    c.final_summary();
}
