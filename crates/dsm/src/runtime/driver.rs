//! The driver thread: takes every transport event, runs the membership ring, the barrier and
//! the allocation rounds, feeds coherence messages to the engine, and publishes what it
//! learns in [`Shared`](super::Shared).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dsm_core::Access;
use dsm_core::{EventSink, Transport, TransportEvent};
use dsm_locks::LockTable;
use dsm_uffd::SlotId;
use dsm_wire::{Alloc, Membership, Message, NodeId, PageId, SyncMsg};

use super::Core;
use super::alloc::Allocator;
use super::views::ViewService;
use crate::stats::Counters;

/// What the driver consumes.
#[derive(Debug)]
pub(crate) enum Event {
    /// Something from the transport.
    Transport(TransportEvent),
    /// Signal delivery: a thread faulted and waits on `slot` (see `crate::fault`).
    Fault {
        /// The page.
        page: PageId,
        /// What the thread did.
        access: Access,
        /// Where the thread waits.
        slot: SlotId,
        /// When the handler ran (the fault latency counts from here).
        since: Instant,
    },
    /// The node is leaving cleanly: stop judging peers (they may go at any moment now).
    Leaving,
    /// The monitor found `rank` silent for the failure timeout.
    Declare {
        /// The silent node.
        rank: NodeId,
    },
    /// The node is going away.
    Stop,
}

/// Bound on events queued for the driver.
pub(crate) const EVENT_QUEUE: usize = 1 << 16;

/// Longest the transport thread waits for room in the driver's queue before it drops an
/// event (saying so).
///
/// The wait can stall the transport thread, and the driver may at the same time wait on the
/// transport: the TCP transport's `send` waits for room in its own bounded queue, for at most
/// 10 s, and then fails. This wait is longer, so in that cycle the driver's send gives up
/// first and the driver drains the queue. The driver can also wait for the engine lock while
/// an application thread holding it sends (each send bounded the same way, but one release
/// may send several messages), so it is not proved that the driver always drains within
/// this bound: when it does not, the event is dropped with an error (the protocols above
/// time out as for a lost message) instead of the transport thread hanging for ever.
pub(crate) const DELIVER_TIMEOUT: Duration = Duration::from_secs(30);

/// The transport's sink. Coherence, lock and barrier messages, and one-sided read completions,
/// run to completion on the thread that received them (the transport's): the engine, the
/// lock table or the barrier handles them there and the answers leave on the same thread's
/// next turn, with no hand-off to the driver (a thread woken on another CPU costs ~30 us on
/// virtual machines; one on the same CPU a few). Everything else (membership, allocation,
/// files) goes to the driver's bounded queue.
#[derive(Debug)]
pub(crate) struct Sink {
    pub(crate) events: SyncSender<Event>,
    /// Set once the runtime exists; until then every event goes to the driver.
    inline: OnceLock<Inline>,
    /// Taken by each transport thread as it starts.
    priority: Arc<crate::sched::ServiceThreads>,
}

#[derive(Debug)]
struct Inline {
    core: Arc<Core>,
    locks: Arc<LockTable>,
}

impl Sink {
    pub(crate) fn new(
        events: SyncSender<Event>,
        priority: Arc<crate::sched::ServiceThreads>,
    ) -> Self {
        Sink {
            events,
            inline: OnceLock::new(),
            priority,
        }
    }

    /// From now on coherence and lock messages are handled on the receiving thread.
    pub(crate) fn attach(&self, core: Arc<Core>, locks: Arc<LockTable>) {
        let _ = self.inline.set(Inline { core, locks });
    }

    /// Handles `event` on this thread when it is one that runs to completion; gives it back
    /// otherwise.
    fn run_inline(&self, event: TransportEvent) -> Option<TransportEvent> {
        match self.inline.get() {
            Some(inline) => run_to_completion(&inline.core, &inline.locks, event),
            None => Some(event),
        }
    }
}

