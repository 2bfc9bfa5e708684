//! The crate's only unsafe code: page-aligned home memory (private, or in a shared arena,
//! see `masters`), views of installed pages, the SIGBUS handler's one write to stderr, and
//! the trace's clock and thread id.

pub(crate) mod masters;

use std::sync::Arc;

use masters::Arena;

use dsm_wire::PAGE_SIZE;

/// Zeroed, page-aligned memory for the master copies of a region's pages (never registered
/// with userfaultfd, so any thread may touch it). Unmapped on drop.
///
/// Sized for the whole region, so that page `i` is at `base + i * PAGE_SIZE` on every node
/// (the transports index exposed memory by page), but it costs only the pages this node
/// homes: it is a private anonymous mapping with `MAP_NORESERVE`, of which the node commits
/// its home pages (`Placement::Block`: about `pages / nodes`) at once when they fit
/// [`masters::POPULATE_LIMIT`] ([`populate`](Self::populate)), else each at its first write,
/// and a read of an untouched page maps the shared zero page. So a region of S bytes costs
/// this node its share, not S, and mapping a large one takes the same time for any S. RDMA
/// registration pins the whole range (see `memory`).
///
/// With same-host peers the master copies live in the node's shared [`Arena`] instead
/// ([`in_arena`](Self::in_arena)), where those peers map them too.
#[derive(Debug)]
pub(crate) struct HomeCopies {
    base: *mut u8,
    len: usize,
    /// The arena mapping and where in the arena, when not private memory.
    arena: Option<(masters::Shared, Arc<Arena>, u64)>,
}

// SAFETY: plain owned memory; the node runtime accesses it only under the coherence lock.
unsafe impl Send for HomeCopies {}

impl HomeCopies {
    /// `pages` zeroed pages (`pages > 0`), committed lazily. Fails as `mmap` does (ENOMEM
    /// when the address space or `RLIMIT_AS` has no room for the range).
    pub(crate) fn new(pages: u32) -> std::io::Result<Self> {
        assert!(pages > 0, "empty home memory");
        let len = (pages as usize)
            .checked_mul(PAGE_SIZE)
            .expect("u32 pages fit a 64-bit address space");
        // SAFETY: a fresh mapping chosen by the kernel (no address hint, no MAP_FIXED), so no
        // existing memory is affected; the result is checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let home = HomeCopies {
            base: base.cast(),
            len,
            arena: None,
        };
        // Home pages are written one at a time, anywhere in the range: a transparent huge
        // page would commit 2 MiB for each 4 KiB written. Advice only: a kernel without THP
        // refuses it (EINVAL), which is the same outcome.
        // SAFETY: the range is the mapping just made, owned by `home`.
        let _ = unsafe { libc::madvise(base, len, libc::MADV_NOHUGEPAGE) };
        Ok(home)
    }

    /// `pages` zeroed pages of `arena` from byte `offset`, shared with the peers that map
    /// the arena; punched out of the arena on drop.
    pub(crate) fn in_arena(arena: &Arc<Arena>, offset: u64, pages: u32) -> std::io::Result<Self> {
        let mapping = arena.map(offset, pages)?;
        Ok(HomeCopies {
            base: mapping.base(),
            len: mapping.pages() * PAGE_SIZE,
            arena: Some((mapping, Arc::clone(arena), offset)),
        })
    }

    fn pages(&self) -> usize {
        self.len / PAGE_SIZE
    }

    /// Commits the pages of `runs` (first page, count) now, up to
    /// [`masters::POPULATE_LIMIT`] bytes in all, rather than at their first write: the home's
    /// first write-back of a page into its master copy took a page fault (allocation and
    /// zeroing, ~3 µs here) on the path of a remote read fault. Called with the pages this
    /// node homes, which it writes as soon as another node reads what it wrote; the others
    /// stay uncommitted (in an arena too: same-host peers populate only this node's pages in
    /// their mappings of it). Best effort: where the kernel refuses, pages come at first touch
    /// as before.
    pub(crate) fn populate(&self, runs: impl Iterator<Item = (u32, u32)>) {
        masters::populate_runs(self.base, self.pages(), runs);
    }

    /// Page `index`.
    pub(crate) fn page(&self, index: u32) -> &[u8; PAGE_SIZE] {
        assert!((index as usize) < self.pages(), "home page out of range");
        // SAFETY: in range (asserted), aligned, initialised (anonymous memory reads as
        // zeros), borrowed from `self`.
        unsafe {
            &*self
                .base
                .add(index as usize * PAGE_SIZE)
                .cast::<[u8; PAGE_SIZE]>()
        }
    }

    /// The whole memory, for a transport to expose (TCP serves page reads from it; RDMA
    /// registers it for READ by peers, and registration pins every page of the range: with
    /// RDMA a region costs its full size on every node, see the README's "Memory").
    pub(crate) fn memory(&self) -> dsm_core::HomeMemory {
        let pages = u32::try_from(self.pages()).expect("made from a u32 page count");
        // SAFETY: `base` is page-aligned and valid for the whole mapping while `self` lives;
        // the node withdraws the region from its transport before dropping it (`Node::free`)
        // and closes the transport's registrations before the node's memory goes. It is
        // plain anonymous memory, never registered with userfaultfd.
        unsafe { dsm_core::HomeMemory::new(self.base, pages) }
    }

    /// Page `index`, writable.
    pub(crate) fn page_mut(&mut self, index: u32) -> &mut [u8; PAGE_SIZE] {
        assert!((index as usize) < self.pages(), "home page out of range");
        // SAFETY: as in `page`, and `&mut self` makes the borrow unique.
        unsafe {
            &mut *self
                .base
                .add(index as usize * PAGE_SIZE)
                .cast::<[u8; PAGE_SIZE]>()
        }
    }
}

