//! Real pairs of processes: this test binary re-executed as the peer (`child`, ignored unless
//! run by these tests with `CHILD_ENV` set).

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use dsm_shm::{Channel, Direction, Error, Receiver, Sender, accept, offer};

use crate::util::{
    CHILD_ENV, check_next, connect, creds, dev_shm, listen, numbered, options, spawn_child,
};

/// Sending threads per process, and frames each sends.
const THREADS: u8 = 3;
const FRAMES: u32 = 4000;
/// Cells of the rings of the flow test: 1 KiB, so senders hit back-pressure all the time.
const TINY: u32 = 16;
/// The back-pressure phase's frames: sender "thread" 9, one cell each.
const FILL_THREAD: u8 = 9;
const WAIT: Duration = Duration::from_secs(20);

fn fill_frame(seq: u32) -> Vec<u8> {
    let mut frame = vec![FILL_THREAD];
    frame.extend_from_slice(&seq.to_le_bytes());
    frame.resize(56, crate::util::low_byte(seq.into()));
    frame
}

/// The peer process: what it does depends on its role.
#[test]
#[ignore = "the peer process of the multi-process tests, run by them"]
fn child() {
    let spec = std::env::var(CHILD_ENV).expect("run by the multi-process tests");
    let (role, name) = spec.split_once(',').unwrap();
    match role {
        "flow" => child_flow(name),
        "idle" => child_idle(name),
        "nobody" => child_nobody(name),
        "scribble" => child_scribble(name),
        _ => panic!("unknown role {role}"),
    }
}

/// Sends `FRAMES` numbered frames from each of `THREADS` threads, waiting out back-pressure.
fn send_all(sender: &Sender) -> Vec<thread::JoinHandle<()>> {
    (0..THREADS)
        .map(|t| {
            let sender = sender.clone();
            thread::spawn(move || {
                for seq in 0..FRAMES {
                    sender.send_timeout(&numbered(t, seq), WAIT).unwrap();
                }
            })
        })
        .collect()
}

/// Receives every thread's frames (and `fills` back-pressure frames first), checking order.
fn receive_all(receiver: &mut Receiver, fills: u32) {
    let mut out = Vec::new();
    for seq in 0..fills {
        assert!(receiver.recv_timeout(&mut out, WAIT).unwrap());
        assert_eq!(out, fill_frame(seq), "back-pressure frame {seq}");
    }
    let mut next = [0u32; THREADS as usize];
    for _ in 0..u32::from(THREADS) * FRAMES {
        assert!(receiver.recv_timeout(&mut out, WAIT).unwrap(), "{next:?}");
        check_next(&out, &mut next);
    }
    assert_eq!(next, [FRAMES; THREADS as usize]);
}

/// Both directions at once: this process's senders and receiver on their own threads.
fn flow(channel: Channel, fills: u32) {
    let (sender, mut receiver) = channel.split(Duration::from_micros(20));
    let senders = send_all(&sender);
    receive_all(&mut receiver, fills);
    senders.into_iter().for_each(|s| s.join().unwrap());
}

fn child_flow(name: &str) {
    let mut stream = connect(name);
    let channel = offer(&stream, &creds(1), 0, &options(TINY)).unwrap();
    // Let the parent fill our inbound ring before anything is read from it.
    let mut go = [0u8];
    stream.read_exact(&mut go).unwrap();
    flow(channel, TINY);
}

