//! Integration tests of dsm-shm: set-up and refusals within one process (a socket pair and two
//! threads), and real pairs of processes (this binary re-executed as the peer).

mod pair;
mod process;
mod util;
