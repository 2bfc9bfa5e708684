//! `SimNet<M>`: a deterministic simulated network for any message type.
//!
//! Nodes `0..nodes` exchange messages of type `M`. Every random choice (each message's delay)
//! comes from the one seed given to [`SimNet::new`], so a run replays exactly.
//!
//! * **Delay**: each message is due `min_delay..=max_delay` ticks after it was sent.
//! * **Per-pair FIFO** (what TCP streams and RC queue pairs give): a message is never due before
//!   an earlier message of the same `(from, to)` pair. [`NetConfig::reorder`] turns this off, to
//!   show what breaks when a protocol assumes FIFO it does not get.
//! * **Pauses**: [`SimNet::pause`] holds every delivery to a node for some ticks (a descheduled
//!   process, a GC pause); the harness should also stop the node's own activity meanwhile
//!   ([`SimNet::is_paused`]).
//! * **Crashes**: [`SimNet::crash`] drops everything in flight to or from a node, and
//!   everything sent to or by it later; [`SimNet::crash_after_sent`] still delivers what it
//!   sent before (a killed process whose last frames were already in the kernel).
//! * **Membership**: a send to a node outside the cluster (`to >= nodes`, or a node removed
//!   with [`SimNet::leave`]) is refused with [`NetError::NotMember`] and counted in
//!   [`NetStats::not_member`], so a harness can assert that it never happens.
//! * **Time**: [`SimNet::step`] delivers the next due message (earliest due tick, then send
//!   order) and moves the clock to its due tick; [`SimNet::advance`] lets time pass.
//!
//! ```
//! use dsm_sim::net::{NetConfig, SimNet};
//!
//! let mut net: SimNet<&str> = SimNet::new(NetConfig::new(3), 42);
//! net.send(0, 2, "a").unwrap();
//! net.send(0, 2, "b").unwrap();
//! assert!(net.send(0, 7, "lost").is_err()); // node 7 is not in the cluster
//! let first = net.step().unwrap();
//! assert_eq!((first.from, first.to, first.message), (0, 2, "a")); // FIFO per pair
//! assert_eq!(net.step().unwrap().message, "b");
//! assert!(net.step().is_none());
//! assert_eq!(net.stats().sent, 2);
//! ```

use std::collections::BTreeMap;

use dsm_wire::NodeId;

use crate::rng::Rng;

/// How a [`SimNet`] behaves.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Cluster size: nodes `0..nodes`.
    pub nodes: u32,
    /// Smallest delay of a message, in ticks.
    pub min_delay: u64,
    /// Largest delay of a message, in ticks.
    pub max_delay: u64,
    /// Allow reordering within a pair (breaks the FIFO that TCP and RC QPs give).
    pub reorder: bool,
    /// Bound on messages in flight; a send beyond it fails (a protocol flooding the network is
    /// a bug the simulation should report, not a reason to run out of memory).
    pub max_in_flight: usize,
}

impl NetConfig {
    /// `nodes` nodes, delays of 1 to 20 ticks, FIFO per pair, up to a million messages in flight.
    pub fn new(nodes: u32) -> Self {
        NetConfig {
            nodes,
            min_delay: 1,
            max_delay: 20,
            reorder: false,
            max_in_flight: 1 << 20,
        }
    }
}

/// A message on its way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<M> {
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// The message.
    pub message: M,
    /// Tick it was sent at.
    pub sent_at: u64,
    /// Tick it is (or was) due at.
    pub due_at: u64,
}

/// Why a send was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The receiver (or sender) is not a member of the cluster.
    #[error("message from node {from} to node {to}, which is not in the cluster")]
    NotMember {
        /// Sender.
        from: NodeId,
        /// Receiver.
        to: NodeId,
    },
    /// [`NetConfig::max_in_flight`] messages are already in flight.
    #[error("{0} messages in flight: the network is full")]
    Full(usize),
}

/// What the network did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Messages accepted by `send`.
    pub sent: u64,
    /// Messages handed out by `step`.
    pub delivered: u64,
    /// Messages dropped because their sender or receiver crashed.
    pub dropped: u64,
    /// Sends refused because a node was not in the cluster (should stay 0).
    pub not_member: u64,
    /// Messages accepted per sender.
    pub sent_by: Vec<u64>,
}

/// The simulated network. See the [module docs](self).
#[derive(Debug)]
pub struct SimNet<M> {
    config: NetConfig,
    rng: Rng,
    now: u64,
    /// Send order; breaks ties between messages due at the same tick.
    seq: u64,
    /// In flight, keyed by (due tick, send order).
    queue: BTreeMap<(u64, u64), Envelope<M>>,
    /// Due tick of the last message per pair (`from * nodes + to`), for FIFO.
    pair_tail: Vec<u64>,
    paused_until: Vec<u64>,
    crashed: Vec<bool>,
    member: Vec<bool>,
    stats: NetStats,
}

