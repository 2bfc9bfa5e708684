//! Helpers: credentials, numbered frames checked per sending thread, the child process.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};

use dsm_shm::{Credentials, PairOptions, ring::Geometry};

pub const CLUSTER: u64 = 0x5e_4d;
pub const KEY: [u8; 32] = [0x42; 32];
/// Set in a child process: `role,socket name`.
pub const CHILD_ENV: &str = "DSM_SHM_TEST_CHILD";

pub fn creds(rank: u32) -> Credentials {
    Credentials::new(rank, CLUSTER, Some(KEY))
}

pub fn options(cells: u32) -> PairOptions {
    PairOptions {
        geometry: Geometry::new(cells).unwrap(),
        ..PairOptions::default()
    }
}

/// A listener on a fresh abstract Unix address (no file anywhere), and its name.
pub fn listen() -> (UnixListener, String) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "dsm-shm-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    (UnixListener::bind_addr(&addr).unwrap(), name)
}

pub fn connect(name: &str) -> UnixStream {
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    UnixStream::connect_addr(&addr).unwrap()
}

/// Runs this test binary again as the child playing `role`, connecting to `name`.
pub fn spawn_child(role: &str, name: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "process::child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{role},{name}"))
        .spawn()
        .expect("spawn the child")
}

/// The low byte of `x` (patterns wrap on purpose).
pub fn low_byte(x: u64) -> u8 {
    x.to_le_bytes()[0]
}

/// Frame `seq` of sending thread `thread`: both numbers, then a body of a length and content
/// derived from them (0 to 300 bytes, so frames span one to six cells).
pub fn numbered(thread: u8, seq: u32) -> Vec<u8> {
    let mut frame = vec![thread];
    frame.extend_from_slice(&seq.to_le_bytes());
    let len = (seq as usize * 37) % 301;
    frame.extend((0..len).map(|i| low_byte(i as u64) ^ low_byte(seq.into()) ^ thread));
    frame
}

/// Checks a received frame whole and next in its sender's order; returns the sender thread.
pub fn check_next(frame: &[u8], next: &mut [u32]) -> usize {
    assert!(frame.len() >= 5, "frame of {} bytes", frame.len());
    let thread = frame[0];
    let seq = u32::from_le_bytes(frame[1..5].try_into().unwrap());
    let slot = usize::from(thread);
    assert_eq!(seq, next[slot], "FIFO of sending thread {thread}");
    assert_eq!(
        frame,
        numbered(thread, seq),
        "frame {seq} of thread {thread} intact"
    );
    next[slot] += 1;
    slot
}

/// Names in /dev/shm (to show set-up leaves nothing there).
pub fn dev_shm() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
