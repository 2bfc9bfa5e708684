//! Helpers shared by the test modules: temporary directories and seeded randomness.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use rand::SeedableRng;
use rand::rngs::StdRng;

/// A directory removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("dsm-views-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The seed for `test` (from `DSM_VIEWS_SEED`, or fresh), printed so that a failure names it.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("DSM_VIEWS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("{test}: seed {seed} (DSM_VIEWS_SEED={seed} replays it)");
    seed
}

pub fn rng(test: &str) -> StdRng {
    StdRng::seed_from_u64(seed(test))
}