impl Drop for HomeCopies {
    fn drop(&mut self) {
        if let Some((_mapping, arena, offset)) = &self.arena {
            // The mapping unmaps itself; the arena outlives it, so free the pages there.
            let pages = u32::try_from(self.pages()).unwrap_or(u32::MAX);
            if let Err(e) = arena.punch(*offset, pages) {
                tracing::warn!(error = %e, "could not free home copies in the shared arena");
            }
            return;
        }
        // SAFETY: mapped in `new` with this length, unmapped once; every borrow of it ended
        // with `self`'s, and the transports withdrew it first (see `memory`).
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// The installed page at `address` of a userfaultfd region, as bytes.
///
/// # Safety
/// `address` must be the page-aligned start of a page of a live mapping that is installed
/// (not missing) and stays mapped for `'a`; no thread may write it meanwhile (the coherence
/// engine write-protects writable pages before it reads them).
pub(crate) unsafe fn installed_page<'a>(address: usize) -> &'a [u8; PAGE_SIZE] {
    // SAFETY: the caller's contract.
    unsafe { &*(address as *const [u8; PAGE_SIZE]) }
}

/// Copies the installed page at `address` into `into` while other threads may be storing to
/// it (a torn word is fine: the engine's next release sees the rest of it change).
///
/// # Safety
/// `address` must be the page-aligned start of an installed page of a live mapping.
pub(crate) unsafe fn snapshot_page(address: usize, into: &mut [u8; PAGE_SIZE]) {
    // SAFETY: the caller's contract; the source is read through a raw pointer (no reference
    // to memory other threads write), the destination is ours and does not overlap it.
    unsafe {
        std::ptr::copy_nonoverlapping(address as *const u8, into.as_mut_ptr(), PAGE_SIZE);
    }
}

/// Reads element `index` of a `T` array at `base` (through the mapping: may fault).
///
/// # Safety
/// `base` must point to a live mapping of at least `index + 1` `T`s, aligned for `T`.
pub(crate) unsafe fn read_element<T: Copy>(base: *const T, index: usize) -> T {
    // SAFETY: the caller's contract; volatile so that every access really goes to memory
    // (and through the coherence protocol), never to a register copy.
    unsafe { base.add(index).read_volatile() }
}

/// Writes element `index` of a `T` array at `base`.
///
/// # Safety
/// As for [`read_element`].
pub(crate) unsafe fn write_element<T: Copy>(base: *mut T, index: usize, value: T) {
    // SAFETY: the caller's contract.
    unsafe { base.add(index).write_volatile(value) }
}

/// Copies `len` bytes between region memory and a buffer, in the given direction.
///
/// # Safety
/// `region` must be valid for `len` bytes of a live mapping; `buffer` must not overlap it.
pub(crate) unsafe fn copy_bytes(region: *mut u8, buffer: *mut u8, len: usize, to_region: bool) {
    // SAFETY: the caller's contract.
    unsafe {
        if to_region {
            std::ptr::copy_nonoverlapping(buffer, region, len);
        } else {
            std::ptr::copy_nonoverlapping(region, buffer, len);
        }
    }
}

/// Writes `message` to stderr with one `write(2)` (async-signal-safe, unlike `eprintln!`,
/// which takes a lock and may allocate); a short or failed write is ignored, as there is
/// nowhere else to report it.
pub(crate) fn write_stderr(message: &[u8]) {
    // SAFETY: `message` is valid for reads of its length.
    unsafe { libc::write(libc::STDERR_FILENO, message.as_ptr().cast(), message.len()) };
}

/// `CLOCK_MONOTONIC` in nanoseconds (the trace's clock; the same for every process of a
/// host). Async-signal-safe: `clock_gettime` is (a vDSO call here).
pub(crate) fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// The calling thread's kernel id. Async-signal-safe (one raw syscall, which cannot fail).
pub(crate) fn gettid() -> u32 {
    // SAFETY: gettid takes no arguments and touches no memory.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    u32::try_from(tid).unwrap_or(0)
}

/// Sets the calling thread's nice value (Linux: `PRIO_PROCESS` with id 0 is the calling
/// thread, not the whole process).
pub(crate) fn set_thread_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: setpriority takes plain integers and touches no memory.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The calling thread's nice value.
pub(crate) fn thread_nice() -> i32 {
    // SAFETY: errno is thread-local; getpriority may return -1 as a value, so errno is
    // cleared first and read after (the only way to tell a failure, which cannot happen for
    // the calling thread).
    unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    }
}

/// The lowest nice value `RLIMIT_NICE` lets an unprivileged thread set (`20 - limit`; 20
/// when the limit is 0, i.e. only lowering priority is allowed).
pub(crate) fn nice_floor() -> i32 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NICE, &mut limit) };
    if rc != 0 {
        return 20;
    }
    let allowed = i32::try_from(limit.rlim_cur.min(40)).unwrap_or(0);
    20 - allowed
}

