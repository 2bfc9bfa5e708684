//! Runs of a region mapped from a file instead of anonymous memory (see
//! [`UffdRegion::new_with_files`](crate::UffdRegion::new_with_files)): a same-host home's
//! master copies, so that installing a page maps the master itself (`UFFDIO_CONTINUE`) and a
//! write through the region lands in it, with no copy either way.
//!
//! Each run also gets an alias: a second mapping of the same file pages that is never
//! registered, so reading or writing it never faults. An install compares the page with
//! what it is to hold there, and writes it there only when they differ.

use std::os::fd::{AsRawFd, BorrowedFd};

use dsm_wire::PAGE_SIZE;

use crate::error::{Error, Result};
use crate::raw;
use crate::region::Mapping;

/// Pages `first..first + count` of a region, backed by `fd` from byte `offset` (page-aligned).
#[derive(Debug, Clone, Copy)]
pub struct FileRun<'a> {
    /// First page of the run in the region.
    pub first: u32,
    /// Pages in the run (at least one).
    pub count: u32,
    /// The file (a memfd, or any shmem file); it stays open as long as the region maps it.
    pub fd: BorrowedFd<'a>,
    /// Byte offset of the run's first page in the file.
    pub offset: u64,
    /// Give the run's alias its page-table entries at once (`MADV_POPULATE_WRITE`), which
    /// commits the run's pages in the file: an install's first look at a page then takes no
    /// page fault (~1.5 µs here). For runs whose pages their home commits anyway.
    pub populate: bool,
}

/// One mapped run and its alias.
#[derive(Debug)]
struct FileSpan {
    first: u32,
    count: u32,
    alias: Mapping,
}

/// A region's file-backed runs, sorted by first page.
#[derive(Debug, Default)]
pub(crate) struct FileSpans {
    spans: Vec<FileSpan>,
}

impl FileSpans {
    /// Checks `runs` against a region of `pages` pages: each non-empty, page-aligned in its
    /// file, inside the region, and sorted without overlap.
    pub(crate) fn check(runs: &[FileRun<'_>], pages: u32) -> Result<()> {
        let mut next_free = 0u32;
        for run in runs {
            let end = run.first.checked_add(run.count);
            let fits = end.is_some_and(|end| run.count > 0 && end <= pages);
            if !fits || run.first < next_free || !run.offset.is_multiple_of(PAGE_SIZE as u64) {
                return Err(Error::BadFileRun {
                    first: run.first,
                    count: run.count,
                    pages,
                });
            }
            next_free = run.first + run.count;
        }
        Ok(())
    }

    /// Maps each run over its part of the anonymous range at `base` (which the caller owns
    /// and nothing uses yet), and its alias anywhere.
    pub(crate) fn map(base: usize, runs: &[FileRun<'_>]) -> Result<FileSpans> {
        let mut spans = Vec::with_capacity(runs.len());
        for run in runs {
            let (address, len) = span_range(base, run.first, run.count);
            let fd = run.fd.as_raw_fd();
            let failed = |errno| Error::Map {
                address,
                len,
                errno,
            };
            // SAFETY: the range lies in the anonymous mapping the caller just made for the
            // region (checked by `check`), which nothing uses yet.
            unsafe { raw::map_file(address, len, fd, run.offset) }.map_err(failed)?;
            // SAFETY: no hint: a fresh range of the kernel's choosing.
            let alias = unsafe { raw::map_file(0, len, fd, run.offset) }.map_err(failed)?;
            let alias = Mapping { base: alias, len };
            if run.populate {
                // SAFETY: the alias just mapped, never registered; populating changes no byte
                // (a hole of the file reads as zeros either way). Best effort: where the
                // kernel refuses (before 5.14, or out of memory) pages come at first touch.
                let _ = unsafe { raw::madvise(alias.base, len, libc::MADV_POPULATE_WRITE) };
            }
            spans.push(FileSpan {
                first: run.first,
                count: run.count,
                alias,
            });
        }
        Ok(FileSpans { spans })
    }

    /// True when the region has no file-backed page.
    pub(crate) fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The never-faulting alias of page `index`, if it is file-backed.
    pub(crate) fn alias_of(&self, index: u32) -> Option<usize> {
        let span = self.span_of(index)?;
        Some(span.alias.base + (index - span.first) as usize * PAGE_SIZE)
    }

    /// Whether any of pages `index..index + count` is file-backed.
    pub(crate) fn any_in(&self, index: u32, count: u32) -> bool {
        let end = index.saturating_add(count);
        self.spans
            .iter()
            .any(|span| span.first < end && index < span.first + span.count)
    }

    fn span_of(&self, index: u32) -> Option<&FileSpan> {
        self.spans
            .iter()
            .find(|span| span.first <= index && index - span.first < span.count)
    }

    /// The region's pages as registration runs `(first, count, file_backed)`, in order,
    /// covering all `pages`.
    pub(crate) fn runs(&self, pages: u32) -> Vec<(u32, u32, bool)> {
        let mut runs = Vec::with_capacity(2 * self.spans.len() + 1);
        let mut at = 0u32;
        for span in &self.spans {
            if span.first > at {
                runs.push((at, span.first - at, false));
            }
            runs.push((span.first, span.count, true));
            at = span.first + span.count;
        }
        if at < pages {
            runs.push((at, pages - at, false));
        }
        runs
    }
}

/// Address and length of pages `first..first + count` of the region at `base`.
pub(crate) fn span_range(base: usize, first: u32, count: u32) -> (usize, usize) {
    (
        base + first as usize * PAGE_SIZE,
        count as usize * PAGE_SIZE,
    )
}
