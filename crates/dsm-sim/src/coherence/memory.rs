//! A simulated node's memory: its copies (with the protection the driver would set), twins,
//! and the master copies of the pages it is home of. Backs [`dsm_core::Memory`] with `Vec`s.

use dsm_core::Memory;
use dsm_wire::{PAGE_SIZE, Page, PageId};

/// What the application may do with a local copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// Not mapped: any access faults.
    None,
    /// Write-protected.
    Read,
    /// Writable.
    Write,
}

/// Bytes an invalidated copy is filled with, so a protocol that reads a dropped copy shows.
pub const POISON: u8 = 0xee;

/// One node's pages of the simulated region (region 0, pages `0..pages`).
#[derive(Debug)]
pub struct NodeMemory {
    pub(crate) local: Vec<Page>,
    pub(crate) perm: Vec<Perm>,
    pub(crate) twin: Vec<Option<Page>>,
    pub(crate) home: Vec<Page>,
    /// Scanned writes: a write-protected copy is still writable, and a write marks it here
    /// (the kernel's asynchronous write-protect).
    pub(crate) scan: bool,
    pub(crate) written: Vec<bool>,
    /// Pages whose local copy is their master copy ([`SimConfig::map_masters`](super::SimConfig::map_masters));
    /// the world keeps each such copy and its master the same bytes.
    pub(crate) aliased: Vec<bool>,
    /// Times the engine found a copy here to be its master (and so copied nothing).
    pub(crate) found_mapped: std::cell::Cell<u64>,
}

fn index(page: PageId) -> usize {
    assert_eq!(page.region, 0, "the simulation has one region");
    page.page as usize
}

impl NodeMemory {
    /// `pages` pages, all unmapped, master copies zeroed.
    pub fn new(pages: u32) -> Self {
        let n = pages as usize;
        NodeMemory {
            local: (0..n).map(|_| Box::new([POISON; PAGE_SIZE])).collect(),
            perm: vec![Perm::None; n],
            twin: (0..n).map(|_| None).collect(),
            home: (0..n).map(|_| Box::new([0; PAGE_SIZE])).collect(),
            scan: false,
            written: vec![false; n],
            aliased: vec![false; n],
            found_mapped: std::cell::Cell::new(0),
        }
    }

    /// As [`NodeMemory::new`], with scanned writes or not.
    pub fn with_scan(pages: u32, scan: bool) -> Self {
        NodeMemory {
            scan,
            ..NodeMemory::new(pages)
        }
    }

    /// Whether a thread may store to the local copy of `page` now (a store to a
    /// write-protected copy of a scanned region is allowed and marks it written).
    pub fn writable(&self, page: u32) -> bool {
        let perm = self.perm[page as usize];
        perm == Perm::Write || (self.scan && perm == Perm::Read)
    }

    /// The protection of a local copy.
    pub fn perm(&self, page: u32) -> Perm {
        self.perm[page as usize]
    }

    /// The word at `word` of the local copy.
    pub fn read_word(&self, page: u32, word: usize) -> u64 {
        read_word(&self.local[page as usize], word)
    }

    /// Stores `value` at `word` of the local copy.
    pub fn write_word(&mut self, page: u32, word: usize, value: u64) {
        if self.perm[page as usize] == Perm::Read {
            self.written[page as usize] = true;
        }
        let bytes = &mut self.local[page as usize][word * 8..word * 8 + 8];
        bytes.copy_from_slice(&value.to_le_bytes());
    }
}

/// The little-endian u64 at word `word` of a page.
pub fn read_word(page: &[u8; PAGE_SIZE], word: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&page[word * 8..word * 8 + 8]);
    u64::from_le_bytes(bytes)
}

impl Memory for NodeMemory {
    fn local_page(&self, page: PageId) -> &[u8; PAGE_SIZE] {
        let i = index(page);
        assert_ne!(
            self.perm[i],
            Perm::None,
            "engine read a copy that is not installed"
        );
        &self.local[i]
    }

    fn write_protect(&mut self, page: PageId) {
        let i = index(page);
        if self.perm[i] == Perm::Write {
            self.perm[i] = Perm::Read;
        }
    }

    fn twin(&self, page: PageId) -> &[u8; PAGE_SIZE] {
        self.twin[index(page)]
            .as_ref()
            .expect("engine read a twin it did not make")
    }

    fn twin_mut(&mut self, page: PageId) -> &mut [u8; PAGE_SIZE] {
        self.twin[index(page)]
            .as_mut()
            .expect("engine refreshed a twin it did not make")
    }

    fn snapshot(&self, page: PageId, into: &mut [u8; PAGE_SIZE]) {
        let i = index(page);
        if self.scan {
            assert_ne!(
                self.perm[i],
                Perm::None,
                "engine read a copy that is not installed"
            );
        } else {
            assert_eq!(
                self.perm[i],
                Perm::Write,
                "engine published in place a copy that is not writable"
            );
        }
        into.copy_from_slice(&self.local[i][..]);
    }

    fn take_written(&mut self, pages: &[PageId]) -> Vec<PageId> {
        let mut written = Vec::new();
        for page in pages {
            let i = index(*page);
            assert_ne!(
                self.perm[i],
                Perm::None,
                "engine scanned a copy that is not installed"
            );
            if self.perm[i] == Perm::Write {
                // Installed writable: unprotected, so the kernel reports it and protects it.
                self.perm[i] = Perm::Read;
                written.push(*page);
            } else if std::mem::take(&mut self.written[i]) {
                written.push(*page);
            }
        }
        written
    }

    fn take_away(&mut self, page: PageId, last: &mut [u8; PAGE_SIZE]) -> bool {
        let i = index(page);
        if self.perm[i] == Perm::None {
            return false;
        }
        last.copy_from_slice(&self.local[i][..]);
        self.perm[i] = Perm::None;
        self.written[i] = false;
        self.local[i].fill(POISON);
        true
    }

    fn local_is_master(&self, page: PageId) -> bool {
        let mapped = self.aliased[index(page)];
        self.found_mapped
            .set(self.found_mapped.get() + u64::from(mapped));
        mapped
    }

    fn home_page(&self, page: PageId) -> &[u8; PAGE_SIZE] {
        &self.home[index(page)]
    }

    fn home_page_mut(&mut self, page: PageId) -> &mut [u8; PAGE_SIZE] {
        &mut self.home[index(page)]
    }
}
