//! Write notices remembered per lock, so that each acquirer hears exactly the pages released
//! since it last heard from us.
//!
//! Every release bumps a version and stamps the pages it wrote with it; each peer has a cursor
//! (the version it was last told up to). A page is kept once, with its latest stamp, and
//! dropped when every cursor has passed it, so the log is bounded by the distinct pages
//! written under the lock.

use std::collections::BTreeMap;

use dsm_wire::{NodeId, PageId};

/// Pages released under one lock, with per-node cursors.
#[derive(Debug, Clone)]
pub(crate) struct NoticeLog {
    version: u64,
    pages: BTreeMap<PageId, u64>,
    /// `told[n]`: the version node `n` has been told up to.
    told: Vec<u64>,
}

impl NoticeLog {
    pub(crate) fn new(nodes: u32) -> Self {
        NoticeLog {
            version: 0,
            pages: BTreeMap::new(),
            told: vec![0; nodes as usize],
        }
    }

    /// Records a release by `by` of the pages it wrote; `by` needs no notice of its own
    /// writes, and has been told everything before them (it held the lock).
    pub(crate) fn record(&mut self, by: NodeId, notices: &[PageId]) {
        if notices.is_empty() {
            return;
        }
        self.version += 1;
        for page in notices {
            self.pages.insert(*page, self.version);
        }
        if let Some(told) = self.told.get_mut(by as usize) {
            *told = self.version;
        }
        self.prune();
    }

    /// Pages `to` has not been told of; marks them told.
    pub(crate) fn take_for(&mut self, to: NodeId) -> Vec<PageId> {
        let Some(told) = self.told.get_mut(to as usize) else {
            return Vec::new();
        };
        let since = *told;
        *told = self.version;
        let pages = self
            .pages
            .iter()
            .filter(|(_, stamp)| **stamp > since)
            .map(|(page, _)| *page)
            .collect();
        self.prune();
        pages
    }

    /// Number of pages remembered (for tests and bounds).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pages.len()
    }

    fn prune(&mut self) {
        let oldest = self.told.iter().copied().min().unwrap_or(self.version);
        self.pages.retain(|_, stamp| *stamp > oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(page: u32) -> PageId {
        PageId { region: 0, page }
    }

    #[test]
    fn each_peer_hears_each_page_once_and_not_its_own() {
        let mut log = NoticeLog::new(3);
        log.record(0, &[pid(1), pid(2)]);
        assert_eq!(log.take_for(1), vec![pid(1), pid(2)]);
        assert_eq!(log.take_for(1), vec![]);
        assert_eq!(
            log.take_for(0),
            vec![],
            "the writer needs no notice of its own pages"
        );
        log.record(1, &[pid(2), pid(3)]);
        assert_eq!(log.take_for(2), vec![pid(1), pid(2), pid(3)]);
        assert_eq!(log.take_for(0), vec![pid(2), pid(3)]);
    }

    #[test]
    fn pages_everyone_heard_are_dropped() {
        let mut log = NoticeLog::new(2);
        log.record(0, &[pid(1)]);
        assert_eq!(log.len(), 1);
        log.take_for(1);
        assert_eq!(log.len(), 0);
    }

    #[test]
    fn unknown_node_gets_nothing_and_changes_nothing() {
        let mut log = NoticeLog::new(2);
        log.record(0, &[pid(1)]);
        assert_eq!(log.take_for(9), vec![]);
        assert_eq!(log.take_for(1), vec![pid(1)]);
    }
}