/// Handles a coherence, lock or barrier message, or a one-sided read completion, on the
/// calling thread (counting the message's bytes); gives back any other event.
fn run_to_completion(
    core: &Core,
    locks: &LockTable,
    event: TransportEvent,
) -> Option<TransportEvent> {
    crate::trace::received(&core.shared, &event);
    if let TransportEvent::Message { message, .. } = &event
        && runs_inline(message)
    {
        Counters::count(&core.shared.counters.bytes_received, message);
    }
    match event {
        TransportEvent::Message {
            from,
            message: Message::Coherence(m),
        } => {
            // Bad input changes nothing in the engine: log it and go on.
            if let Err(e) = core.engine(|c, ctx| c.on_message(from, m, ctx)) {
                tracing::warn!(from, error = %e, "coherence message rejected");
            }
            None
        }
        TransportEvent::Message {
            from,
            message: Message::Sync(m),
        } if is_barrier(&m) => {
            core.on_barrier(from, m);
            None
        }
        TransportEvent::Message {
            from,
            message: Message::Sync(m),
        } => {
            if let Err(e) = locks.handle(from, &m) {
                tracing::warn!(from, error = %e, "lock message rejected");
            }
            None
        }
        TransportEvent::PageRead { token, result } => {
            let done = match result {
                Ok(page) => core.engine(|c, ctx| c.on_page_read(token, page, ctx)),
                Err(e) => Err(e.into()),
            };
            if let Err(e) = done {
                tracing::error!(token, error = %e, "page read failed");
            }
            None
        }
        other => Some(other),
    }
}

/// Messages the receiving thread handles itself (see [`Sink`]).
fn runs_inline(message: &Message) -> bool {
    matches!(message, Message::Coherence(_) | Message::Sync(_))
}

fn is_barrier(message: &SyncMsg) -> bool {
    matches!(
        message,
        SyncMsg::BarrierArrive { .. }
            | SyncMsg::BarrierRelease { .. }
            | SyncMsg::BarrierAbort { .. }
            | SyncMsg::BarrierRound { .. }
    )
}

impl EventSink for Sink {
    fn deliver(&self, event: TransportEvent) {
        if let (Some(inline), TransportEvent::Message { from, message }) =
            (self.inline.get(), &event)
        {
            // Any message is a sign of life, heard here so that a busy driver cannot make a
            // live peer look silent; a heartbeat says nothing else.
            let mut ring = inline.core.ring.lock().unwrap_or_else(|p| p.into_inner());
            ring.heard(*from, Instant::now());
            drop(ring);
            if matches!(message, Message::Membership(Membership::Heartbeat { .. })) {
                Counters::count(&inline.core.shared.counters.bytes_received, message);
                return;
            }
        }
        let Some(event) = self.run_inline(event) else {
            return;
        };
        if let Err(dropped) = push_bounded(&self.events, Event::Transport(event), DELIVER_TIMEOUT) {
            tracing::error!(
                event = ?dropped,
                timeout = ?DELIVER_TIMEOUT,
                "no room in the driver's event queue: transport event dropped"
            );
        }
    }

    fn awaiting(&self) -> bool {
        // Before the runtime exists only joining waits, and it waits on the network.
        self.inline
            .get()
            .is_none_or(|inline| inline.core.shared.awaiting.any())
    }

    fn polling(&self, on: bool) {
        self.priority.polling(on);
    }

    fn on_thread_start(&self) {
        self.priority
            .apply_to_current_thread(crate::sched::Role::DataPath);
    }
}

/// The sink as the TCP thread sees it: once every peer exchanges messages with this node by
/// shared memory, the TCP connections carry nothing the node waits for, so the TCP thread
/// stops polling (a second poller would only take the CPU the shared-memory thread and the
/// application need).
#[derive(Debug)]
pub(crate) struct NetworkSink {
    sink: Arc<Sink>,
    quiet: AtomicBool,
}

impl NetworkSink {
    pub(crate) fn new(sink: Arc<Sink>) -> Self {
        NetworkSink {
            sink,
            quiet: AtomicBool::new(false),
        }
    }

    /// No answer comes by the network from now on.
    pub(crate) fn set_quiet(&self) {
        self.quiet.store(true, Ordering::Relaxed);
    }
}

impl EventSink for NetworkSink {
    fn deliver(&self, event: TransportEvent) {
        self.sink.deliver(event);
    }

    fn awaiting(&self) -> bool {
        !self.quiet.load(Ordering::Relaxed) && self.sink.awaiting()
    }

    fn polling(&self, on: bool) {
        self.sink.polling(on);
    }

    fn on_thread_start(&self) {
        self.sink.on_thread_start();
    }
}