#[test]
fn frames_flow_both_ways_between_processes_with_back_pressure() {
    let (listener, name) = listen();
    let mut child = spawn_child("flow", &name);
    let (mut stream, _) = listener.accept().unwrap();
    let channel = accept(&stream, &creds(0), |rank| rank == 1, &options(TINY)).unwrap();
    assert_eq!(channel.peer().pid(), child.id() as i32);
    // Back-pressure: the child reads nothing yet, so exactly TINY one-cell frames fit.
    let (sender, receiver) = channel.split(Duration::from_micros(20));
    let mut sent = 0;
    loop {
        match sender.try_send(&fill_frame(sent)) {
            Ok(()) => sent += 1,
            Err(Error::Full) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(sent <= TINY, "the ring took more than it holds");
    }
    assert_eq!(sent, TINY);
    stream.write_all(b"g").unwrap();
    let senders = send_all(&sender);
    let mut receiver = receiver;
    receive_all(&mut receiver, 0);
    senders.into_iter().for_each(|s| s.join().unwrap());
    assert!(
        child.wait().unwrap().success(),
        "the child saw every frame in order"
    );
}

fn child_idle(name: &str) {
    let stream = connect(name);
    let _channel = accept(&stream, &creds(1), |rank| rank == 0, &options(64)).unwrap();
    thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_killed_peer_is_seen_through_its_pidfd_at_once() {
    let before = dev_shm();
    let (listener, name) = listen();
    let mut child = spawn_child("idle", &name);
    let (stream, _) = listener.accept().unwrap();
    let channel = offer(&stream, &creds(0), 1, &options(64)).unwrap();
    let (_sender, mut receiver) = channel.split(Duration::ZERO);
    assert!(!receiver.peer().exited().unwrap());
    let killed = Instant::now();
    child.kill().unwrap(); // SIGKILL
    assert!(receiver.peer().wait_exit(Duration::from_secs(5)).unwrap());
    let seen = killed.elapsed();
    println!("peer death seen {} µs after SIGKILL", seen.as_micros());
    assert!(seen < Duration::from_millis(500), "seen after {seen:?}");
    let mut out = Vec::new();
    let got = receiver.recv_timeout(&mut out, Duration::from_secs(1));
    assert!(matches!(got, Err(Error::PeerExited { .. })), "{got:?}");
    child.wait().unwrap();
    assert_eq!(dev_shm(), before, "a crash leaves nothing in /dev/shm");
}

fn child_nobody(name: &str) {
    let nobody = nix::unistd::Uid::from_raw(65534);
    nix::unistd::setgid(nix::unistd::Gid::from_raw(65534)).unwrap();
    nix::unistd::setuid(nobody).unwrap();
    let stream = connect(name);
    let got = offer(&stream, &creds(1), 0, &options(64));
    // We see the parent (root) as a foreign user too.
    assert!(matches!(got, Err(Error::ForeignUser { .. })), "{got:?}");
}

#[test]
fn another_user_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED another_user_is_refused: needs root to run the peer as nobody");
        return;
    }
    let (listener, name) = listen();
    let mut child = spawn_child("nobody", &name);
    let (stream, _) = listener.accept().unwrap();
    let got = accept(&stream, &creds(0), |rank| rank == 1, &options(64));
    assert!(
        matches!(got, Err(Error::ForeignUser { uid: 65534, .. })),
        "{got:?}"
    );
    assert!(child.wait().unwrap().success(), "the child refused us too");
}

fn child_scribble(name: &str) {
    let mut stream = connect(name);
    let channel = offer(&stream, &creds(1), 0, &options(64)).unwrap();
    let ring = channel.memory().ring(Direction::FromOfferer);
    let cells = ring.geometry().cells() as usize;
    let words: Vec<_> = ring.words().collect();
    // First a published frame 0 whose header claims more than the ring holds.
    words[1 + cells].store(u64::MAX, Ordering::Relaxed);
    words[1].store(1, Ordering::Release);
    stream.write_all(b"g").unwrap();
    // Scribble once the parent has seen that frame.
    let mut seen = [0u8];
    stream.read_exact(&mut seen).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(300) {
        for w in &words {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.store(
                if x.is_multiple_of(3) { x % 4 } else { x },
                Ordering::Relaxed,
            );
        }
        ring.state_word()
            .store(x.to_le_bytes()[0].into(), Ordering::Relaxed);
    }
}

#[test]
fn garbage_written_by_the_peer_is_rejected() {
    let (listener, name) = listen();
    let mut child = spawn_child("scribble", &name);
    let (mut stream, _) = listener.accept().unwrap();
    let channel = accept(&stream, &creds(0), |rank| rank == 1, &options(64)).unwrap();
    let mut go = [0u8];
    stream.read_exact(&mut go).unwrap();
    let (_sender, mut receiver) = channel.split(Duration::ZERO);
    let mut out = Vec::new();
    let first = receiver.recv_timeout(&mut out, WAIT);
    assert!(matches!(first, Err(Error::Corrupt(_))), "{first:?}");
    stream.write_all(b"s").unwrap();
    // Then whatever the peer scribbles: bounded frames or typed errors, never a panic.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(500) {
        match receiver.recv_timeout(&mut out, Duration::from_millis(1)) {
            Ok(_) => assert!(out.len() <= options(64).geometry.max_frame_len()),
            Err(Error::Corrupt(_)) => {}
            Err(Error::PeerExited { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(child.wait().unwrap().success());
}
