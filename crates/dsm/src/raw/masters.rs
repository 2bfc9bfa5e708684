//! Master copies in shared memory: the memfd ("arena") that holds every master copy a node
//! homes, and the mappings of it (the home's own, and each same-host peer's).
//!
//! The arena is as large as the window regions are placed in, and a region's master copies
//! sit at the offset of the region's address in that window: the same offset on every
//! node, so a peer finds them with no message. It is sparse (a tmpfs file commits only the
//! pages written) and sealed against shrinking and growing, so a peer can never make a
//! mapping of it fault (SIGBUS past the end of a file). A node punches a freed region's
//! pages out of its own arena.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use dsm_wire::PAGE_SIZE;

/// A node's arena.
#[derive(Debug)]
pub(crate) struct Arena {
    fd: OwnedFd,
    len: u64,
}

impl Arena {
    /// A fresh arena of `len` bytes, sealed at that size.
    pub(crate) fn create(len: u64) -> io::Result<Self> {
        // SAFETY: a NUL-terminated name and flags; the result is checked before use.
        let raw = unsafe {
            libc::memfd_create(
                c"dsm-masters".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just returned by the kernel, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let size = libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: a descriptor we own; plain integer arguments.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Arena { fd, len })
    }

    /// A peer's arena, received over the set-up socket: refused unless it is `len` bytes
    /// and sealed against shrinking (else a mapping of it could fault in this process).
    pub(crate) fn of_peer(fd: OwnedFd, len: u64) -> io::Result<Self> {
        // SAFETY: a descriptor we own.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(io::Error::other(
                "the peer's arena is not sealed against shrinking",
            ));
        }
        let size = std::fs::File::from(fd.try_clone()?).metadata()?.len();
        if size != len {
            return Err(io::Error::other(format!(
                "the peer's arena is {size} bytes, not {len}"
            )));
        }
        Ok(Arena { fd, len })
    }

    /// Where a region placed at `address` keeps its master copies in every arena (an arena
    /// spans the window regions are placed in).
    pub(crate) fn offset_of(address: u64) -> io::Result<u64> {
        use crate::runtime::alloc::{REGION_BASE, REGION_END};
        if (REGION_BASE..REGION_END).contains(&address) {
            Ok(address - REGION_BASE)
        } else {
            Err(io::Error::other(format!(
                "region address {address:#x} outside the region window"
            )))
        }
    }

    /// Size in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The descriptor, to hand to a peer.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Maps `pages` pages from byte `offset`, shared with every other mapping of the arena.
    pub(crate) fn map(&self, offset: u64, pages: u32) -> io::Result<Shared> {
        let len = (pages as usize)
            .checked_mul(PAGE_SIZE)
            .ok_or(io::ErrorKind::InvalidInput)?;
        let end = offset.checked_add(len as u64);
        if pages == 0
            || !offset.is_multiple_of(PAGE_SIZE as u64)
            || end.is_none_or(|e| e > self.len)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("pages {offset:#x}+{len:#x} outside the arena"),
            ));
        }
        let at = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: a fresh mapping chosen by the kernel (no MAP_FIXED) of a range checked to
        // lie within the file, whose size is sealed: no existing memory is affected, and no
        // access to the mapping can fault past the end of the file.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                self.fd.as_raw_fd(),
                at,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Shared {
            base: base.cast(),
            len,
        })
    }

    /// Frees the memory of `pages` pages from `offset` (a freed region's master copies);
    /// they read as zeros afterwards.
    pub(crate) fn punch(&self, offset: u64, pages: u32) -> io::Result<()> {
        let len = u64::from(pages) * PAGE_SIZE as u64;
        let (at, len) = match (libc::off_t::try_from(offset), libc::off_t::try_from(len)) {
            (Ok(at), Ok(len)) => (at, len),
            _ => return Err(io::ErrorKind::InvalidInput.into()),
        };
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: a descriptor we own; plain integer arguments.
        if unsafe { libc::fallocate(self.fd.as_raw_fd(), mode, at, len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A node's master copies of one region up to this size get their pages at once
/// ([`populate_runs`]); a larger share (a sparse region, say 64 GiB of which a few pages are
/// used) only as it is touched, so that it costs the pages used.
pub(crate) const POPULATE_LIMIT: usize = 256 << 20;

/// Populates the runs (first page, count) of the `pages` pages mapped at `base`, up to
/// [`POPULATE_LIMIT`] bytes in all (none past it): the pages one home owns, in its own
/// mapping of them or in a same-host peer's, so that no node commits master pages of
/// other homes (each would otherwise commit the whole region).
pub(crate) fn populate_runs(base: *mut u8, pages: usize, runs: impl Iterator<Item = (u32, u32)>) {
    let mut budget = POPULATE_LIMIT;
    for (first, count) in runs {
        let end = (first as usize + count as usize).min(pages);
        let len = end.saturating_sub(first as usize) * PAGE_SIZE;
        if len == 0 || len > budget {
            return;
        }
        budget -= len;
        // SAFETY: `first < end <= pages`, so the offset stays inside the mapping at `base`.
        let start = unsafe { base.add(first as usize * PAGE_SIZE) };
        populate(start.cast(), len);
    }
}

/// Gives the `len` bytes mapped at `base` their pages and page-table entries now, in one
/// call, rather than a page fault at the first touch of each, when `len` is at most
/// [`POPULATE_LIMIT`]: a home's first write-back of a page into its master, and a same-host
/// peer's first copy out of it, each took a shared-memory fault (~1.5 µs here) on the remote
/// read fault's path (`dsm-bench latency`, `n2_shm`: "reply received → install issued"
/// 3.1–3.8 µs before, 1.5 µs after; the home's step 5.1 → 4.1 µs). The master copies of a
/// node's share of such a region are then committed memory from allocation, as an MPI
/// window's or ArgoDSM's global memory are. Best effort: where the kernel refuses (before
/// Linux 5.14, or out of memory) the pages come at first touch, as before.
fn populate(base: *mut libc::c_void, len: usize) {
    if len > POPULATE_LIMIT {
        return;
    }
    // SAFETY: `base..base + len` is a mapping this module just made; populating changes no
    // byte of it (missing pages of the file read as zeros either way).
    let rc = unsafe { libc::madvise(base, len, libc::MADV_POPULATE_WRITE) };
    if rc != 0 {
        let error = io::Error::last_os_error();
        tracing::debug!(%error, len, "master copies left to fault in at first touch");
    }
}

/// A shared mapping of part of an arena, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Shared {
    base: *mut u8,
    len: usize,
}

// SAFETY: an owned mapping; concurrent access to its bytes (by the home process and its
// peers) is ordered by the coherence protocol, as for RDMA.
unsafe impl Send for Shared {}
// SAFETY: as above; `copy_page` only reads through a raw pointer.
unsafe impl Sync for Shared {}

impl Shared {
    /// First byte (page-aligned).
    pub(crate) fn base(&self) -> *mut u8 {
        self.base
    }

    /// Number of pages.
    pub(crate) fn pages(&self) -> usize {
        self.len / PAGE_SIZE
    }

    /// Gives the runs (first page, count) their pages now: those of the arena's owner, so
    /// that a copy out of them takes no fault (see [`populate_runs`]).
    pub(crate) fn populate(&self, runs: impl Iterator<Item = (u32, u32)>) {
        populate_runs(self.base, self.pages(), runs);
    }

    /// The first byte of page `index`, `None` outside the mapping.
    fn page_ptr(&self, index: u32) -> Option<*mut u8> {
        let index = index as usize;
        // SAFETY: in range (checked), so the offset stays inside the mapping.
        (index < self.pages()).then(|| unsafe { self.base.add(index * PAGE_SIZE) })
    }

    /// A copy of page `index`, `None` outside the mapping.
    pub(crate) fn copy_page(&self, index: u32) -> Option<dsm_wire::Page> {
        let from = self.page_ptr(index)?;
        let mut page: dsm_wire::Page = Box::new([0; PAGE_SIZE]);
        // SAFETY: a whole page of the mapping, mapped while `self` lives; the bytes are plain
        // data. The home writes a master copy only while the coherence protocol keeps readers
        // off it, as with an RDMA READ.
        unsafe { std::ptr::copy_nonoverlapping(from, page.as_mut_ptr(), PAGE_SIZE) };
        Some(page)
    }

    /// Writes page `index` with `data`; `None` outside the mapping.
    pub(crate) fn write_page(&self, index: u32, data: &dsm_wire::Page) -> Option<()> {
        let to = self.page_ptr(index)?;
        // SAFETY: a whole page of the mapping, mapped read-write while `self` lives. The
        // coherence protocol gives this node the page's master to write (it answers the
        // home's recall of its writable copy, and the home serves nobody meanwhile).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), to, PAGE_SIZE) };
        Some(())
    }

    /// Writes each run's bytes at its offset of page `index`, and nothing else; `None` outside
    /// the mapping or the page.
    pub(crate) fn write_runs(&self, index: u32, runs: &[dsm_wire::DiffRun]) -> Option<()> {
        let to = self.page_ptr(index)?;
        let fits = |run: &dsm_wire::DiffRun| usize::from(run.offset) + run.bytes.len() <= PAGE_SIZE;
        if !runs.iter().all(fits) {
            return None;
        }
        for run in runs {
            // SAFETY: inside page `index` of the mapping (checked above), mapped read-write
            // while `self` lives. Exactly the run's bytes are written: the home and other
            // same-host writers store to the page's other bytes meanwhile (release mode's
            // multiple writers), and must not find them overwritten.
            unsafe {
                let at = to.add(usize::from(run.offset));
                std::ptr::copy_nonoverlapping(run.bytes.as_ptr(), at, run.bytes.len());
            }
        }
        Some(())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: mapped in `Arena::map` with this length, unmapped once; borrows of it end
        // with `self`'s.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEN: u64 = 1 << 40;

    #[test]
    fn a_peer_sees_the_homes_writes_and_a_punched_page_reads_as_zeros() {
        let home = Arena::create(LEN).unwrap();
        let peer = Arena::of_peer(home.fd().try_clone_to_owned().unwrap(), LEN).unwrap();
        let offset = 1 << 30;
        let ours = home.map(offset, 4).unwrap();
        // SAFETY: page 2 of a live 4-page mapping.
        unsafe { ours.base().add(2 * PAGE_SIZE + 7).write(0xab) };
        let theirs = peer.map(offset, 4).unwrap();
        assert_eq!(theirs.copy_page(2).unwrap()[7], 0xab);
        assert!(theirs.copy_page(4).is_none(), "outside the mapping");
        home.punch(offset, 4).unwrap();
        assert_eq!(
            theirs.copy_page(2).unwrap()[7],
            0,
            "freed pages read as zeros"
        );
    }

    #[test]
    fn a_peers_runs_land_in_the_homes_page_and_nothing_around_them() {
        let home = Arena::create(LEN).unwrap();
        let peer = Arena::of_peer(home.fd().try_clone_to_owned().unwrap(), LEN).unwrap();
        let offset = 1 << 31;
        let ours = home.map(offset, 2).unwrap();
        let theirs = peer.map(offset, 2).unwrap();
        theirs.write_page(1, &Box::new([9; PAGE_SIZE])).unwrap();
        let run = |offset: u16, bytes: &[u8]| dsm_wire::DiffRun {
            offset,
            bytes: bytes.to_vec(),
        };
        let runs = [run(3, &[1, 2]), run(4094, &[7, 8])];
        assert_eq!(theirs.write_runs(1, &runs), Some(()));
        let page = ours.copy_page(1).unwrap();
        assert_eq!(
            (&page[2..6], &page[4093..]),
            (&[9, 1, 2, 9][..], &[9, 7, 8][..])
        );
        assert_eq!(page.iter().filter(|&&b| b == 9).count(), PAGE_SIZE - 4);
        assert_eq!(
            theirs.write_runs(1, &[run(4095, &[1, 2])]),
            None,
            "past the page"
        );
        assert_eq!(theirs.write_runs(2, &runs), None, "outside the mapping");
        assert_eq!(
            ours.copy_page(1).unwrap(),
            page,
            "a refused write changes nothing"
        );
    }

    /// Which pages of `mapping` are in memory in this process's page tables (`mincore`).
    fn resident(mapping: &Shared) -> Vec<bool> {
        let mut resident = vec![0u8; mapping.pages()];
        // SAFETY: the live mapping's page-aligned range; `resident` has a byte per page.
        let rc = unsafe {
            libc::mincore(
                mapping.base().cast(),
                mapping.pages() * PAGE_SIZE,
                resident.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        resident.iter().map(|r| r & 1 == 1).collect()
    }

    #[test]
    fn a_mapping_gets_the_pages_of_the_runs_given_and_no_others() {
        let home = Arena::create(LEN).unwrap();
        let peer = Arena::of_peer(home.fd().try_clone_to_owned().unwrap(), LEN).unwrap();
        let ours = home.map(1 << 20, 8).unwrap();
        assert_eq!(resident(&ours), [false; 8], "nothing at mapping");
        ours.populate([(0, 3)].into_iter()); // the pages this home owns
        let mine = [true, true, true, false, false, false, false, false];
        assert_eq!(resident(&ours), mine);
        // A peer's mapping of the same pages: populating them maps what the home committed.
        let theirs = peer.map(1 << 20, 8).unwrap();
        theirs.populate([(0, 3)].into_iter());
        assert_eq!(resident(&theirs), mine);
        assert_eq!(
            resident(&ours),
            mine,
            "no other page of the arena was committed"
        );
    }

    #[test]
    fn mappings_outside_the_arena_are_refused() {
        let arena = Arena::create(LEN).unwrap();
        assert!(arena.map(LEN - PAGE_SIZE as u64, 2).is_err());
        assert!(arena.map(1, 1).is_err(), "unaligned");
        assert!(arena.map(0, 0).is_err(), "empty");
        assert!(arena.map(LEN - PAGE_SIZE as u64, 1).is_ok());
    }

    #[test]
    fn an_unsealed_or_resized_arena_of_a_peer_is_refused() {
        // SAFETY: a NUL-terminated name; the result is checked.
        let raw = unsafe { libc::memfd_create(c"unsealed".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: just returned by the kernel.
        let unsealed = unsafe { OwnedFd::from_raw_fd(raw) };
        let err = Arena::of_peer(unsealed, LEN).unwrap_err();
        assert!(err.to_string().contains("not sealed"), "{err}");
        let small = Arena::create(LEN / 2).unwrap();
        let err = Arena::of_peer(small.fd().try_clone_to_owned().unwrap(), LEN).unwrap_err();
        assert!(err.to_string().contains("not 1099511627776"), "{err}");
    }
}
