//! Page operations on a [`UffdRegion`]: install, upgrade, downgrade, invalidate, read, wake, and
//! the twin/diff pair of release consistency.
//!
//! Install, upgrade, downgrade, invalidate, read and wake neither allocate nor lock: they may be
//! called from a [`crate::FaultResolver`] in the SIGBUS handler. EEXIST from a copy means the
//! page is already there (another thread won the race): its waiters are woken (thread
//! delivery; under SIGBUS delivery no thread ever waits in the kernel) and the call succeeds with [`Installed::AlreadyPresent`]. EAGAIN (the mapping was changing) is retried
//! up to [`EAGAIN_RETRIES`] times.

use dsm_wire::{DiffRun, PAGE_SIZE};
use userfaultfd_sys as sys;

use crate::diff;
use crate::engine::Delivery;
use crate::error::{Error, Result};
use crate::raw;
use crate::region::UffdRegion;

/// Attempts for an ioctl that keeps failing with EAGAIN before giving up with [`Error::Busy`].
pub const EAGAIN_RETRIES: u32 = 64;

/// Outcome of an install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// This call mapped the page(s).
    New,
    /// At least one page was mapped already (EEXIST); its waiters were woken. Every other
    /// page of the run was installed.
    AlreadyPresent,
}

/// What one `UFFDIO_COPY` of a run did.
enum Step {
    /// This many bytes went in.
    Copied(usize),
    /// This many bytes went in, then a present page (EEXIST).
    Present(usize),
    /// EAGAIN with nothing copied: the mapping was changing; try again.
    Stalled,
}

/// The page `done` bytes into the run starting at page `index`.
fn page_at(index: u32, done: usize) -> u32 {
    index.saturating_add(u32::try_from(done / PAGE_SIZE).unwrap_or(u32::MAX))
}

/// Access a page is installed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// Write-protected: the first write raises a write-protect fault (`UFFDIO_COPY_MODE_WP`).
    ReadOnly,
    /// Readable and writable.
    ReadWrite,
}

impl UffdRegion {
    /// Installs one page with `data`, write-protected (the first write faults).
    pub fn install_read_only(&self, index: u32, data: &[u8; PAGE_SIZE]) -> Result<Installed> {
        self.install_run(index, data, Protection::ReadOnly)
    }

    /// Installs one page with `data`, writable.
    pub fn install_read_write(&self, index: u32, data: &[u8; PAGE_SIZE]) -> Result<Installed> {
        self.install_run(index, data, Protection::ReadWrite)
    }

    /// Installs `data.len() / PAGE_SIZE` consecutive pages from `index` with one `UFFDIO_COPY`
    /// (the way to amortise the kernel entry: fault-around, prefetch). Pages already present
    /// are skipped and keep their contents. A page mapped from a file
    /// ([`UffdRegion::new_with_files`]) is the file's page: it takes the data (written only
    /// if it differs) and is mapped with `UFFDIO_CONTINUE`, one page at a time.
    pub fn install_run(
        &self,
        index: u32,
        data: &[u8],
        protection: Protection,
    ) -> Result<Installed> {
        if data.is_empty() || !data.len().is_multiple_of(PAGE_SIZE) {
            return Err(Error::BadLength {
                got: data.len(),
                want: PAGE_SIZE,
            });
        }
        let count = u32::try_from(data.len() / PAGE_SIZE).map_err(|_| Error::BadLength {
            got: data.len(),
            want: PAGE_SIZE,
        })?;
        self.check(index, count)?;
        if self.any_file_backed(index, count) {
            return self.install_pages(index, data, protection);
        }
        let mode = match protection {
            Protection::ReadOnly => sys::UFFDIO_COPY_MODE_WP,
            Protection::ReadWrite => 0,
        } | self.dont_wake(sys::UFFDIO_COPY_MODE_DONTWAKE);
        let mut outcome = Installed::New;
        let mut done = 0usize;
        let mut stalls = 0u32;
        // Every pass copies or skips at least one page, except EAGAIN stalls, which are
        // bounded by EAGAIN_RETRIES: at most `count + EAGAIN_RETRIES` passes.
        while done < data.len() {
            match self.copy_once(index, &data[done..], mode, done)? {
                Step::Copied(bytes) => done += bytes,
                Step::Present(bytes) => {
                    outcome = Installed::AlreadyPresent;
                    done += bytes + PAGE_SIZE;
                }
                Step::Stalled if stalls < EAGAIN_RETRIES => {
                    stalls += 1;
                    std::hint::spin_loop();
                }
                Step::Stalled => {
                    return Err(Error::Busy {
                        call: "UFFDIO_COPY",
                        index: page_at(index, done),
                        attempts: EAGAIN_RETRIES,
                    });
                }
            }
        }
        Ok(outcome)
    }

