//! Rank 0's side of collective allocation (sans-IO): every node sends `Malloc` for the same
//! call; when all have, rank 0 assigns the region id and the address it sits at everywhere.

use std::collections::BTreeMap;

use dsm_wire::{Alloc, NodeId, PAGE_SIZE, RegionSpec};

/// Where shared regions start in every node's address space: high enough to stay clear of
/// the heap, libraries and stacks of ordinary processes on x86-64 (47-bit user space).
pub(crate) const REGION_BASE: u64 = 0x5d00_0000_0000;
/// Unmapped gap left after each region, so an overrun faults instead of hitting the next.
const GUARD: u64 = 1 << 30;
/// Most allocation rounds open at once.
const MAX_OPEN: usize = 64;

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
        let base_addr = self.next_base;
        let len = u64::from(spec.pages) * PAGE_SIZE as u64;
        self.next_base += len.div_ceil(GUARD) * GUARD + GUARD;
        Some(Alloc::NMalloc {
            req,
            region: u32::try_from(req).unwrap_or(u32::MAX),
            base_addr,
            spec,
        })
    }
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
}
