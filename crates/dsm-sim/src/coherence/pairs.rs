//! Per-pair one-sidedness (issue #14): which requesters read which homes' master copies
//! themselves, besides the all-or-nothing [`SimConfig::one_sided`](super::SimConfig::one_sided),
//! and how each such read completes.
//!
//! The runtime pairs same-host nodes: each maps its peers' master copies, so a grant between
//! them may go without data. The two ends of a pair learn of the mapping at different times,
//! so the runtime only guarantees: if home `h` counts `r` among its
//! [`readers_of_home`](dsm_core::CoherenceConfig::readers_of_home), then `r` counts `h` among
//! its [`homes_read`](dsm_core::CoherenceConfig::homes_read). A requester that reads a home
//! the home does not know of yet gets grants with data, and must take them.
//!
//! A same-host read completes at once: the runtime copies the mapped master while it applies
//! the `ReadPage` action and calls `on_page_read` as soon as the rest of that batch of
//! actions is applied. An RDMA READ completes later, as a request and its data on the network.

use std::collections::BTreeSet;

use dsm_wire::NodeId;

use crate::rng::Rng;

/// The one-sided pairs of a simulated cluster, indexed by node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OneSidedPairs {
    /// `readers_of_home[h]`: the requesters home `h` grants without data (its
    /// `CoherenceConfig::readers_of_home`).
    pub readers_of_home: Vec<Vec<NodeId>>,
    /// `homes_read[r]`: the homes whose master copies requester `r` reads itself (its
    /// `CoherenceConfig::homes_read`): every home that counts `r` among its readers, and maybe
    /// some that do not yet (late confirmation).
    pub homes_read: Vec<Vec<NodeId>>,
    /// `read_at_once[r]`: the homes whose master copies `r` reads at once, as the `ReadPage`
    /// action is applied (a mapped same-host master); its reads of other homes travel as a
    /// request and its data and complete later (RDMA READ).
    pub read_at_once: Vec<Vec<NodeId>>,
}

impl OneSidedPairs {
    /// No pair reads one-sided, and every one-sided read completes later.
    pub fn none(nodes: u32) -> Self {
        let empty = vec![Vec::new(); nodes as usize];
        OneSidedPairs {
            readers_of_home: empty.clone(),
            homes_read: empty.clone(),
            read_at_once: empty,
        }
    }

    /// Pairs drawn from `seed` (a generator of their own, so that adding them moved no other
    /// choice of a seed): none; nodes spread over hosts, each reading the masters of every
    /// other node on its host (the runtime's shape); or each ordered pair reading with a
    /// chance of 1/4 to 4/4. Half the worlds then add homes to `homes_read` alone (the homes
    /// have not learnt of the mapping yet). Reads complete later, at once, at once for the
    /// mapped homes only (the runtime: shared memory or RDMA), or each pair either way.
    pub fn random(seed: u64, nodes: u32) -> Self {
        let mut rng = Rng::new(seed ^ 0x0e5e_d5a1_4ed0_a175);
        let reads = read_relation(&mut rng, nodes);
        let mut pairs = OneSidedPairs::none(nodes);
        for &(r, h) in &reads {
            pairs.readers_of_home[h as usize].push(r);
            pairs.homes_read[r as usize].push(h);
        }
        if rng.chance(1, 2) {
            for (r, h) in pairs_of(nodes) {
                if !reads.contains(&(r, h)) && rng.chance(1, 3) {
                    pairs.homes_read[r as usize].push(h);
                }
            }
        }
        let completion = rng.below(4);
        for (r, h) in pairs_of(nodes) {
            let at_once = match completion {
                0 => false,
                1 => true,
                2 => pairs.homes_read[r as usize].contains(&h),
                _ => rng.chance(1, 2),
            };
            if at_once {
                pairs.read_at_once[r as usize].push(h);
            }
        }
        pairs
    }

    /// Whether `requester`'s one-sided reads of `home`'s master copies complete at once.
    pub fn reads_at_once(&self, requester: NodeId, home: NodeId) -> bool {
        self.read_at_once
            .get(requester as usize)
            .is_some_and(|homes| homes.contains(&home))
    }

    /// Whether `requester` reads `home`'s master copies itself (per pair, `one_sided` aside).
    pub fn reads_master_of(&self, requester: NodeId, home: NodeId) -> bool {
        self.homes_read
            .get(requester as usize)
            .is_some_and(|homes| homes.contains(&home))
    }
}

/// Every ordered pair `(requester, home)` of distinct nodes, in order.
fn pairs_of(nodes: u32) -> impl Iterator<Item = (NodeId, NodeId)> {
    (0..nodes).flat_map(move |r| (0..nodes).filter(move |&h| h != r).map(move |h| (r, h)))
}

/// The ordered pairs `(r, h)` where requester `r` reads home `h`'s master copies and `h`
/// knows it, drawn from `rng`.
fn read_relation(rng: &mut Rng, nodes: u32) -> BTreeSet<(NodeId, NodeId)> {
    match rng.below(4) {
        0 => BTreeSet::new(),
        1 => {
            let hosts = rng.range(1, u64::from(nodes));
            let host: Vec<u64> = (0..nodes).map(|_| rng.below(hosts)).collect();
            pairs_of(nodes)
                .filter(|&(r, h)| host[r as usize] == host[h as usize])
                .collect()
        }
        _ => {
            let quarters = rng.range(1, 4);
            pairs_of(nodes)
                .filter(|_| rng.chance(quarters, 4))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::OneSidedPairs;

    /// Whatever is drawn, a home's readers read it (the runtime's guarantee), and nobody
    /// reads itself.
    #[test]
    fn every_reader_of_a_home_reads_it() {
        let (mut asymmetric, mut at_once) = (0, 0);
        for seed in 0..500 {
            let nodes = u32::try_from(seed % 16 + 1).expect("fits");
            let pairs = OneSidedPairs::random(seed, nodes);
            for h in 0..nodes {
                for &r in &pairs.readers_of_home[h as usize] {
                    assert!(
                        r != h && pairs.reads_master_of(r, h),
                        "seed {seed}: {pairs:?}"
                    );
                }
            }
            for r in 0..nodes {
                assert!(!pairs.reads_master_of(r, r) && !pairs.reads_at_once(r, r));
                let known = |h: &&u32| pairs.readers_of_home[**h as usize].contains(&r);
                asymmetric += pairs.homes_read[r as usize]
                    .iter()
                    .filter(|h| !known(h))
                    .count();
                at_once += pairs.read_at_once[r as usize].len();
            }
        }
        assert!(asymmetric > 0 && at_once > 0);
    }
}
