//! Collective allocation: the size limit every node checks before it sends anything, rank
//! 0's side (sans-IO: every node sends `Malloc` for the same call; when all have, rank 0
//! assigns the region id and the address it sits at everywhere), and the notices by which a
//! node that could not set up an agreed region fails it on every node.
//!
//! Limits, smallest first:
//! - page indices: the wire refuses a page index from `Limits::max_pages_per_region` on
//!   (2^24: a region of 64 GiB at most), on TCP frames and RDMA region keys alike;
//! - the address window `REGION_BASE..REGION_END` (19 TiB) holds every region ever
//!   allocated plus a guard each (addresses are not reused after `free`): one region fits
//!   whole, and rank 0 refuses a region once the window is used up.
//!
//! The home copies of a region are reserved lazily on every node (`raw::HomeCopies`), so
//! the size limit is not a memory limit: a node commits memory only for the pages it
//! writes and caches.

use std::collections::BTreeMap;

use dsm_wire::{Alloc, Limits, NodeId, PAGE_SIZE, PageId, RegionSpec};

use crate::{Error, Result};

/// Where shared regions start in every node's address space: high enough to stay clear of
/// the heap, libraries and stacks of ordinary processes on x86-64 (47-bit user space).
pub(crate) const REGION_BASE: u64 = 0x5d00_0000_0000;
/// End (exclusive) of the window regions are placed in. The kernel places ordinary
/// mappings (libraries, thread stacks, home copies) top-down from below the stack at
/// 0x7fff_xxxx_xxxx, less up to 1 TiB of randomisation (`vm.mmap_rnd_bits` = 28; the
/// maximum, 32, is 16 TiB): stopping here leaves them 14 TiB or more.
pub(crate) const REGION_END: u64 = 0x7000_0000_0000;
/// Unmapped gap left after each region, so an overrun faults instead of hitting the next.
const GUARD: u64 = 1 << 30;
/// Most allocation rounds open at once.
const MAX_OPEN: usize = 64;
/// `NMalloc::base_addr` of a refused round: no region is ever placed at address 0.
const REFUSED: u64 = 0;

/// The largest region in pages, and what sets it.
pub(crate) fn max_region_pages() -> (u32, &'static str) {
    // The decoder's defaults are what every node's transports enforce (`Limits::new`); the
    // cluster id does not change the bounds.
    let wire = Limits::new(0).max_pages_per_region;
    let window = (REGION_END - REGION_BASE - GUARD) / PAGE_SIZE as u64;
    match u32::try_from(window) {
        Ok(window) if window < wire => (window, "the address window regions are placed in"),
        _ => (wire, "page indices the wire carries (dsm_wire::Limits)"),
    }
}

/// Pages of a region of `len` elements of `element_bytes` bytes, or
/// [`Error::RegionTooLarge`] beyond [`max_region_pages`]. Depends only on the call's
/// arguments, so every node of a collective `alloc` decides alike, before sending anything.
pub(crate) fn region_pages(name: &str, len: usize, element_bytes: usize) -> Result<u32> {
    let bytes = len as u128 * element_bytes as u128;
    let (max_pages, limit) = max_region_pages();
    let max_bytes = u64::from(max_pages) * PAGE_SIZE as u64;
    if bytes > u128::from(max_bytes) {
        return Err(Error::RegionTooLarge {
            name: name.to_owned(),
            bytes,
            max_bytes,
            limit,
        });
    }
    // At most 2^24 pages (checked above): the quotient fits.
    Ok(u32::try_from(bytes.div_ceil(PAGE_SIZE as u128)).expect("checked against max_pages"))
}

/// The agreed place of a region, or [`Error::AddressSpaceExhausted`] if rank 0 refused it.
pub(crate) fn placed(spec: &RegionSpec, base_addr: u64) -> Result<u64> {
    if base_addr == REFUSED {
        return Err(Error::AddressSpaceExhausted {
            name: spec.name.clone(),
            bytes: u64::from(spec.pages) * PAGE_SIZE as u64,
            window_bytes: REGION_END - REGION_BASE,
        });
    }
    Ok(base_addr)
}

/// What a node could not do for a region rank 0 placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetupStep {
    /// Map the region at its agreed address (mmap, userfaultfd registration).
    Map = 0,
    /// Map its home copies and add it to the coherence engine.
    Home = 1,
    /// Expose the home copies to the transport (RDMA registration, peers' keys).
    Expose = 2,
    /// Start serving its faults.
    Serve = 3,
}