    /// [`UffdRegion::install_run`] of a run with file-backed pages: page by page.
    fn install_pages(&self, index: u32, data: &[u8], protection: Protection) -> Result<Installed> {
        let mut outcome = Installed::New;
        for (at, chunk) in (index..).zip(data.chunks_exact(PAGE_SIZE)) {
            let installed = match self.file_alias(at) {
                Some(alias) => self.install_file_page(at, alias, chunk, protection)?,
                None => self.install_run(at, chunk, protection)?,
            };
            if installed == Installed::AlreadyPresent {
                outcome = installed;
            }
        }
        Ok(outcome)
    }

    /// Page `index`, mapped from a file whose page `alias` shows, takes `data` and is mapped.
    fn install_file_page(
        &self,
        index: u32,
        alias: usize,
        data: &[u8],
        protection: Protection,
    ) -> Result<Installed> {
        // SAFETY: `alias` is a page of this region's never-registered alias of the file,
        // live as long as `self`; while a page is installed nobody holds it writable (the
        // coherence protocol's promise for the pages it installs), so nobody writes it.
        if !unsafe { raw::page_equals(alias, data) } {
            // SAFETY: as above; the alias is writable shared memory that never faults to us.
            unsafe { raw::write_bytes(alias, data) };
        }
        self.continue_page(index, protection)
    }

    /// Makes page `index` hold `data` with `protection` whether or not it is mapped now: a
    /// mapped page is unmapped first (`MADV_DONTNEED`) and installed again. For a caller that
    /// owns every install of the region (one engine, under one lock), a page found mapped is
    /// its own earlier install, and the new one must win, not be skipped as
    /// [`UffdRegion::install_run`] skips it (that is for threads racing to install).
    pub fn replace(
        &self,
        index: u32,
        data: &[u8; PAGE_SIZE],
        protection: Protection,
    ) -> Result<()> {
        self.winning(index, || self.install_run(index, data, protection))
    }

    /// [`UffdRegion::map_again`], but a page mapped now is mapped again with `protection`
    /// (unmapped first), not left as it is.
    pub fn remap(&self, index: u32, protection: Protection) -> Result<()> {
        self.winning(index, || self.map_again(index, protection))
    }

    /// Runs `install`; if it found page `index` mapped, unmaps the page and runs it again.
    fn winning(&self, index: u32, install: impl Fn() -> Result<Installed>) -> Result<()> {
        if install()? == Installed::AlreadyPresent {
            self.invalidate_mapping(index, 1)?;
            install()?;
        }
        Ok(())
    }

