//! How an engine and its regions are set up.

use dsm_wire::NodeId;

/// Consistency model of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// MSI: single writer or multiple readers, invalidation before every write grant.
    Sequential,
    /// Home-based lazy release consistency: multiple writers, twins and diffs at release,
    /// invalidation by write notices at acquire.
    Release,
}

/// Which node is the home of each page of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Page `i` lives on node `i % nodes`.
    Cyclic,
    /// Pages are cut into `nodes` consecutive blocks of `ceil(pages / nodes)` pages.
    Block,
}

/// A shared region as the engine sees it (same on every node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionLayout {
    /// Region id (from MALLOC).
    pub id: u32,
    /// Length in pages.
    pub pages: u32,
    /// Consistency model.
    pub consistency: Consistency,
    /// Home placement.
    pub placement: Placement,
    /// Prefetch: a read fault on a page homed elsewhere may fetch up to this many pages (the
    /// faulting one included) from the same home in one go, and in sequential mode a write
    /// fault that upgrades a read-only copy may ask write access to as many; 1 (or 0) turns
    /// both off. See [`CoherenceEngine::fault`](crate::CoherenceEngine::fault) for which pages.
    pub prefetch: u32,
}

impl RegionLayout {
    /// Home of page `index` in a cluster of `nodes` nodes (`index < pages`, `nodes > 0`).
    pub fn home_of(&self, index: u32, nodes: u32) -> NodeId {
        match self.placement {
            Placement::Cyclic => index % nodes,
            Placement::Block => index / self.pages.div_ceil(nodes).max(1),
        }
    }

    /// The pages `node` homes, as runs (first page, count): one run under
    /// [`Placement::Block`], every `nodes`-th page under [`Placement::Cyclic`].
    /// Computed, not searched: a region of 2^24 pages yields its runs at once.
    pub fn homed_runs(&self, node: NodeId, nodes: u32) -> Box<dyn Iterator<Item = (u32, u32)>> {
        let pages = self.pages;
        match self.placement {
            Placement::Block => {
                let chunk = pages.div_ceil(nodes.max(1)).max(1);
                let first = node.saturating_mul(chunk).min(pages);
                let end = first.saturating_add(chunk).min(pages);
                Box::new((first < end).then_some((first, end - first)).into_iter())
            }
            Placement::Cyclic => {
                let start = if node < nodes.max(1) { node } else { pages };
                let step = nodes.max(1) as usize;
                Box::new((start..pages).step_by(step).map(|page| (page, 1)))
            }
        }
    }
}

/// A deliberately broken protocol variant, to prove the simulator's checker catches it.
#[cfg(feature = "mutation")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mutation {
    /// The correct protocol.
    #[default]
    None,
    /// Sequential mode: the home grants a write before every invalidation is acknowledged.
    GrantBeforeAcks,
    /// Release mode: a release reports no write notices.
    ForgetNotices,
    /// Release mode: a home page published in place keeps its old twin, so later diffs
    /// resend bytes it wrote long ago (and clobber newer writes of other nodes).
    StaleTwin,
    /// Release mode with scanned writes: the scan at a release misses one written page.
    ScanMissesPage,
    /// Release mode: a same-host writer merges its whole copy into its home's master, not
    /// just the bytes it changed, clobbering other writers' bytes of the page.
    MergeWholePage,
    /// Sequential mode: a home told of a failed node keeps waiting for the invalidation acks
    /// that node owed (for pages it held read-only), so the writes waiting on them hang.
    ForgetFailedAcks,
    /// Sequential mode: a home told of a failed node serves the stale master copy of the pages
    /// that node held writable, instead of refusing them as lost.
    ServeLostPages,
    /// Sequential mode: a home that takes a page handed back (`Coherence::HandBack`) forgets
    /// its holder but keeps its stale master copy.
    HandBackLosesData,
    /// Sequential mode: a node that drops its read-only copies at a barrier
    /// (`Coherence::Dropped`) tells their homes but keeps its copies, which the next writer
    /// then leaves stale.
    DropKeepsCopy,
    /// Sequential mode: a writer giving its copy to a home whose master it writes in place
    /// takes its copy for the master even where it is a private copy (the shortcut of
    /// mapped masters, `Memory::local_is_master`, applied everywhere), so the master is
    /// left stale.
    CopyTakenForMaster,
    /// Sequential mode: a write request for a page its home writes while same-host readers
    /// map its master leaves those readers out of the invalidations, so they keep reading the
    /// master while the new writer writes a copy elsewhere.
    MappedReadersKept,
}

