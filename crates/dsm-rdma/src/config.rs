//! Transport settings.

use std::time::Duration;

/// How an [`RdmaConnector`](crate::RdmaConnector) sets up the device and its queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaConfig {
    /// Cluster id carried in every frame (frames of other clusters are dropped).
    pub cluster: u64,
    /// Device name (`rxe0`); the first device when `None`.
    pub device: Option<String>,
    /// Port number (1 on every common device).
    pub port: u8,
    /// GID index to use; the port's first IPv4-mapped (RoCE v2) GID when `None` (index 1 on
    /// Soft-RoCE; index 0, the link-local fe80:: GID, fails at RTR there).
    pub gid_index: Option<u8>,
    /// Page-sized staging slots for READs and WRITEs in flight at once.
    pub staging_slots: u32,
    /// SEND slots for control messages in flight at once.
    pub send_slots: u32,
    /// Receives kept posted per peer.
    pub recv_depth: u32,
    /// Largest control frame (header included): the size of every SEND and RECV slot.
    pub message_len: usize,
    /// How long the transport thread polls an empty completion queue before it sleeps on the
    /// completion channel (latency against a busy CPU).
    pub spin: Duration,
}

impl RdmaConfig {
    /// Defaults for `cluster`: first device, port 1, automatic GID, 64 staging and 64 SEND
    /// slots, 32 receives per peer of 64 KiB, 50 µs of polling before sleeping.
    pub fn new(cluster: u64) -> Self {
        RdmaConfig {
            cluster,
            device: None,
            port: 1,
            gid_index: None,
            staging_slots: 64,
            send_slots: 64,
            recv_depth: 32,
            message_len: 64 * 1024,
            spin: Duration::from_micros(50),
        }
    }

    /// [`RdmaConfig::new`], then `DSM_RDMA_DEVICE`, `DSM_RDMA_GID_INDEX` and
    /// `DSM_RDMA_SPIN_US` from the environment when set (unparsable numbers are ignored with a
    /// warning).
    pub fn from_env(cluster: u64) -> Self {
        let mut config = RdmaConfig::new(cluster);
        if let Ok(device) = std::env::var("DSM_RDMA_DEVICE") {
            config.device = Some(device);
        }
        if let Some(index) = env_number("DSM_RDMA_GID_INDEX") {
            config.gid_index = Some(index);
        }
        if let Some(spin) = env_number("DSM_RDMA_SPIN_US") {
            config.spin = Duration::from_micros(spin);
        }
        config
    }
}

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    let value = std::env::var(name).ok()?;
    let parsed = value.parse().ok();
    if parsed.is_none() {
        tracing::warn!(name, %value, "not a number; ignored");
    }
    parsed
}