    /// Maps file-backed page `index` again with `protection`, as it is: the kernel unmaps
    /// such a page by itself when it reclaims it (a shmem page swapped out loses its
    /// page-table entry), and the next access faults although coherence has the page here.
    /// A page still mapped is left as it is ([`Installed::AlreadyPresent`]); a page not
    /// backed by a file is refused ([`Error::Unsupported`]).
    pub fn map_again(&self, index: u32, protection: Protection) -> Result<Installed> {
        let Some(alias) = self.file_alias(index) else {
            return Err(Error::Unsupported(
                "mapping again a page not backed by a file",
            ));
        };
        match self.continue_page(index, protection) {
            // Not in the file yet (a hole: never written, never populated): reading it
            // through the alias gives it its page, of zeros, which is what the hole holds.
            Err(Error::Continue { errno, .. }) if errno.0 == libc::EFAULT => {
                // SAFETY: the alias page lies in a live, never-registered shared mapping; a
                // volatile read of one byte only makes the kernel fill the hole.
                let _ = unsafe { std::ptr::read_volatile(alias as *const u8) };
                self.continue_page(index, protection)
            }
            other => other,
        }
    }

    /// One `UFFDIO_COPY` of `data` to the run at `index`, from byte `done` of the run.
    fn copy_once(&self, index: u32, data: &[u8], mode: u64, done: usize) -> Result<Step> {
        let target = self.base() as usize + index as usize * PAGE_SIZE + done;
        // SAFETY: `data` is a live slice outside the region (a Rust reference never points
        // into the registered range, see `raw::read_bytes`), valid for the call; the target
        // range was checked against the region by `install_run`.
        match unsafe { raw::copy(self.uffd(), target, data.as_ptr(), data.len(), mode) } {
            Ok(_) => Ok(Step::Copied(data.len())),
            // A partial copy ends in EAGAIN whatever stopped it (a present page, usually).
            Err(e) if e.errno.0 == libc::EAGAIN && e.copied > 0 => Ok(Step::Copied(e.copied)),
            Err(e) if e.errno.0 == libc::EAGAIN => Ok(Step::Stalled),
            Err(e) if e.errno.0 == libc::EEXIST => {
                // The first page is present: wake its waiters (thread delivery) and skip it.
                if self.delivery() == Delivery::Thread {
                    let _ = raw::wake(self.uffd(), target + e.copied, PAGE_SIZE);
                }
                Ok(Step::Present(e.copied))
            }
            Err(e) => Err(Error::Copy {
                index: page_at(index, done),
                errno: e.errno,
            }),
        }
    }

    /// Makes an installed page writable (clears write-protect) and wakes threads waiting on it.
    pub fn upgrade(&self, index: u32) -> Result<()> {
        self.write_protect(
            index,
            self.dont_wake(sys::UFFDIO_WRITEPROTECT_MODE_DONTWAKE),
        )
    }

    /// `flag` under SIGBUS delivery, else 0: with `UFFD_FEATURE_SIGBUS` no thread ever sleeps
    /// in the kernel on this region's faults, so waking is wasted work.
    fn dont_wake(&self, flag: u64) -> u64 {
        if self.delivery() == Delivery::Signal {
            flag
        } else {
            0
        }
    }

    /// Write-protects an installed page: the next write raises a write-protect fault.
    pub fn downgrade(&self, index: u32) -> Result<()> {
        // The kernel refuses WP together with DONTWAKE (EINVAL); setting WP wakes nobody anyway.
        self.write_protect(index, sys::UFFDIO_WRITEPROTECT_MODE_WP)
    }

    fn write_protect(&self, index: u32, mode: u64) -> Result<()> {
        let address = self.page_address(index)?;
        for _ in 0..EAGAIN_RETRIES {
            match raw::write_protect(self.uffd(), address, PAGE_SIZE, mode) {
                Ok(()) => return Ok(()),
                Err(errno) if errno.0 == libc::EAGAIN => std::hint::spin_loop(),
                Err(errno) => return Err(Error::WriteProtect { index, errno }),
            }
        }
        Err(Error::Busy {
            call: "UFFDIO_WRITEPROTECT",
            index,
            attempts: EAGAIN_RETRIES,
        })
    }

