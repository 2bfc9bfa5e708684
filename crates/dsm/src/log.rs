//! Where the library's warnings go when the program says nothing: a default `tracing`
//! subscriber printing to stderr, installed by `Node::join` unless the program installed its
//! own first.
//!
//! `DSM_LOG` sets the filter (`tracing_subscriber::EnvFilter` syntax: `info`,
//! `dsm=debug,dsm_tcp_fallback=trace`, …); the default is `warn`, so a rejected peer, a node
//! declared failed and a dropped connection each print one line naming who and why.
//!
//! The subscriber is set with `tracing::subscriber::set_global_default`: `try_init` of
//! tracing-subscriber would also claim the `log` crate's global logger, and a program calling
//! `env_logger::init()` after `Node::join` would then panic.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Variable holding the log filter.
pub(crate) const LOG_ENV: &str = "DSM_LOG";
/// Filter used when [`LOG_ENV`] is unset.
const DEFAULT_FILTER: &str = "warn";

/// Installs the default subscriber unless one is installed already (the program's wins).
pub(crate) fn install_default() {
    let configured = std::env::var(LOG_ENV).ok();
    let (filter, bad) = match configured.as_deref().map(EnvFilter::try_new) {
        Some(Ok(filter)) => (filter, None),
        Some(Err(e)) => (EnvFilter::new(DEFAULT_FILTER), Some(e)),
        None => (EnvFilter::new(DEFAULT_FILTER), None),
    };
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .finish();
    if tracing::subscriber::set_global_default(subscriber).is_ok()
        && let Some(e) = bad
    {
        tracing::warn!(
            "{LOG_ENV}={:?} is not a log filter ({e}); using {DEFAULT_FILTER}",
            configured.unwrap_or_default()
        );
    }
}
