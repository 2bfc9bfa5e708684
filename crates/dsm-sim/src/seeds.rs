//! Which seeds a simulation test runs and how long each runs, chosen from the environment so a
//! failure can be replayed and a longer soak run without editing code.
//!
//! * `DSM_SIM_SEED=S`: exactly seed `S` (replays a failure).
//! * `DSM_SIM_SEEDS=N`: seeds `0..N`.
//! * `DSM_SIM_STEPS=M`: `M` steps per seed (what a step is, the test says).

use crate::{Error, Result};

/// The seeds to run: exactly `DSM_SIM_SEED` if set, else `0..DSM_SIM_SEEDS`, else
/// `0..default`.
pub fn seeds(default: u64) -> Result<Vec<u64>> {
    Ok(match env_u64("DSM_SIM_SEED")? {
        Some(seed) => vec![seed],
        None => (0..env_u64("DSM_SIM_SEEDS")?.unwrap_or(default)).collect(),
    })
}

/// Steps per seed: `DSM_SIM_STEPS` if set, else `default`.
pub fn steps(default: u64) -> Result<u64> {
    Ok(env_u64("DSM_SIM_STEPS")?.unwrap_or(default))
}

/// `name` parsed as a number, `None` when it is not set.
fn env_u64(name: &'static str) -> Result<Option<u64>> {
    let Ok(value) = std::env::var(name) else {
        return Ok(None);
    };
    match value.parse() {
        Ok(number) => Ok(Some(number)),
        Err(_) => Err(Error::Env { name, value }),
    }
}