/// One engine's configuration.
#[derive(Debug, Clone)]
pub struct CoherenceConfig {
    /// This node's rank.
    pub node: NodeId,
    /// Cluster size; ranks are `0..nodes`.
    pub nodes: u32,
    /// Grants carry no data to remote requesters, who read the home copy with
    /// [`Action::ReadPage`](crate::Action::ReadPage) (RDMA). `false`: grants carry the page (TCP).
    pub one_sided: bool,
    /// Besides [`one_sided`](Self::one_sided): peers known to read this node's master copies
    /// themselves (a same-host peer that maps them). Grants to them carry no data.
    pub readers_of_home: Vec<NodeId>,
    /// Besides [`one_sided`](Self::one_sided): peers whose master copies this node reads
    /// (and writes back to, or merges its diffs into, in place) itself, so a grant of theirs
    /// without data is read with
    /// [`Action::ReadPage`](crate::Action::ReadPage). A superset of the peers that count this
    /// node among their [`readers_of_home`](Self::readers_of_home) (the two sides of a pair
    /// may learn of the mapping at different times; a grant with data is always taken).
    pub homes_read: Vec<NodeId>,
    /// A fault, home transaction or sync waiting longer than this many ticks makes
    /// [`CoherenceEngine::tick`](crate::CoherenceEngine::tick) report [`Error::Timeout`](crate::Error::Timeout).
    /// 0 disables the check.
    pub timeout_ticks: u64,
    /// Release regions find written pages by scanning ([`Memory::take_written`](crate::Memory::take_written):
    /// asynchronous write-protect and `PAGEMAP_SCAN` in the runtime) instead of taking a write
    /// fault per page per interval. Installed copies are then always writable as far as the
    /// engine knows; only pages another node fetched are tracked (twinned, scanned, announced):
    /// a home page no other node ever held is written freely, with no twin and no notice.
    pub scan_writes: bool,
    /// With [`scan_writes`](Self::scan_writes): most tracked copies (each holds a 4 KiB twin)
    /// kept past a release; the oldest installed beyond it are published and dropped at the
    /// release. 0: no limit.
    pub twin_limit: usize,
    /// Broken variant for mutation testing (feature `mutation`).
    #[cfg(feature = "mutation")]
    pub mutation: Mutation,
}

impl CoherenceConfig {
    /// Node `node` of `nodes`, two-sided page transfer, no timeout.
    pub fn new(node: NodeId, nodes: u32) -> Self {
        CoherenceConfig {
            node,
            nodes,
            one_sided: false,
            readers_of_home: Vec::new(),
            homes_read: Vec::new(),
            timeout_ticks: 0,
            scan_writes: false,
            twin_limit: 0,
            #[cfg(feature = "mutation")]
            mutation: Mutation::None,
        }
    }

    /// Whether grants to `peer` go without data (it reads the master copy itself).
    pub(crate) fn grants_without_data(&self, peer: NodeId) -> bool {
        peer != self.node && (self.one_sided || self.readers_of_home.contains(&peer))
    }

    /// Whether this node gives pages back to `home` by writing its master copy in place
    /// (sequential mode: answering a recall with `MasterWritten`; release mode: merging its
    /// diffs, `Action::MergeMaster`): a same-host home, whose master copies it maps
    /// read-write ([`homes_read`](Self::homes_read); RDMA reads only).
    pub(crate) fn writes_master_of(&self, home: NodeId) -> bool {
        home != self.node && self.homes_read.contains(&home)
    }

