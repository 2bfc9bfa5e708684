//! Prefixes every line a node prints with its rank.

use std::io::{BufRead, BufReader, Read, Write};
use std::thread::JoinHandle;

/// Where a node's stream goes.
#[derive(Debug, Clone, Copy)]
pub enum Sink {
    /// Our stdout.
    Stdout,
    /// Our stderr.
    Stderr,
}

/// Longest line kept whole; longer lines are split (bounds memory per stream).
const MAX_LINE: usize = 64 * 1024;

/// Copies `stream` to `sink` line by line, each line prefixed with `[rank] `, on its own
/// thread. The thread ends at end of file.
pub fn forward(rank: u32, stream: impl Read + Send + 'static, sink: Sink) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::with_capacity(256);
        loop {
            line.clear();
            match reader
                .by_ref()
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut line)
            {
                Ok(0) | Err(_) => return,
                Ok(_) => emit(rank, &line, sink),
            }
        }
    })
}

fn emit(rank: u32, line: &[u8], sink: Sink) {
    let mut out = Vec::with_capacity(line.len() + 8);
    out.extend_from_slice(format!("[{rank}] ").as_bytes());
    out.extend_from_slice(line);
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    // One write under the stream's lock keeps lines of different nodes from interleaving.
    // A closed terminal is not a reason to stop draining the child's pipe.
    let _ = match sink {
        Sink::Stdout => std::io::stdout().lock().write_all(&out),
        Sink::Stderr => std::io::stderr().lock().write_all(&out),
    };
}