/// Queues `event` for the driver, waiting at most `timeout` for room. `Ok` also when the
/// driver is gone (after `Stop`, events have no consumer and go quietly); `Err` gives back
/// the event that found no room in time.
pub(crate) fn push_bounded(
    events: &SyncSender<Event>,
    mut event: Event,
    timeout: Duration,
) -> std::result::Result<(), Event> {
    let deadline = Instant::now() + timeout;
    loop {
        match events.try_send(event) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => return Ok(()),
            Err(TrySendError::Full(back)) if Instant::now() >= deadline => return Err(back),
            Err(TrySendError::Full(back)) => {
                event = back;
                // The queue is full only while the driver is far behind: a short nap, not a
                // spin, so the driver gets the CPU.
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}

/// The driver's state; it runs on its own thread until `Event::Stop`.
pub(crate) struct Driver {
    pub(crate) rank: NodeId,
    pub(crate) core: Arc<Core>,
    pub(crate) locks: Arc<LockTable>,
    pub(crate) allocator: Allocator,
    /// Rank 0's directory of file masters and this node's master service.
    pub(crate) views: ViewService,
    pub(crate) events: Receiver<Event>,
    /// Set by `Node::stop`: the driver returns at its next turn even when the queue is too
    /// full for `Event::Stop` to get in.
    pub(crate) stop: Arc<AtomicBool>,
    /// Bound on a fault's wait for its page (the node's `op_timeout`); the engine's clock is
    /// in milliseconds since `started`.
    pub(crate) fault_timeout: Duration,
    pub(crate) started: Instant,
}

/// How often the driver gives the coherence engine the time (its timeouts are checked then).
const ENGINE_TICK: Duration = Duration::from_millis(100);

impl Driver {
    /// Runs until stopped.
    pub(crate) fn run(mut self) {
        let mut next_engine_tick = Instant::now();
        while !self.stop.load(Ordering::Acquire) {
            let wait = next_engine_tick.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(wait) {
                Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(Event::Leaving) => self.ring().stop_watching(),
                Ok(Event::Declare { rank }) => self.declare(rank),
                Ok(Event::Transport(event)) => self.on_event(event),
                Ok(Event::Fault {
                    page,
                    access,
                    slot,
                    since,
                }) => {
                    crate::trace::fault_taken(&self.core.shared, page);
                    let fault = (page, access, slot, since);
                    let done = self.core.engine(|c, ctx| c.fault_in_signal(fault, ctx));
                    if let Err(e) = done {
                        tracing::error!(?page, error = %e, "fault failed");
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            if now >= next_engine_tick {
                self.tick_engine(now);
                next_engine_tick = now + ENGINE_TICK;
            }
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, crate::membership::ring::Ring> {
        self.core.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives the coherence engine the time; a fault that waited past the timeout fails (the
    /// process dies, by SIGBUS under signal delivery or abort under thread delivery, after
    /// the error naming the page and its home is printed) instead of hanging.
    fn tick_engine(&self, now: Instant) {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (now_ms, timeout_ms) = (millis(now - self.started), millis(self.fault_timeout));
        let failed = self.core.engine(|c, _| Ok(c.tick(now_ms, timeout_ms)));
        for error in failed.unwrap_or_default() {
            tracing::error!(rank = self.rank, %error, "fault timed out");
        }
    }

    fn on_event(&mut self, event: TransportEvent) {
        // Before the sink is attached (join), protocol messages land here: same handling.
        let Some(event) = run_to_completion(&self.core, &self.locks, event) else {
            return;
        };
        match event {
            TransportEvent::Message { from, message } => {
                Counters::count(&self.core.shared.counters.bytes_received, &message);
                self.on_message(from, message);
            }
            TransportEvent::PeerFailed { node, reason } => {
                let left = self
                    .core
                    .shared
                    .read(|s| s.left.get(node as usize).copied());
                if left == Some(false) {
                    tracing::warn!(rank = self.rank, node, %reason, "peer connection failed");
                    self.declare(node);
                }
            }
            other => tracing::debug!(?other, "transport event with no consumer"),
        }
    }

    fn on_message(&mut self, from: NodeId, message: Message) {
        match message {
            Message::Membership(m) => self.on_membership(from, m),
            Message::Alloc(Alloc::Malloc { req, spec }) if self.rank == 0 => {
                let gone = self.core.shared.read(|s| s.left.clone());
                if let Some(reply) = self.allocator.request(req, from, spec, &gone) {
                    self.broadcast(true, &Message::Alloc(reply));
                }
            }
            Message::Alloc(Alloc::NMalloc {
                req,
                region,
                base_addr,
                spec,
            }) if from == 0 => {
                self.core
                    .shared
                    .update(|s| super::keep_answer(&mut s.allocs, req, (region, base_addr, spec)));
            }
            Message::View(m) if super::views::is_answer(&m) => {
                let req = super::views::answer_req(&m);
                self.core
                    .shared
                    .update(|s| super::keep_view_answer(&mut s.view_answers, req, m));
            }
            Message::View(m) => {
                if let Some((to, answer)) = self.views.handle(self.rank, from, m) {
                    self.send(to, answer);
                }
            }
            other => tracing::warn!(from, ?other, "message with no consumer; dropped"),
        }
    }

    fn on_membership(&mut self, from: NodeId, message: Membership) {
        let now = Instant::now();
        match message {
            Membership::Heartbeat { .. } => {}
            Membership::Joined { rank } if rank == from => {
                self.core.shared.update(|s| s.arrivals.joined(rank));
            }
            Membership::NodeFailed { rank } => {
                if self.ring().failed(rank, now) {
                    // Said here too, before the waiters can see it (see `declare`).
                    tracing::warn!(
                        rank = self.rank,
                        failed = rank,
                        by = from,
                        "node declared failed"
                    );
                    self.core.shared.update(|s| s.failed.push(rank));
                    self.stop_waiting_for(rank);
                }
            }
            Membership::RdmaHello(info) => {
                self.core
                    .shared
                    .update(|s| s.rdma_hellos.insert(from, info));
            }
            Membership::Leave { rank } if rank == from => {
                self.ring().left(rank, now);
                // `from` is a rank the transport knows, but a bad index must not panic here.
                self.core.shared.update(|s| {
                    if let Some(left) = s.left.get_mut(rank as usize) {
                        *left = true;
                    }
                });
            }
            other => tracing::warn!(from, ?other, "unexpected membership message; dropped"),
        }
    }

    /// Declares `rank` failed here and tells every other live node.
    fn declare(&mut self, rank: NodeId) {
        let news = self.ring().failed(rank, Instant::now());
        let first = self.core.shared.read(|s| !s.failed.contains(&rank));
        if news || first {
            // Said before a waiter can see it: a thread that waits spinning (a barrier's)
            // returns `NodeFailed` at once, and the program may end before a later line.
            tracing::warn!(rank = self.rank, failed = rank, "node declared failed");
        }
        self.core.shared.update(|s| {
            if !s.failed.contains(&rank) {
                s.failed.push(rank);
            }
        });
        if news || first {
            self.stop_waiting_for(rank);
            self.broadcast(false, &Message::Membership(Membership::NodeFailed { rank }));
        }
    }

    /// Nothing waits for a failed `rank` any more: the faults that need it fail (and only
    /// those: pages homed there or last written there), and the lock table stops expecting its
    /// replies, so the survivors keep using their locks.
    fn stop_waiting_for(&mut self, rank: NodeId) {
        self.views.node_failed(rank);
        if let Err(e) = self.core.engine(|c, ctx| c.node_failed(rank, ctx)) {
            tracing::warn!(failed = rank, error = %e, "coherence engine could not drop the failed node");
        }
        if let Err(e) = self.locks.node_failed(rank) {
            tracing::warn!(failed = rank, error = %e, "lock table could not drop the failed node");
        }
    }

    /// Sends to every node not failed or gone (and to ourselves when `include_self`).
    fn broadcast(&self, include_self: bool, message: &Message) {
        self.core.broadcast(include_self, message);
    }

    fn send(&self, to: NodeId, message: Message) {
        send_counted(
            self.core.transport.as_ref(),
            &self.core.shared.counters,
            to,
            &message,
        );
    }
}

/// Sends through `transport`, counting the message; a failed send is the transport's news
/// (it reports the peer through the sink), so it is only logged here.
pub(crate) fn send_counted(
    transport: &dyn Transport,
    counters: &Counters,
    to: NodeId,
    message: &Message,
) {
    Counters::count(&counters.bytes_sent, message);
    Counters::bump(&counters.messages_sent);
    if let Err(e) = transport.send(to, message) {
        tracing::debug!(to, error = %e, "send failed");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::sync_channel;

    use super::*;

    #[test]
    fn a_full_queue_gives_the_event_back_after_the_timeout() {
        let (events, _receiver) = sync_channel(1);
        push_bounded(&events, Event::Stop, Duration::ZERO).unwrap();
        let started = Instant::now();
        let back = push_bounded(&events, Event::Stop, Duration::from_millis(20));
        assert!(matches!(back, Err(Event::Stop)));
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn room_made_while_waiting_lets_the_event_in() {
        let (events, receiver) = sync_channel(1);
        push_bounded(&events, Event::Stop, Duration::ZERO).unwrap();
        let drain = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let first = receiver.recv_timeout(Duration::from_secs(5));
            let second = receiver.recv_timeout(Duration::from_secs(5));
            first.is_ok() && second.is_ok()
        });
        push_bounded(&events, Event::Stop, Duration::from_secs(5)).unwrap();
        assert!(drain.join().unwrap());
    }

    #[test]
    fn a_gone_driver_drops_events_without_waiting() {
        let (events, receiver) = sync_channel(1);
        drop(receiver);
        assert!(push_bounded(&events, Event::Stop, Duration::from_secs(60)).is_ok());
    }
}