const STEPS: [SetupStep; 4] = [
    SetupStep::Map,
    SetupStep::Home,
    SetupStep::Expose,
    SetupStep::Serve,
];

/// Region ids of failure notices count down from here (real ids count up from 1).
const FAILED_REGION: u32 = u32::MAX;

impl SetupStep {
    fn describe(self) -> &'static str {
        match self {
            SetupStep::Map => "could not map the region at its agreed address",
            SetupStep::Home => "could not map the region's home copies",
            SetupStep::Expose => "could not expose the home copies to the transport",
            SetupStep::Serve => "could not start serving the region's faults",
        }
    }

    /// The notice by which `rank` fails this step: every node reads it from the rendezvous
    /// that ends an `alloc` (a barrier, whose notices rank 0 collects from everyone and
    /// hands to everyone). A page index below the wire's limit, so it travels as any other.
    pub(crate) fn notice(self, rank: NodeId) -> PageId {
        PageId {
            region: FAILED_REGION - self as u32,
            page: rank,
        }
    }
}

/// The failures named by the notices of an `alloc`'s rendezvous, as
/// [`Error::AllocFailed`], or `None` when every node set the region up.
pub(crate) fn failures(name: &str, notices: &[PageId]) -> Option<Error> {
    let mut failed: Vec<(NodeId, SetupStep)> = notices
        .iter()
        .filter_map(|notice| {
            let step = STEPS
                .iter()
                .find(|step| step.notice(notice.page) == *notice)?;
            Some((notice.page, *step))
        })
        .collect();
    if failed.is_empty() {
        return None;
    }
    failed.sort_by_key(|(rank, step)| (*rank, *step as u32));
    let what = failed
        .iter()
        .map(|(rank, step)| format!("rank {rank} {}", step.describe()))
        .collect::<Vec<_>>()
        .join("; ");
    let mut ranks: Vec<NodeId> = failed.iter().map(|(rank, _)| *rank).collect();
    ranks.dedup();
    Some(Error::AllocFailed {
        name: name.to_owned(),
        ranks,
        what,
    })
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Allocator {
    next_base: u64,
    open: BTreeMap<u64, (Vec<bool>, RegionSpec)>,
}

impl Default for Allocator {
    fn default() -> Self {
        Allocator {
            next_base: REGION_BASE,
            open: BTreeMap::new(),
        }
    }
}

impl Allocator {
    /// Records `from`'s `Malloc` for round `req`; returns the `NMalloc` to broadcast once
    /// every live node asked. The first request's spec wins; each node checks the answer
    /// against its own.
    pub(crate) fn request(
        &mut self,
        req: u64,
        from: NodeId,
        spec: RegionSpec,
        gone: &[bool],
    ) -> Option<Alloc> {
        if from as usize >= gone.len()
            || (!self.open.contains_key(&req) && self.open.len() >= MAX_OPEN)
        {
            return None;
        }
        let (seen, _) = self
            .open
            .entry(req)
            .or_insert_with(|| (vec![false; gone.len()], spec));
        seen[from as usize] = true;
        if !seen.iter().zip(gone).all(|(s, g)| *s || *g) {
            return None;
        }
        let (_, spec) = self.open.remove(&req)?;
        let len = u64::from(spec.pages) * PAGE_SIZE as u64;
        // Guard included; bounded: `pages` is a u32, `next_base` stays below REGION_END.
        let span = len.div_ceil(GUARD) * GUARD + GUARD;
        let base_addr = if self.next_base + span <= REGION_END {
            self.next_base += span;
            self.next_base - span
        } else {
            REFUSED
        };
        Some(Alloc::NMalloc {
            req,
            region: u32::try_from(req).unwrap_or(u32::MAX),
            base_addr,
            spec,
        })
    }
}

/// Most runs a region maps from master copies (a mapping and an alias each); past it the
/// region keeps private pages (a cyclic placement would make a mapping per page).
const MAX_MASTER_RUNS: usize = 64;

/// The runs of a sequential region of `layout` at `base` that this node maps from their
/// homes' master copies instead of private memory: the pages of every node whose arena it
/// holds, its own included (`ConfigBuilder::map_masters`). Empty without same-host nodes.
pub(crate) fn master_runs<'a>(
    wire: &'a crate::transport::Wire,
    layout: &dsm_core::RegionLayout,
    base: u64,
    nodes: u32,
) -> std::io::Result<Vec<dsm_uffd::FileRun<'a>>> {
    use crate::raw::masters::Arena;
    if layout.consistency != dsm_core::Consistency::Sequential {
        return Ok(Vec::new());
    }
    let mut runs = Vec::new();
    for node in 0..nodes {
        let Some(fd) = wire.masters_fd(node) else {
            continue;
        };
        for (first, count) in layout.homed_runs(node, nodes) {
            let offset = Arena::offset_of(base)? + u64::from(first) * PAGE_SIZE as u64;
            // The home populates its master copies of a run this size (`HomeCopies::populate`).
            let populate = count as usize * PAGE_SIZE <= crate::raw::masters::POPULATE_LIMIT;
            runs.push(dsm_uffd::FileRun {
                first,
                count,
                fd,
                offset,
                populate,
            });
            if runs.len() > MAX_MASTER_RUNS {
                return Ok(Vec::new());
            }
        }
    }
    runs.sort_by_key(|run| run.first);
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pages: u32) -> RegionSpec {
        RegionSpec {
            name: "a".into(),
            pages,
            consistency: 0,
            placement: 1,
        }
    }

    #[test]
    fn answers_once_everyone_asked_with_disjoint_addresses() {
        let mut a = Allocator::default();
        let gone = [false, false];
        assert!(a.request(1, 1, spec(3), &gone).is_none());
        let Some(Alloc::NMalloc {
            region, base_addr, ..
        }) = a.request(1, 0, spec(3), &gone)
        else {
            panic!("no answer");
        };
        assert_eq!((region, base_addr), (1, REGION_BASE));
        a.request(2, 0, spec(1), &gone);
        let Some(Alloc::NMalloc {
            base_addr: second, ..
        }) = a.request(2, 1, spec(1), &gone)
        else {
            panic!("no answer");
        };
        assert!(second >= REGION_BASE + 3 * PAGE_SIZE as u64 + GUARD);
    }

    #[test]
    fn the_size_limit_is_the_wire_page_limit_and_overflow_is_refused_too() {
        let (max, limit) = max_region_pages();
        assert_eq!(max, 1 << 24, "64 GiB");
        assert!(limit.contains("wire"), "{limit}");
        assert_eq!(region_pages("a", 1 << 36, 1).unwrap(), 1 << 24);
        assert_eq!(region_pages("a", 1, 1).unwrap(), 1);
        for (len, size) in [((1 << 36) + 1, 1), (1 << 40, 1), (usize::MAX, 8)] {
            let Err(Error::RegionTooLarge {
                bytes, max_bytes, ..
            }) = region_pages("a", len, size)
            else {
                panic!("{len} x {size} bytes accepted");
            };
            assert_eq!(bytes, len as u128 * size as u128);
            assert_eq!(max_bytes, 1 << 36);
        }
    }

    #[test]
    fn rank_0_refuses_once_the_window_is_used_up_and_stays_consistent() {
        let mut a = Allocator::default();
        let gone = [false];
        let biggest = spec(max_region_pages().0);
        let mut placed_ok = 0u64;
        for req in 1..=1_000u64 {
            let Some(Alloc::NMalloc { base_addr, .. }) = a.request(req, 0, biggest.clone(), &gone)
            else {
                panic!("no answer");
            };
            match placed(&biggest, base_addr) {
                Ok(base) => {
                    assert!(base + (1 << 36) + GUARD <= REGION_END);
                    placed_ok += 1;
                }
                Err(Error::AddressSpaceExhausted { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(placed_ok, (REGION_END - REGION_BASE) / ((1 << 36) + GUARD));
        // A small region may still fit after a large one was refused.
        let Some(Alloc::NMalloc { base_addr, .. }) = a.request(1_001, 0, spec(1), &gone) else {
            panic!("no answer");
        };
        assert!(placed(&spec(1), base_addr).is_ok());
    }

    #[test]
    fn failure_notices_name_each_rank_and_step_and_nothing_else() {
        let real = PageId { region: 3, page: 1 };
        assert!(failures("a", &[real]).is_none());
        let notices = [
            SetupStep::Expose.notice(2),
            real,
            SetupStep::Map.notice(1),
            SetupStep::Home.notice(2),
        ];
        let Some(Error::AllocFailed { ranks, what, .. }) = failures("a", &notices) else {
            panic!("no failure");
        };
        assert_eq!(ranks, vec![1, 2]);
        assert!(
            what.starts_with("rank 1 could not map the region"),
            "{what}"
        );
        assert!(what.contains("rank 2 could not expose"), "{what}");
    }
}
