//! Identifiers and limits shared by every message.

/// Size of a dsm page; regions are whole pages.
pub const PAGE_SIZE: usize = 4096;

/// One page of data. Boxed: pages travel between threads and are never copied by value.
pub type Page = Box<[u8; PAGE_SIZE]>;

/// A node's rank in the cluster (0..size).
pub type NodeId = u32;

/// A page of a shared region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageId {
    /// Region id, assigned by MALLOC.
    pub region: u32,
    /// Page index within the region.
    pub page: u32,
}

/// Bounds a decoder enforces on input from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Frames of any other cluster are rejected.
    pub cluster: u64,
    /// Largest body accepted; checked before the body is read or allocated.
    pub max_body_len: u32,
    /// Exclusive bound on page indices (pages in the largest region allowed).
    pub max_pages_per_region: u32,
    /// Largest list (page ids, node entries, diff runs) in one message.
    pub max_list_len: usize,
}

impl Limits {
    /// Defaults for `cluster`: 1 MiB bodies, regions up to 64 GiB (16 Mi pages), lists of 64 Ki.
    pub fn new(cluster: u64) -> Self {
        Limits {
            cluster,
            max_body_len: 1 << 20,
            max_pages_per_region: 1 << 24,
            max_list_len: 1 << 16,
        }
    }
}