impl<M> SimNet<M> {
    /// A network of `config.nodes` nodes whose randomness comes from `seed`.
    pub fn new(config: NetConfig, seed: u64) -> Self {
        assert!(config.nodes > 0, "a cluster has at least one node");
        assert!(
            config.min_delay <= config.max_delay,
            "min_delay > max_delay"
        );
        let n = config.nodes as usize;
        SimNet {
            rng: Rng::new(seed),
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            pair_tail: vec![0; n * n],
            paused_until: vec![0; n],
            crashed: vec![false; n],
            member: vec![true; n],
            stats: NetStats {
                sent_by: vec![0; n],
                ..NetStats::default()
            },
            config,
        }
    }

    /// Current tick.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Cluster size.
    pub fn nodes(&self) -> u32 {
        self.config.nodes
    }

    /// Counters so far.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// Messages in flight.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Due tick of the next message, if any.
    pub fn next_due(&self) -> Option<u64> {
        self.queue.keys().next().map(|(due, _)| *due)
    }

    /// True when `node` is a current member of the cluster.
    pub fn is_member(&self, node: NodeId) -> bool {
        self.member.get(node as usize).copied().unwrap_or(false)
    }

    /// Sends `message` from `from` to `to`. Refused (and counted) when either is not a member;
    /// silently dropped (and counted) when either crashed.
    pub fn send(&mut self, from: NodeId, to: NodeId, message: M) -> Result<(), NetError> {
        if !self.is_member(from) || !self.is_member(to) {
            self.stats.not_member += 1;
            return Err(NetError::NotMember { from, to });
        }
        if self.queue.len() >= self.config.max_in_flight {
            return Err(NetError::Full(self.queue.len()));
        }
        if self.crashed[from as usize] || self.crashed[to as usize] {
            self.stats.dropped += 1;
            return Ok(());
        }
        let delay = self.rng.range(self.config.min_delay, self.config.max_delay);
        let mut due_at = (self.now + delay).max(self.paused_until[to as usize]);
        let pair = self.pair(from, to);
        if !self.config.reorder {
            due_at = due_at.max(self.pair_tail[pair]);
        }
        self.pair_tail[pair] = self.pair_tail[pair].max(due_at);
        self.stats.sent += 1;
        self.stats.sent_by[from as usize] += 1;
        self.seq += 1;
        let envelope = Envelope {
            from,
            to,
            message,
            sent_at: self.now,
            due_at,
        };
        self.queue.insert((due_at, self.seq), envelope);
        Ok(())
    }

    /// Delivers the next due message and moves the clock to its due tick; `None` when nothing
    /// is in flight.
    pub fn step(&mut self) -> Option<Envelope<M>> {
        let (_, envelope) = self.queue.pop_first()?;
        self.now = self.now.max(envelope.due_at);
        self.stats.delivered += 1;
        Some(envelope)
    }

    /// Lets `ticks` pass without delivering anything.
    pub fn advance(&mut self, ticks: u64) {
        self.now += ticks;
    }

    /// Holds every delivery to `node` for `ticks` ticks from now. Messages already in flight to
    /// it are postponed too, keeping their order, so FIFO per pair still holds.
    pub fn pause(&mut self, node: NodeId, ticks: u64) {
        let until = self.now + ticks;
        let slot = &mut self.paused_until[node as usize];
        *slot = (*slot).max(until);
        let held: Vec<(u64, u64)> = self
            .queue
            .iter()
            .filter(|(key, e)| e.to == node && key.0 < until)
            .map(|(key, _)| *key)
            .collect();
        for key in held {
            if let Some(mut envelope) = self.queue.remove(&key) {
                envelope.due_at = until;
                self.queue.insert((until, key.1), envelope);
            }
        }
        for from in 0..self.config.nodes {
            let pair = self.pair(from, node);
            self.pair_tail[pair] = self.pair_tail[pair].max(until);
        }
    }

    /// True while deliveries to `node` are held by [`pause`](Self::pause).
    pub fn is_paused(&self, node: NodeId) -> bool {
        self.paused_until[node as usize] > self.now
    }

    /// Crashes `node`: drops everything in flight to or from it, and everything it sends or is
    /// sent from now on.
    pub fn crash(&mut self, node: NodeId) {
        self.crashed[node as usize] = true;
        let before = self.queue.len();
        self.queue.retain(|_, e| e.from != node && e.to != node);
        self.stats.dropped += (before - self.queue.len()) as u64;
    }