    /// Drops pages `index..index + count` (`MADV_DONTNEED`; for a shared region also
    /// `FALLOC_FL_PUNCH_HOLE` on the memfd, freeing the memory): the next access faults
    /// MISSING. Their contents are lost: read or diff them first if they are needed. Pages
    /// mapped from a file ([`UffdRegion::new_with_files`]) are only unmapped: the file is
    /// not this region's to empty.
    pub fn invalidate(&self, index: u32, count: u32) -> Result<()> {
        self.invalidate_mapping(index, count)?;
        let (offset, len) = (index as usize * PAGE_SIZE, count as usize * PAGE_SIZE);
        if let Some((_, memfd)) = self.shadow() {
            raw::punch_hole(memfd, offset, len).map_err(|errno| Error::Setup {
                call: "fallocate(PUNCH_HOLE)",
                errno,
            })?;
        }
        Ok(())
    }

    /// Unmaps pages `index..index + count` from the region (`MADV_DONTNEED`) so the next
    /// access faults. For an anonymous region this is [`UffdRegion::invalidate`]. A shared region
    /// keeps the pages in its page cache and shadow: the next access is a MINOR fault, served
    /// by writing the new contents into the shadow (already allocated: no fault there, and a
    /// NIC can keep the memory registered) and [`UffdRegion::install_continue`]. The zero-copy way.
    pub fn invalidate_mapping(&self, index: u32, count: u32) -> Result<()> {
        self.check(index, count)?;
        let address = self.base() as usize + index as usize * PAGE_SIZE;
        // SAFETY: the range lies in this region (checked); dropping the mapping is the point.
        unsafe { raw::madvise(address, count as usize * PAGE_SIZE, libc::MADV_DONTNEED) }.map_err(
            |errno| Error::Madvise {
                call: "MADV_DONTNEED",
                errno,
            },
        )
    }

    /// Resumes threads waiting on page `index` without installing anything: they retry the
    /// access (and fault again if the page is still missing).
    pub fn wake(&self, index: u32) -> Result<()> {
        let address = self.page_address(index)?;
        raw::wake(self.uffd(), address, PAGE_SIZE).map_err(|errno| Error::Wake { index, errno })
    }

    /// Copies page `index` into `target` (for sending it, or as a twin).
    ///
    /// A shared region is read through its shadow mapping: that never faults (a page not in
    /// memory reads as zeros). For an anonymous region the page should be installed. If it
    /// is missing, the calling thread faults like any
    /// application thread and waits for the engine to serve it: never call this for a
    /// missing page from the engine's handler thread or from a resolver (it would wait on
    /// itself). Concurrent writers may leave torn bytes; the protocol orders such accesses.
    pub fn read_page(&self, index: u32, target: &mut [u8; PAGE_SIZE]) -> Result<()> {
        let address = self.readable_address(index)?;
        // SAFETY: the page lies in this live mapping (checked); see the contract above for
        // what happens if it is missing (a fault, never undefined behaviour).
        unsafe { raw::read_bytes(address, target) };
        Ok(())
    }

    /// A copy of page `index` to diff against later (release consistency: taken at the first
    /// write after an acquire). Allocates: not for use in a SIGBUS resolver; there, copy into a
    /// preallocated buffer with [`UffdRegion::read_page`].
    pub fn twin(&self, index: u32) -> Result<Box<[u8; PAGE_SIZE]>> {
        let mut twin = Box::new([0u8; PAGE_SIZE]);
        self.read_page(index, &mut twin)?;
        Ok(twin)
    }

    /// The runs of bytes of page `index` that differ from `twin`.
    pub fn diff_against(&self, index: u32, twin: &[u8; PAGE_SIZE]) -> Result<Vec<DiffRun>> {
        let mut current = Box::new([0u8; PAGE_SIZE]);
        self.read_page(index, &mut current)?;
        Ok(diff::compute(twin, &current))
    }

