//! Finding the pages written since they were last write-protected, without write faults
//! (tracked regions: `UFFD_FEATURE_WP_ASYNC` + `PAGEMAP_SCAN`, Linux 6.7).

use dsm_wire::PAGE_SIZE;

use crate::engine::Delivery;
use crate::error::{Error, Result};
use crate::raw::{self, PageRun};
use crate::region::UffdRegion;

/// Runs one `PAGEMAP_SCAN` call can report; a walk that fills them continues where it stopped.
const RUNS_PER_CALL: usize = 64;

impl UffdRegion {
    /// Appends to `written` the pages among `index..index + count` written since they were
    /// last write-protected (installed write-protected, or reported by an earlier call), and
    /// write-protects them again in the same system call: a write that lands after the call
    /// is reported by the next one. Returns how many pages were appended. Tracked regions
    /// only ([`UffdRegion::new_tracked`]).
    ///
    /// Scan installed pages only: the kernel reports a missing page as written too (and
    /// leaves a write-protect marker in its place), so callers pass runs of pages they
    /// installed.
    pub fn take_written(&self, index: u32, count: u32, written: &mut Vec<u32>) -> Result<usize> {
        self.check(index, count)?;
        let pagemap = self.pagemap().ok_or(Error::Unsupported(
            "take_written on a region not made by UffdRegion::new_tracked",
        ))?;
        let base = self.page_address(0)?;
        let end = self.page_address(index)? + count as usize * PAGE_SIZE;
        let mut start = self.page_address(index)?;
        let before = written.len();
        let mut runs = [PageRun::default(); RUNS_PER_CALL];
        while start < end {
            let (filled, walk_end) =
                raw::scan_written(pagemap, start, end, &mut runs).map_err(|errno| {
                    Error::Setup {
                        call: "PAGEMAP_SCAN",
                        errno,
                    }
                })?;
            for run in &runs[..filled] {
                let page = |at: u64| usize::try_from(at).map_or(0, |at| (at - base) / PAGE_SIZE);
                let (first, last) = (page(run.start), page(run.end));
                written.extend((first..last).filter_map(|p| u32::try_from(p).ok()));
            }
            // The kernel stops early only when `runs` filled up; never loop without progress.
            start = if walk_end > start { walk_end } else { end };
        }
        Ok(written.len() - before)
    }
}

impl UffdRegion {
    /// Takes page `index` out of the region and copies its last contents into `last`: every
    /// store another thread made to it is in `last`, and any later access faults as missing.
    /// Returns false (and leaves `last` alone) when the page was not installed.
    ///
    /// With `UFFDIO_MOVE` (Linux 6.8) this is one step for every other thread: the page is
    /// moved to a scratch page (registered with the same uffd), read there and dropped. Without
    /// it (or when the kernel refuses the move: a page pinned for DMA), the page is copied and
    /// then unmapped, and a store landing between the two is lost; tracked regions of a
    /// kernel with `WP_ASYNC` (6.7) but without `MOVE` (6.8) live with that window.
    pub fn take_page(&self, index: u32, last: &mut [u8; PAGE_SIZE]) -> Result<bool> {
        self.check(index, 1)?;
        let address = self.page_address(index)?;
        if let Some(scratch) = self.scratch() {
            match raw::move_pages(self.uffd(), scratch, address, PAGE_SIZE) {
                Ok(moved) if moved == PAGE_SIZE => {
                    // SAFETY: the scratch page now holds the moved page, and only this call
                    // (under its caller's lock) ever touches the scratch page.
                    unsafe { raw::read_bytes(scratch, last) };
                    // SAFETY: the scratch page is ours; emptying it readies the next move.
                    unsafe { raw::madvise(scratch, PAGE_SIZE, libc::MADV_DONTNEED) }.map_err(
                        |errno| Error::Madvise {
                            call: "MADV_DONTNEED (scratch)",
                            errno,
                        },
                    )?;
                    return Ok(true);
                }
                Ok(_) => return Ok(false),
                Err(errno) if errno.0 == libc::ENOENT => return Ok(false),
                Err(_) => {} // Pinned or otherwise immovable: copy, then unmap.
            }
        }
        self.read_page(index, last)?;
        self.invalidate(index, 1)?;
        Ok(true)
    }
}

/// Whether this process can use tracked regions: opens one with `UFFD_FEATURE_WP_ASYNC`,
/// installs a page write-protected, writes it, and checks that `PAGEMAP_SCAN` reports it
/// exactly once. `Err` says what is missing (kernel before 6.7, a seccomp filter refusing
/// the ioctl, no `/proc`).
pub fn probe_write_tracking() -> Result<()> {
    let address = scratch_address()?;
    let region = UffdRegion::new_tracked(address, 1, Delivery::Thread)?;
    region.install_read_only(0, &[0; PAGE_SIZE])?;
    let mut written = Vec::new();
    region.take_written(0, 1, &mut written)?;
    if !written.is_empty() {
        return Err(Error::Unsupported(
            "PAGEMAP_SCAN reported a page nobody wrote",
        ));
    }
    // SAFETY: page 0 is installed (write-protected, resolved by the kernel on write) and
    // owned by this function's region; nothing else uses it.
    unsafe { raw::write_bytes(address, &[1]) };
    region.take_written(0, 1, &mut written)?;
    let again = region.take_written(0, 1, &mut Vec::new())?;
    if written != [0] || again != 0 {
        return Err(Error::Unsupported(
            "PAGEMAP_SCAN did not report exactly the written page",
        ));
    }
    Ok(())
}

/// A free, page-aligned address of one page (mapped then unmapped by the kernel's choice).
fn scratch_address() -> Result<usize> {
    let address = raw::map_anywhere(PAGE_SIZE)
        .map_err(|_| Error::Unsupported("mmap of a probe range failed"))?;
    // SAFETY: the page was just mapped by this function and is used by nothing else.
    let _ = unsafe { raw::unmap(address, PAGE_SIZE) };
    Ok(address)
}
