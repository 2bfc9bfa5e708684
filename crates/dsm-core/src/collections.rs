//! The hash maps of the engine: keyed by page or request id on every message, so their hash
//! is on the fault path. std's SipHash took 12% of the engine's time in a profile of
//! `dsm-bench latency` (n2_shm); foldhash is a few times faster on such small keys and
//! still seeded per map, like std's.

/// A `HashMap` with foldhash.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A `HashSet` with foldhash.
pub(crate) type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
