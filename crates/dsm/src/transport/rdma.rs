//! Selecting RDMA at join: open the device, trade per-pair queue pair data (`RdmaHello`)
//! over the TCP mesh, connect; and at `alloc`, expose the home copies and wait for the
//! peers' keys.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(not(feature = "rdma"))]
pub(crate) use super::absent::{RdmaConfig, RdmaConnector, RdmaTransport};
use dsm_core::{EventSink, HomeMemory, Transport};
#[cfg(feature = "rdma")]
pub(crate) use dsm_rdma::{RdmaConfig, RdmaConnector, RdmaTransport};
use dsm_wire::msg::membership::transports;
use dsm_wire::{Membership, Message, NodeId, RdmaConnInfo};

use super::Wire;
use crate::runtime::Shared;
use crate::{Config, Error, Result, TransportChoice};

/// The `RdmaHello` of a node that will not use RDMA (no device, or not asked for): queue
/// pair number 0 is never an RC queue pair (0 and 1 are the management QPs). Every node
/// sends a hello to every other, so that all of them see the same offers and agree.
const DECLINE: RdmaConnInfo = RdmaConnInfo {
    qp_num: 0,
    psn: 0,
    lid: 0,
    gid_index: 0,
    gid: [0; 16],
};

/// Pause between looks at the peers' region keys.
const KEY_POLL: Duration = Duration::from_millis(1);

/// Opens the RDMA device when `config` asks for RDMA. Without one: under `rdma`, one line
/// on stderr and `None` (TCP); under `auto`, `None` quietly (most hosts have no device);
/// under `rdma!`, [`Error::RdmaUnavailable`].
pub(crate) fn open(config: &Config) -> Result<Option<RdmaConnector>> {
    if matches!(
        config.transport,
        TransportChoice::Tcp | TransportChoice::Shm
    ) {
        return Ok(None);
    }
    let rdma = RdmaConfig::from_env(config.cluster_id());
    match RdmaConnector::open(config.rank, config.size, rdma) {
        Ok(connector) => Ok(Some(connector)),
        Err(e) => unavailable(config, e.to_string()).map(|()| None),
    }
}

/// RDMA cannot be used for `reason`: an error when it was required, a debug line under
/// `auto`, else one line on stderr.
fn unavailable(config: &Config, reason: String) -> Result<()> {
    match config.transport {
        TransportChoice::RequireRdma => {
            return Err(Error::RdmaUnavailable {
                rank: config.rank,
                reason,
            });
        }
        TransportChoice::Auto => {
            tracing::debug!(rank = config.rank, %reason, "RDMA unavailable; pages move without it");
            return Ok(());
        }
        _ => {}
    }
    eprintln!(
        "dsm: rank {}: RDMA unavailable ({reason}); pages move over TCP",
        config.rank
    );
    Ok(())
}

/// The transports this node offers at boot-up (the `Endpoint.transports` bits).
pub(crate) fn offered(connector: Option<&RdmaConnector>) -> u8 {
    transports::TCP | connector.map_or(0, |_| transports::RDMA)
}

/// Sends every other node the data of the queue pair kept for it (or a decline), and waits
/// (until `deadline`) for theirs, which the driver records.
pub(crate) fn trade_hellos(
    config: &Config,
    connector: Option<&RdmaConnector>,
    shared: &Shared,
    send: impl Fn(NodeId, Message),
    deadline: Instant,
) -> Result<HashMap<NodeId, RdmaConnInfo>> {
    let (rank, size) = (config.rank, config.size);
    for peer in (0..size).filter(|&peer| peer != rank) {
        let info = match connector {
            Some(connector) => connector
                .conn_info(peer)
                .map_err(|e| rdma_failed(rank, &e))?,
            None => DECLINE,
        };
        send(peer, Message::Membership(Membership::RdmaHello(info)));
    }
    let timeout = deadline.saturating_duration_since(Instant::now());
    let missing = |hellos: &HashMap<NodeId, RdmaConnInfo>| -> Vec<NodeId> {
        (0..size)
            .filter(|r| *r != rank && !hellos.contains_key(r))
            .collect()
    };
    let waited = shared.wait(
        timeout,
        |s| format!("RdmaHello from ranks {:?}", missing(&s.rdma_hellos)),
        |s| {
            missing(&s.rdma_hellos)
                .is_empty()
                .then(|| s.rdma_hellos.clone())
        },
    );
    match waited {
        Err(Error::Timeout { .. }) => Err(Error::JoinTimeout {
            missing: shared.read(|s| missing(&s.rdma_hellos)),
        }),
        other => other,
    }
}