/// Makes the calling thread `SCHED_FIFO` at `priority`, with `SCHED_RESET_ON_FORK` so that
/// no thread or process it starts inherits the real-time policy.
pub(crate) fn set_thread_fifo(priority: i32) -> std::io::Result<()> {
    set_thread_policy(libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, priority)
}

/// Makes the calling thread a normal (`SCHED_OTHER`) one again, at its nice value.
pub(crate) fn set_thread_normal() -> std::io::Result<()> {
    set_thread_policy(libc::SCHED_OTHER, 0)
}

fn set_thread_policy(policy: libc::c_int, priority: i32) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 is the calling
    // thread.
    let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// CPUs online on this host (at least 1).
pub(crate) fn online_cpus() -> usize {
    // SAFETY: sysconf takes an integer and touches no memory.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which pages of `home` have memory now (`mincore`).
    fn resident(home: &HomeCopies) -> Vec<bool> {
        let mut vec = vec![0u8; home.pages()];
        // SAFETY: `home`'s mapping, whole; `vec` has one byte per page of it.
        let rc = unsafe { libc::mincore(home.base.cast(), home.len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.iter().map(|b| b & 1 == 1).collect()
    }

    #[test]
    fn populating_commits_the_runs_given_and_nothing_else() {
        let home = HomeCopies::new(8).unwrap();
        assert_eq!(resident(&home), [false; 8], "lazily committed");
        home.populate([(2, 3), (7, 1)].into_iter());
        let expected = [false, false, true, true, true, false, false, true];
        assert_eq!(resident(&home), expected);
        assert!(home.page(3).iter().all(|&b| b == 0), "still zeroed");
        home.populate([(6, 5)].into_iter()); // clamped to the mapping
        assert!(resident(&home)[6]);
    }
}