    /// Crashes `node` like [`crash`](Self::crash), except that what it sent before still
    /// arrives (after its peers may have been told it failed).
    pub fn crash_after_sent(&mut self, node: NodeId) {
        self.crashed[node as usize] = true;
        let before = self.queue.len();
        self.queue.retain(|_, e| e.to != node);
        self.stats.dropped += (before - self.queue.len()) as u64;
    }

    /// True once `node` crashed.
    pub fn is_crashed(&self, node: NodeId) -> bool {
        self.crashed[node as usize]
    }

    /// Removes `node` from the cluster: later sends to or from it are refused as
    /// [`NetError::NotMember`]; what is in flight to it is dropped.
    pub fn leave(&mut self, node: NodeId) {
        self.member[node as usize] = false;
        let before = self.queue.len();
        self.queue.retain(|_, e| e.to != node);
        self.stats.dropped += (before - self.queue.len()) as u64;
    }

    fn pair(&self, from: NodeId, to: NodeId) -> usize {
        from as usize * self.config.nodes as usize + to as usize
    }
}

#[cfg(test)]
mod tests {
    use super::{NetConfig, NetError, SimNet};

    fn net(nodes: u32, reorder: bool, seed: u64) -> SimNet<u64> {
        let mut config = NetConfig::new(nodes);
        config.reorder = reorder;
        SimNet::new(config, seed)
    }

    /// Sends `count` numbered messages on every pair, returns the (from, to, n) delivery order.
    fn run(net: &mut SimNet<u64>, count: u64) -> Vec<(u32, u32, u64)> {
        let nodes = net.nodes();
        for n in 0..count {
            for from in 0..nodes {
                for to in 0..nodes {
                    net.send(from, to, n).unwrap();
                }
            }
        }
        std::iter::from_fn(|| net.step())
            .map(|e| (e.from, e.to, e.message))
            .collect()
    }

    fn pair_order_kept(order: &[(u32, u32, u64)], nodes: u32) -> bool {
        let mut next = vec![0u64; (nodes * nodes) as usize];
        order.iter().all(|&(from, to, n)| {
            let slot = &mut next[(from * nodes + to) as usize];
            let in_order = *slot == n;
            *slot = n + 1;
            in_order
        })
    }

    #[test]
    fn fifo_per_pair_and_replayable() {
        let order = run(&mut net(4, false, 9), 50);
        assert_eq!(order.len(), 4 * 4 * 50);
        assert!(pair_order_kept(&order, 4));
        assert_eq!(order, run(&mut net(4, false, 9), 50));
        assert_ne!(order, run(&mut net(4, false, 10), 50));
    }

    #[test]
    fn reorder_flag_breaks_fifo() {
        let order = run(&mut net(2, true, 3), 100);
        assert!(!pair_order_kept(&order, 2));
    }

    #[test]
    fn time_moves_forward_within_delay_bounds() {
        let mut net = net(3, false, 1);
        net.send(0, 1, 1).unwrap();
        let e = net.step().unwrap();
        assert!((1..=20).contains(&e.due_at));
        assert_eq!(net.now(), e.due_at);
        net.advance(100);
        net.send(1, 2, 2).unwrap();
        assert!(net.step().unwrap().due_at > 100);
    }

    #[test]
    fn pause_holds_deliveries_and_keeps_order() {
        let mut net = net(2, false, 5);
        for n in 0..10 {
            net.send(0, 1, n).unwrap();
        }
        net.pause(1, 1000);
        assert!(net.is_paused(1));
        net.send(0, 1, 10).unwrap();
        let order: Vec<_> = std::iter::from_fn(|| net.step()).collect();
        assert!(order.iter().all(|e| e.due_at >= 1000));
        assert_eq!(
            order.iter().map(|e| e.message).collect::<Vec<_>>(),
            (0..11).collect::<Vec<_>>()
        );
        assert!(!net.is_paused(1));
    }

    #[test]
    fn crash_drops_traffic() {
        let mut net = net(3, false, 2);
        net.send(0, 1, 1).unwrap();
        net.send(1, 2, 2).unwrap();
        net.send(0, 2, 3).unwrap();
        net.crash(1);
        net.send(2, 1, 4).unwrap();
        let left: Vec<_> = std::iter::from_fn(|| net.step())
            .map(|e| e.message)
            .collect();
        assert_eq!(left, vec![3]);
        assert_eq!(net.stats().dropped, 3);
        assert_eq!(net.stats().sent, 3);
    }

    #[test]
    fn sends_outside_the_cluster_are_refused_and_counted() {
        let mut net = net(2, false, 2);
        assert_eq!(
            net.send(0, 2, 1),
            Err(NetError::NotMember { from: 0, to: 2 })
        );
        net.leave(1);
        assert!(net.send(0, 1, 1).is_err());
        assert_eq!(net.stats().not_member, 2);
        assert_eq!(net.in_flight(), 0);
    }
}