/// With every peer's hello: connects the queue pairs and starts the RDMA transport when
/// every node offered RDMA; `None` (TCP) when some node declined, unless RDMA is required.
pub(crate) fn connect(
    config: &Config,
    connector: Option<RdmaConnector>,
    hellos: &HashMap<NodeId, RdmaConnInfo>,
    sink: Arc<dyn EventSink>,
) -> Result<Option<RdmaTransport>> {
    let Some(mut connector) = connector else {
        // This node declined and said why at `open` (or was not asked to use RDMA).
        return Ok(None);
    };
    let mut declined: Vec<NodeId> = hellos
        .iter()
        .filter(|(_, info)| info.qp_num == DECLINE.qp_num)
        .map(|(&rank, _)| rank)
        .collect();
    if !declined.is_empty() {
        declined.sort_unstable();
        let reason = format!("ranks {declined:?} have no RDMA device or did not ask for RDMA");
        return unavailable(config, reason).map(|()| None);
    }
    for (&peer, info) in hellos {
        connector
            .connect(peer, info)
            .map_err(|e| rdma_failed(config.rank, &e))?;
    }
    let device = connector.device().to_owned();
    let transport = connector
        .start(sink)
        .map_err(|e| rdma_failed(config.rank, &e))?;
    // The counterpart of the fallback's line: which transport pages take is worth a line.
    eprintln!(
        "dsm: rank {}: pages move by RDMA READ over {device}",
        config.rank
    );
    Ok(Some(transport))
}

fn rdma_failed(rank: NodeId, error: &dyn std::fmt::Display) -> Error {
    Error::RdmaUnavailable {
        rank,
        reason: error.to_string(),
    }
}

/// Exposes a region's home copies for RDMA READ and waits (at most `timeout`, or until a
/// node fails) until every peer's key for it arrived, so that no fault can READ before its
/// home's key is known. Nothing to do over TCP.
pub(crate) fn expose(
    wire: &Wire,
    shared: &Shared,
    size: u32,
    region: u32,
    home: HomeMemory,
    timeout: Duration,
) -> Result<()> {
    let Some(rdma) = wire.rdma() else {
        return Ok(());
    };
    rdma.expose(region, home)?;
    let local = rdma.local();
    let missing = || -> Vec<NodeId> {
        (0..size)
            .filter(|&peer| peer != local && !rdma.has_remote_region(peer, region))
            .collect()
    };
    let started = Instant::now();
    loop {
        let waiting = missing();
        if waiting.is_empty() {
            return Ok(());
        }
        if let Some(rank) = shared.read(|s| s.failed.first().copied()) {
            return Err(Error::NodeFailed { rank });
        }
        if started.elapsed() >= timeout {
            return Err(Error::Timeout {
                what: format!("RDMA keys of region {region} from ranks {waiting:?}"),
                waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            });
        }
        std::thread::sleep(KEY_POLL);
    }
}

/// Withdraws a region's home copies from RDMA (FREE), before the memory goes.
pub(crate) fn withdraw(wire: &Wire, region: u32) -> Result<()> {
    if let Some(rdma) = wire.rdma() {
        rdma.withdraw(region)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn config(transport: TransportChoice) -> Config {
        Config::builder(0, 2).transport(transport).build().unwrap()
    }

    #[test]
    fn without_a_device_rdma_falls_back_unless_required() {
        if dsm_rdma::device_names().is_ok_and(|names| !names.is_empty()) {
            // Straight to stderr: libtest captures `eprintln!` of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED without_a_device_rdma_falls_back_unless_required: this machine has an \
                 RDMA device (the examples over RDMA in scripts/rig cover that case)"
            );
            return;
        }
        assert!(open(&config(TransportChoice::Tcp)).unwrap().is_none());
        assert!(
            open(&config(TransportChoice::PreferRdma))
                .unwrap()
                .is_none()
        );
        let err = open(&config(TransportChoice::RequireRdma)).unwrap_err();
        assert!(
            matches!(&err, Error::RdmaUnavailable { rank: 0, reason } if !reason.is_empty()),
            "{err}"
        );
    }

    #[test]
    fn a_node_without_rdma_offers_only_tcp() {
        assert_eq!(offered(None), transports::TCP);
    }

    #[test]
    fn hellos_from_every_peer_are_awaited_and_a_missing_one_times_out_the_join() {
        let cfg = Config::builder(0, 3)
            .transport(TransportChoice::Tcp)
            .build()
            .unwrap();
        let shared = Shared::new(0, 3);
        let sent = std::sync::Mutex::new(Vec::new());
        shared.update(|s| s.rdma_hellos.insert(1, DECLINE));
        let deadline = Instant::now() + Duration::from_millis(30);
        let err = trade_hellos(
            &cfg,
            None,
            &shared,
            |to, m| sent.lock().unwrap().push((to, m)),
            deadline,
        )
        .unwrap_err();
        assert!(
            matches!(&err, Error::JoinTimeout { missing } if missing == &[2]),
            "{err}"
        );
        let sent = sent.into_inner().unwrap();
        assert_eq!(sent.len(), 2, "one hello per peer");
        assert!(
            sent.iter()
                .all(|(_, m)| *m == Message::Membership(Membership::RdmaHello(DECLINE)))
        );
        shared.update(|s| s.rdma_hellos.insert(2, DECLINE));
        let hellos = trade_hellos(
            &cfg,
            None,
            &shared,
            |_, _| {},
            Instant::now() + Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(hellos.len(), 2);
    }
}
