//! Shared memory at join: binding this node's rendezvous socket before boot-up, then pairing
//! with the peers on this host and starting the shared-memory thread, under the rules of
//! `DSM_TRANSPORT` (`auto`: fall back to the network, saying why; `shm`: fail the join).

use std::sync::Arc;
use std::time::Instant;

use dsm_core::EventSink;
use dsm_wire::NodeId;

use super::{Listener, Paired, PollPolicy, Shm, pair_up};
use crate::raw::masters::Arena;
use crate::runtime::alloc::{REGION_BASE, REGION_END};
use crate::{Config, Error, Result, TransportChoice};

/// Binds this node's socket when `config` may use shared memory (before boot-up, so that
/// peers see it once the mesh is up). Under `auto` a failure means no shared memory (said
/// once); under `shm` it fails the join.
pub(crate) fn listen(config: &Config) -> Result<Option<Listener>> {
    if !matches!(
        config.transport,
        TransportChoice::Auto | TransportChoice::Shm
    ) || config.size == 1
    {
        return Ok(None);
    }
    match Listener::bind(config.cluster_id(), config.rank) {
        Ok(listener) => Ok(Some(listener)),
        Err(e) if config.transport == TransportChoice::Shm => {
            Err(Error::io("bind the shared-memory rendezvous socket", e))
        }
        Err(e) => {
            tracing::warn!(rank = config.rank, error = %e, "no shared memory with same-host peers: cannot bind the rendezvous socket");
            Ok(None)
        }
    }
}

/// Pairs with the peers on this host and starts the shared-memory thread (keep `listener`
/// until the end of join: peers look for it until then). Under `shm`, a
/// peer left unpaired fails the join ([`Error::ShmUnavailable`]); under `auto` it is
/// reached by the network, with a warning when a pair that should have worked failed.
pub(crate) fn connect(
    config: &Config,
    listener: Option<&Listener>,
    deadline: Instant,
    sink: Arc<dyn EventSink>,
    policy: PollPolicy,
) -> Result<Option<Shm>> {
    let Some(listener) = listener else {
        return Ok(None);
    };
    let (rank, size) = (config.rank, config.size);
    let arena = match Arena::create(REGION_END - REGION_BASE) {
        Ok(arena) => arena,
        Err(e) if config.transport == TransportChoice::Shm => {
            return Err(Error::io("create the shared arena of master copies", e));
        }
        Err(e) => {
            tracing::warn!(rank, error = %e, "no shared memory with same-host peers: cannot create the arena of master copies");
            return Ok(None);
        }
    };
    let paired = pair_up(listener, &arena, size, config.key(), deadline);
    for (peer, reason) in &paired.refused {
        tracing::warn!(rank, peer, %reason, "same-host peer reached by the network: shared memory failed");
    }
    if config.transport == TransportChoice::Shm {
        check_all_paired(rank, size, &paired)?;
    }
    Shm::start(paired, arena, rank, size, config.cluster_id(), sink, policy)
        .map_err(|e| Error::io("spawn the shared-memory thread", e))
}

/// [`Error::ShmUnavailable`] for the first peer not paired both ways.
fn check_all_paired(rank: NodeId, size: u32, paired: &Paired) -> Result<()> {
    for peer in (0..size).filter(|&p| p != rank) {
        if paired.pairs.iter().any(|p| p.peer == peer && p.send) {
            continue;
        }
        let reason = match paired.refused.iter().find(|(p, _)| *p == peer) {
            Some((_, reason)) => reason.clone(),
            None if paired.pairs.iter().any(|p| p.peer == peer) => {
                "it confirmed the channel late (receiving only)".to_owned()
            }
            None => "its rendezvous socket is not visible here: another host or network \
                     namespace"
                .to_owned(),
        };
        return Err(Error::ShmUnavailable { rank, peer, reason });
    }
    Ok(())
}
