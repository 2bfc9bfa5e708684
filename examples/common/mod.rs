//! What every example does the same way: read its command-line flags, and turn an error into a
//! message and a non-zero exit. Each example includes this file with `mod common;`, so not every
//! example uses every item.

use std::fmt::Debug;
use std::str::FromStr;

use dsm::Consistency;

/// Runs `run`; on an error prints it and exits with status 1.
pub fn exit_on_error(run: fn() -> dsm::Result<()>) {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The value after the flag `name` on the command line, if any.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The number after the flag `name`, or `default` when the flag is absent.
///
/// # Panics
/// When the value is not a number: a wrong command line, said at once.
pub fn number<T: FromStr<Err: Debug>>(name: &str, default: T) -> T {
    arg(name).map_or(default, |v| v.parse().expect("a number"))
}

/// `--mode release` is release consistency; anything else, or no flag, is sequential.
#[allow(dead_code, reason = "not every example allocates shared memory")]
pub fn mode() -> Consistency {
    match arg("--mode").as_deref() {
        Some("release") => Consistency::Release,
        _ => Consistency::Sequential,
    }
}
