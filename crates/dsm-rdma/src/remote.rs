//! A peer's exposed region as announced in `Alloc::RegionKey`, checked before any READ or
//! WRITE is posted against it.

use dsm_wire::{Limits, NodeId, PAGE_SIZE};

use crate::raw::RemoteAccess;
use crate::{Error, Result};

/// A validated remote region: page-aligned, whole pages, no overflow, within the largest
/// region the wire allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteRegion {
    addr: u64,
    pages: u32,
    rkey: u32,
}

impl RemoteRegion {
    /// Checks a peer's announcement. `len == 0` is not a region (it withdraws one).
    pub fn new(
        peer: NodeId,
        region: u32,
        addr: u64,
        len: u64,
        rkey: u32,
        limits: &Limits,
    ) -> Result<Self> {
        let bad = |reason| Error::BadRegionKey {
            peer,
            region,
            reason,
        };
        let page = PAGE_SIZE as u64;
        if len == 0 {
            return Err(bad("zero length"));
        }
        if addr == 0 || !addr.is_multiple_of(page) {
            return Err(bad("address is null or not page-aligned"));
        }
        if !len.is_multiple_of(page) {
            return Err(bad("length is not whole pages"));
        }
        if addr.checked_add(len).is_none() {
            return Err(bad("address + length overflows"));
        }
        let pages = u32::try_from(len / page)
            .ok()
            .filter(|&pages| pages <= limits.max_pages_per_region)
            .ok_or_else(|| bad("longer than the largest region"))?;
        Ok(RemoteRegion { addr, pages, rkey })
    }

    /// Pages in the region.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Where page `index` is, or `None` past the end (nothing is posted then).
    pub fn page(&self, index: u32) -> Option<RemoteAccess> {
        (index < self.pages).then(|| RemoteAccess {
            addr: self.addr + u64::from(index) * PAGE_SIZE as u64,
            rkey: self.rkey,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(addr: u64, len: u64) -> Result<RemoteRegion> {
        RemoteRegion::new(1, 7, addr, len, 0x1234, &Limits::new(9))
    }

    #[test]
    fn pages_inside_are_addressed_and_outside_refused() {
        let region = check(0x10000, 3 * 4096).unwrap();
        assert_eq!(region.pages(), 3);
        assert_eq!(
            region.page(2),
            Some(RemoteAccess {
                addr: 0x10000 + 2 * 4096,
                rkey: 0x1234
            })
        );
        assert_eq!(region.page(3), None);
        assert_eq!(region.page(u32::MAX), None);
    }

    #[test]
    fn bad_announcements_are_refused() {
        for (addr, len) in [
            (0x10000, 0),
            (0, 4096),
            (0x10001, 4096),
            (0x10000, 4095),
            (u64::MAX - 4095, 8192),
            (0x10000, (1 << 24) * 4096 + 4096),
        ] {
            assert!(
                matches!(check(addr, len), Err(Error::BadRegionKey { .. })),
                "addr {addr:#x} len {len:#x} accepted"
            );
        }
    }
}
