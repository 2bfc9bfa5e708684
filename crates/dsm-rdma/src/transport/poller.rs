//! The transport thread: polls the completion queue, turns completions into events, reposts
//! receives. It polls for `spin` after the last completion, then sleeps on the completion
//! channel (woken at least every 50 ms to notice shutdown).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dsm_core::{Polling, TransportError, TransportEvent};
use dsm_wire::{Message, NodeId, PAGE_SIZE};

use super::shared::{RECV_POOL, SEND_POOL, STAGING_POOL, Shared};
use crate::raw::{Completion, Op, WrTag};

/// Longest sleep on the completion channel before checking the stop flag again.
const WAKE_INTERVAL: Duration = Duration::from_millis(50);
/// Completions handled per poll.
const BATCH: usize = 32;
/// Consecutive failed polls (one every `WAKE_INTERVAL`, so about a second) after which the
/// completion queue is taken as broken: no completion can be seen any more, so every peer is
/// reported failed and the thread ends instead of logging forever.
const MAX_POLL_FAILURES: u32 = 20;

/// Counts consecutive failed polls of the completion queue.
#[derive(Debug, Default)]
struct PollFailures {
    consecutive: u32,
}

impl PollFailures {
    /// Records a failed poll; true once `MAX_POLL_FAILURES` failed in a row.
    fn failed(&mut self) -> bool {
        self.consecutive += 1;
        self.consecutive >= MAX_POLL_FAILURES
    }

    /// Records a poll that worked.
    fn succeeded(&mut self) {
        self.consecutive = 0;
    }
}

pub(crate) fn run(shared: Arc<Shared>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut last_work = Instant::now();
    let mut armed = false;
    let mut failures = PollFailures::default();
    shared.sink.on_thread_start();
    let mut polling = Polling::default();
    let sink = shared.sink.as_ref();
    while !shared.stop.load(Ordering::Acquire) {
        batch.clear();
        if let Err(error) = shared.cq.poll(&mut batch, BATCH) {
            tracing::error!(%error, "polling the completion queue failed");
            if failures.failed() {
                fail_every_peer(&shared, &error.to_string());
                return;
            }
            std::thread::sleep(WAKE_INTERVAL);
            continue;
        }
        failures.succeeded();
        if !batch.is_empty() {
            batch.drain(..).for_each(|c| handle(&shared, c));
            last_work = Instant::now();
            armed = false;
        } else if last_work.elapsed() < shared.spin && shared.sink.awaiting() {
            // Only while the node awaits an answer: see `EventSink::awaiting`.
            polling.set(sink, last_work.elapsed() >= POLITE_AFTER);
            std::hint::spin_loop();
        } else if !armed {
            polling.set(sink, false);
            // Arm, then poll once more: a completion that came before arming raises no event.
            armed = shared.cq.arm().is_ok();
        } else {
            let _ = shared.cq.wait(WAKE_INTERVAL);
            armed = false;
        }
    }
}

/// How long the poller spins after its last completion before it tells the sink it is
/// polling (`EventSink::polling`, which may lower its priority): most completions come
/// sooner, and a change of priority costs a system call.
const POLITE_AFTER: Duration = Duration::from_micros(50);

/// The completion queue is broken: no peer can be heard from again, so each is reported
/// failed (once: `peer_failed` skips peers already reported).
fn fail_every_peer(shared: &Shared, error: &str) {
    let reason = format!("the completion queue failed {MAX_POLL_FAILURES} polls in a row: {error}");
    for node in shared.peers.iter().flatten().map(|peer| peer.node) {
        shared.peer_failed(node, reason.clone());
    }
}

fn handle(shared: &Shared, completion: Completion) {
    match WrTag::decode(completion.wr_id()).map(|tag| tag.pool) {
        Some(STAGING_POOL) => on_page(shared, &completion),
        Some(SEND_POOL) => on_send(shared, &completion),
        Some(RECV_POOL) => on_recv(shared, &completion),
        _ => tracing::error!(
            wr_id = completion.wr_id(),
            "completion of an unknown work request"
        ),
    }
}

fn on_page(shared: &Shared, completion: &Completion) {
    let pool = &shared.pools.staging;
    let Some((tag, slot)) = pool.reclaim(completion) else {
        return;
    };
    let token = shared.token(&slot);
    let node = NodeId::from(tag.peer);
    let result = if completion.is_success() {
        Ok(())
    } else {
        let error = completion.error(tag.op.name());
        shared.peer_failed(node, error.to_string());
        Err(TransportError::from(error))
    };
    let event = match tag.op {
        Op::Read => {
            let page = result.map(|()| {
                let mut page = Box::new([0u8; PAGE_SIZE]);
                page.copy_from_slice(pool.bytes(&slot));
                page
            });
            TransportEvent::PageRead {
                token,
                result: page,
            }
        }
        _ => TransportEvent::PageWritten { token, result },
    };
    pool.release(slot);
    shared.sink.deliver(event);
}

fn on_send(shared: &Shared, completion: &Completion) {
    let Some((tag, slot)) = shared.pools.send.reclaim(completion) else {
        return;
    };
    shared.send_done(slot);
    if !completion.is_success() {
        let error = completion.error(Op::Send.name());
        shared.peer_failed(NodeId::from(tag.peer), error.to_string());
    }
}

fn on_recv(shared: &Shared, completion: &Completion) {
    let pool = &shared.pools.recv;
    let Some((tag, slot)) = pool.reclaim(completion) else {
        return;
    };
    let node = NodeId::from(tag.peer);
    if !completion.is_success() {
        pool.release(slot);
        // Flushed receives are the normal end of a queue pair that failed or is shut down.
        if !completion.is_flushed() && !shared.stop.load(Ordering::Acquire) {
            shared.peer_failed(node, completion.error(Op::Recv.name()).to_string());
        }
        return;
    }
    let len = (completion.byte_len() as usize).min(pool.slot_len());
    let decoded = dsm_wire::decode(&pool.bytes(&slot)[..len], &shared.limits);
    // Repost first: the bytes are decoded into owned values already.
    let Some(peer) = shared.peers.get(node as usize).and_then(Option::as_ref) else {
        pool.release(slot);
        return;
    };
    let slot_len = pool.slot_len();
    if let Err((error, slot)) = pool.post(&peer.qp, slot, Op::Recv, slot_len, tag.peer, None) {
        pool.release(slot);
        shared.peer_failed(node, error.to_string());
    }
    match decoded {
        Ok(frame) if frame.sender == node => on_message(shared, node, frame.message),
        Ok(frame) => tracing::warn!(
            node,
            claimed = frame.sender,
            "frame with a forged sender dropped"
        ),
        Err(error) => tracing::warn!(node, %error, "malformed frame dropped"),
    }
}

fn on_message(shared: &Shared, from: NodeId, message: Message) {
    if let Message::Alloc(key @ dsm_wire::Alloc::RegionKey { .. }) = &message {
        // Region keys are the transport's own business: recorded, not delivered.
        if let Err(error) = shared.add_remote_region(from, key) {
            tracing::warn!(%error, "region key refused");
        }
        return;
    }
    shared
        .sink
        .deliver(TransportEvent::Message { from, message });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_consecutive_poll_failures_give_up() {
        let mut failures = PollFailures::default();
        for _ in 1..MAX_POLL_FAILURES {
            assert!(!failures.failed());
        }
        failures.succeeded();
        for _ in 1..MAX_POLL_FAILURES {
            assert!(!failures.failed(), "a success must restart the count");
        }
        assert!(failures.failed());
    }
}