    /// Writes `runs` into page `index`. In a shared region this goes through the shadow and
    /// never faults. In an anonymous region the page must be installed and writable
    /// ([`UffdRegion::upgrade`] it first if it is read-only; the caller otherwise takes a
    /// write-protect fault). The runs are checked first: out-of-bounds runs (bad input from
    /// the wire) give [`Error::DiffOutOfBounds`] and change nothing.
    pub fn apply_diff(&self, index: u32, runs: &[DiffRun]) -> Result<()> {
        let address = self.readable_address(index)?;
        diff::validate(runs)?;
        for run in runs {
            // SAFETY: `validate` proved the run lies within the page, which lies in this
            // live mapping; writability is the caller's contract (a fault otherwise).
            unsafe { raw::write_bytes(address + usize::from(run.offset), &run.bytes) };
        }
        Ok(())
    }

    /// Where page `index`'s bytes can be read or written: the shadow of a shared region (never
    /// faults), the region itself otherwise.
    fn readable_address(&self, index: u32) -> Result<usize> {
        let address = self.page_address(index)?;
        Ok(match (self.shadow(), self.file_alias(index)) {
            (Some((shadow, _)), _) => address - self.base() as usize + shadow,
            (None, Some(alias)) => alias,
            (None, None) => address,
        })
    }

    /// Address of page `index` in the shadow mapping of a shared region: write a fetched page
    /// there (or let the NIC write it), then [`UffdRegion::install_continue`]. Writing there never
    /// faults and is visible at once to threads that have the page mapped.
    pub fn shadow_address(&self, index: u32) -> Result<usize> {
        if !self.is_shared() {
            return Err(Error::Unsupported("shadow mapping of an anonymous region"));
        }
        self.readable_address(index)
    }

    /// Copies `data` into page `index`'s shadow (shared regions; async-signal-safe).
    pub fn write_shadow(&self, index: u32, data: &[u8; PAGE_SIZE]) -> Result<()> {
        let address = self.shadow_address(index)?;
        // SAFETY: the shadow mapping is never registered, lives as long as `self`, and the
        // page lies within it (checked).
        unsafe { raw::write_bytes(address, data) };
        Ok(())
    }

    /// Maps page `index` of a shared region from the page cache (`UFFDIO_CONTINUE`): the
    /// bytes written to its shadow appear in the region with no copy. EEXIST (already mapped)
    /// succeeds with [`Installed::AlreadyPresent`].
    pub fn install_continue(&self, index: u32, protection: Protection) -> Result<Installed> {
        self.shadow_address(index)?;
        self.continue_page(index, protection)
    }

    /// `UFFDIO_CONTINUE` of page `index` (in the page cache already); EEXIST succeeds with
    /// [`Installed::AlreadyPresent`].
    fn continue_page(&self, index: u32, protection: Protection) -> Result<Installed> {
        let address = self.page_address(index)?;
        let mode = match protection {
            Protection::ReadOnly => raw::CONTINUE_MODE_WP,
            Protection::ReadWrite => 0,
        } | self.dont_wake(sys::UFFDIO_CONTINUE_MODE_DONTWAKE);
        for _ in 0..EAGAIN_RETRIES {
            match raw::continue_(self.uffd(), address, PAGE_SIZE, mode) {
                Ok(()) => return Ok(Installed::New),
                Err(errno) if errno.0 == libc::EAGAIN => std::hint::spin_loop(),
                Err(errno) if errno.0 == libc::EEXIST => {
                    if self.delivery() == Delivery::Thread {
                        let _ = raw::wake(self.uffd(), address, PAGE_SIZE);
                    }
                    return Ok(Installed::AlreadyPresent);
                }
                Err(errno) => return Err(Error::Continue { index, errno }),
            }
        }
        Err(Error::Busy {
            call: "UFFDIO_CONTINUE",
            index,
            attempts: EAGAIN_RETRIES,
        })
    }
}
