//! The coordinator's roster of joined nodes (sans-IO) and each node's tally of `Joined`
//! announcements.

use dsm_wire::{Endpoint, NodeId};

/// Why the coordinator turned a `Join` away. The connection is dropped; the roster is
/// unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reject {
    /// The joiner was started with another cluster size.
    WrongSize {
        rank: NodeId,
        size: u32,
        expected: u32,
    },
    /// The rank is not in `1..size` (rank 0 is the coordinator itself).
    BadRank { rank: NodeId, size: u32 },
    /// That rank has joined already (two processes claim it).
    Duplicate { rank: NodeId },
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reject::WrongSize {
                rank,
                size,
                expected,
            } => {
                write!(
                    f,
                    "rank {rank} says size {size}, cluster size is {expected}"
                )
            }
            Reject::BadRank { rank, size } => write!(f, "rank {rank} is not a joiner of 1..{size}"),
            Reject::Duplicate { rank } => write!(f, "rank {rank} joined twice"),
        }
    }
}

/// Rank 0's record of who has joined.
#[derive(Debug)]
pub(crate) struct Roster {
    endpoints: Vec<Option<Endpoint>>,
}

impl Roster {
    /// A roster for `size` nodes with the coordinator (rank 0) at `own`.
    pub(crate) fn new(size: u32, own: Endpoint) -> Self {
        let mut endpoints = vec![None; size as usize];
        endpoints[0] = Some(own);
        Roster { endpoints }
    }

    fn size(&self) -> u32 {
        u32::try_from(self.endpoints.len()).expect("size came from a u32")
    }

    /// Records a `Join`.
    pub(crate) fn join(
        &mut self,
        rank: NodeId,
        size: u32,
        endpoint: Endpoint,
    ) -> Result<(), Reject> {
        let expected = self.size();
        if size != expected {
            return Err(Reject::WrongSize {
                rank,
                size,
                expected,
            });
        }
        if rank == 0 || rank >= expected {
            return Err(Reject::BadRank { rank, size });
        }
        let slot = &mut self.endpoints[rank as usize];
        if slot.is_some() {
            return Err(Reject::Duplicate { rank });
        }
        *slot = Some(endpoint);
        Ok(())
    }

    /// The node list, once every rank has joined.
    pub(crate) fn complete(&self) -> Option<Vec<Endpoint>> {
        self.endpoints.iter().cloned().collect()
    }

    /// Ranks that have not joined, ascending.
    pub(crate) fn missing(&self) -> Vec<NodeId> {
        (0..self.size())
            .filter(|r| self.endpoints[*r as usize].is_none())
            .collect()
    }
}

/// Which nodes a node has heard `Joined` from (itself included).
#[derive(Debug)]
pub(crate) struct Arrivals {
    seen: Vec<bool>,
}

impl Arrivals {
    /// Nothing heard yet but our own join.
    pub(crate) fn new(rank: NodeId, size: u32) -> Self {
        let mut seen = vec![false; size as usize];
        seen[rank as usize] = true;
        Arrivals { seen }
    }

    /// Records `Joined { rank }`; ranks outside the cluster are ignored (and reported false).
    pub(crate) fn joined(&mut self, rank: NodeId) -> bool {
        self.seen
            .get_mut(rank as usize)
            .map(|s| *s = true)
            .is_some()
    }

    /// True when every node has announced itself.
    pub(crate) fn complete(&self) -> bool {
        self.seen.iter().all(|s| *s)
    }

    /// Ranks not heard from, ascending.
    pub(crate) fn missing(&self) -> Vec<NodeId> {
        (0u32..)
            .zip(&self.seen)
            .filter(|(_, s)| !**s)
            .map(|(r, _)| r)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint {
            ip: [0; 16],
            port,
            transports: 1,
        }
    }

    #[test]
    fn joins_in_any_order_complete_the_list_in_rank_order() {
        let mut r = Roster::new(4, ep(100));
        assert_eq!(r.missing(), vec![1, 2, 3]);
        r.join(3, 4, ep(103)).unwrap();
        r.join(1, 4, ep(101)).unwrap();
        assert!(r.complete().is_none());
        assert_eq!(r.missing(), vec![2]);
        r.join(2, 4, ep(102)).unwrap();
        let ports: Vec<u16> = r.complete().unwrap().iter().map(|e| e.port).collect();
        assert_eq!(ports, vec![100, 101, 102, 103]);
    }

    #[test]
    fn bad_joins_are_rejected_and_change_nothing() {
        let mut r = Roster::new(3, ep(100));
        assert_eq!(
            r.join(1, 4, ep(1)),
            Err(Reject::WrongSize {
                rank: 1,
                size: 4,
                expected: 3
            })
        );
        assert_eq!(
            r.join(0, 3, ep(1)),
            Err(Reject::BadRank { rank: 0, size: 3 })
        );
        assert_eq!(
            r.join(3, 3, ep(1)),
            Err(Reject::BadRank { rank: 3, size: 3 })
        );
        r.join(2, 3, ep(102)).unwrap();
        assert_eq!(r.join(2, 3, ep(9)), Err(Reject::Duplicate { rank: 2 }));
        assert_eq!(r.missing(), vec![1]);
    }

    #[test]
    fn arrivals_track_joined_announcements() {
        let mut a = Arrivals::new(1, 3);
        assert_eq!(a.missing(), vec![0, 2]);
        assert!(!a.joined(7));
        assert!(a.joined(2) && a.joined(0));
        assert!(a.complete());
    }
}
