//! Which pages each lock's critical sections made writable here: the pages a release passes
//! on to the lock's next holder (`CoherenceEngine::hand_back_written`).
//!
//! Kept per lock: a node that takes several locks (one per bucket of a table, say) must pass
//! on only the pages written under the lock that moves, not those of its other locks.

use dsm_wire::PageId;

use crate::collections::HashMap;

/// Most pages one lock's log keeps: a lock protects a few pages, and a section that writes
/// more passes on only its first ones.
const PAGES_PER_LOCK: usize = 32;

/// Most locks logged at once; a node using more logs only the first ones until a barrier.
const LOCKS: usize = 256;

#[derive(Debug, Default)]
pub(crate) struct LockLog {
    /// Locks this node holds now (acquired, not released).
    held: Vec<u32>,
    /// Per lock: pages made writable here while it was held, or pushed here for it.
    pages: HashMap<u32, Vec<PageId>>,
    /// Pages pushed here while no lock was held: they came ahead of a lock's grant, and go
    /// to the log of the next lock acquired.
    unclaimed: Vec<PageId>,
}

impl LockLog {
    /// `page` became writable here: logged under every lock held.
    pub(crate) fn written(&mut self, page: PageId) {
        for i in 0..self.held.len() {
            let lock = self.held[i];
            self.add(lock, page);
        }
    }

    /// `page` was pushed here: logged under the locks held, or kept for the next one.
    pub(crate) fn pushed(&mut self, page: PageId) {
        if !self.held.is_empty() {
            self.written(page);
        } else if self.unclaimed.len() < PAGES_PER_LOCK && !self.unclaimed.contains(&page) {
            self.unclaimed.push(page);
        }
    }

    pub(crate) fn acquired(&mut self, lock: u32) {
        if !self.held.contains(&lock) {
            self.held.push(lock);
        }
        for page in std::mem::take(&mut self.unclaimed) {
            self.add(lock, page);
        }
    }

    /// The lock was released: its log stays, to pass on when the lock moves.
    pub(crate) fn released(&mut self, lock: u32) {
        self.held.retain(|held| *held != lock);
    }

    /// The pages to pass on with `lock` (the log starts again).
    pub(crate) fn take(&mut self, lock: u32) -> Vec<PageId> {
        self.pages.remove(&lock).unwrap_or_default()
    }

    /// Forgets every log (a barrier).
    pub(crate) fn clear(&mut self) {
        self.pages.clear();
        self.unclaimed.clear();
    }

    /// Forgets the pages of a freed region.
    pub(crate) fn remove_region(&mut self, region: u32) {
        for pages in self.pages.values_mut() {
            pages.retain(|page| page.region != region);
        }
        self.unclaimed.retain(|page| page.region != region);
    }

    fn add(&mut self, lock: u32, page: PageId) {
        if !self.pages.contains_key(&lock) && self.pages.len() >= LOCKS {
            return;
        }
        let pages = self.pages.entry(lock).or_default();
        if pages.len() < PAGES_PER_LOCK && !pages.contains(&page) {
            pages.push(page);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LockLog;
    use dsm_wire::PageId;

    fn page(page: u32) -> PageId {
        PageId { region: 0, page }
    }

    #[test]
    fn each_lock_passes_on_only_what_was_written_under_it() {
        let mut log = LockLog::default();
        log.written(page(9)); // No lock held: not logged.
        log.acquired(1);
        log.written(page(1));
        log.released(1);
        log.acquired(2);
        log.written(page(2));
        log.written(page(2));
        log.released(2);
        log.written(page(3));
        assert_eq!(log.take(2), vec![page(2)]);
        assert_eq!(log.take(1), vec![page(1)]);
        assert!(log.take(1).is_empty(), "a log is passed on once");
    }

    #[test]
    fn a_page_pushed_ahead_of_a_grant_joins_the_next_lock_acquired() {
        let mut log = LockLog::default();
        log.pushed(page(4));
        log.acquired(7);
        log.released(7);
        assert_eq!(log.take(7), vec![page(4)]);
        log.acquired(8);
        log.pushed(page(5)); // Held: logged at once.
        log.clear();
        assert!(log.take(8).is_empty(), "a barrier forgets the logs");
    }
}