    /// Whether a grant from `home` may come without data (this node reads its master copy).
    pub(crate) fn reads_master_of(&self, home: NodeId) -> bool {
        home != self.node && (self.one_sided || self.homes_read.contains(&home))
    }

    pub(crate) fn mutated(&self, _which: MutationPoint) -> bool {
        #[cfg(feature = "mutation")]
        {
            matches!(
                (self.mutation, _which),
                (Mutation::GrantBeforeAcks, MutationPoint::GrantBeforeAcks)
                    | (Mutation::ForgetNotices, MutationPoint::ForgetNotices)
                    | (Mutation::StaleTwin, MutationPoint::StaleTwin)
                    | (Mutation::ScanMissesPage, MutationPoint::ScanMissesPage)
                    | (Mutation::MergeWholePage, MutationPoint::MergeWholePage)
                    | (Mutation::ForgetFailedAcks, MutationPoint::ForgetFailedAcks)
                    | (Mutation::ServeLostPages, MutationPoint::ServeLostPages)
                    | (
                        Mutation::HandBackLosesData,
                        MutationPoint::HandBackLosesData
                    )
                    | (Mutation::DropKeepsCopy, MutationPoint::DropKeepsCopy)
                    | (
                        Mutation::CopyTakenForMaster,
                        MutationPoint::CopyTakenForMaster
                    )
                    | (
                        Mutation::MappedReadersKept,
                        MutationPoint::MappedReadersKept
                    )
            )
        }
        #[cfg(not(feature = "mutation"))]
        false
    }
}

/// Where a mutation may change behaviour (compiled to `false` without the feature).
#[derive(Debug, Clone, Copy)]
pub(crate) enum MutationPoint {
    GrantBeforeAcks,
    ForgetNotices,
    StaleTwin,
    ScanMissesPage,
    MergeWholePage,
    ForgetFailedAcks,
    ServeLostPages,
    HandBackLosesData,
    DropKeepsCopy,
    CopyTakenForMaster,
    MappedReadersKept,
}

#[cfg(test)]
mod tests {
    use super::{Consistency, Placement, RegionLayout};

    fn layout(pages: u32, placement: Placement) -> RegionLayout {
        RegionLayout {
            id: 0,
            pages,
            consistency: Consistency::Sequential,
            placement,
            prefetch: 1,
        }
    }

    #[test]
    fn placements_spread_pages_over_all_nodes() {
        let cyclic = layout(10, Placement::Cyclic);
        assert_eq!(
            (0..6).map(|p| cyclic.home_of(p, 3)).collect::<Vec<_>>(),
            [0, 1, 2, 0, 1, 2]
        );
        let block = layout(10, Placement::Block);
        assert_eq!(
            (0..10).map(|p| block.home_of(p, 3)).collect::<Vec<_>>(),
            [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
        );
        assert!((0..2).all(|p| layout(2, Placement::Block).home_of(p, 4) < 4));
    }
}

#[cfg(test)]
mod homed_runs_tests {
    use super::*;

    #[test]
    fn homed_runs_cover_exactly_the_pages_home_of_gives_each_node() {
        for placement in [Placement::Block, Placement::Cyclic] {
            for (pages, nodes) in [(10, 3), (1, 4), (7, 7), (16, 4), (5, 8)] {
                let layout = RegionLayout {
                    id: 0,
                    pages,
                    consistency: Consistency::Sequential,
                    placement,
                    prefetch: 1,
                };
                for node in 0..nodes {
                    let from_runs: Vec<u32> = layout
                        .homed_runs(node, nodes)
                        .flat_map(|(first, count)| first..first + count)
                        .collect();
                    let homed: Vec<u32> = (0..pages)
                        .filter(|&p| layout.home_of(p, nodes) == node)
                        .collect();
                    assert_eq!(
                        from_runs, homed,
                        "{placement:?}, {pages} pages, node {node}"
                    );
                }
            }
        }
    }
}
