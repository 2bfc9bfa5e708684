//! The table of regions and the page lookup every message goes through first.

use dsm_wire::{NodeId, PageId};

use crate::collections::HashMap;
use crate::config::{Consistency, RegionLayout};
use crate::error::{Error, Result};

/// Where a page lives and how it is kept coherent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Located {
    pub(crate) home: NodeId,
    pub(crate) consistency: Consistency,
    /// The region's read prefetch (pages per read fault) and length in pages.
    pub(crate) prefetch: u32,
    pub(crate) pages: u32,
}

/// Known regions.
#[derive(Debug, Default)]
pub(crate) struct Regions {
    map: HashMap<u32, RegionLayout>,
}

impl Regions {
    pub(crate) fn add(&mut self, layout: RegionLayout) -> Result<()> {
        if self.map.contains_key(&layout.id) {
            return Err(Error::RegionExists(layout.id));
        }
        self.map.insert(layout.id, layout);
        Ok(())
    }

    pub(crate) fn remove(&mut self, id: u32) -> Option<RegionLayout> {
        self.map.remove(&id)
    }

    /// Home and mode of `page`, or the typed error for an unknown region or index.
    pub(crate) fn locate(&self, page: PageId, nodes: u32) -> Result<Located> {
        let layout = self
            .map
            .get(&page.region)
            .ok_or(Error::UnknownRegion { page })?;
        if page.page >= layout.pages {
            return Err(Error::PageOutOfRange {
                page,
                pages: layout.pages,
            });
        }
        Ok(Located {
            home: layout.home_of(page.page, nodes),
            consistency: layout.consistency,
            prefetch: layout.prefetch,
            pages: layout.pages,
        })
    }
}
