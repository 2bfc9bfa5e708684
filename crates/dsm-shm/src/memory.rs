//! The memfd holding one pair's two rings, and its mapping.
//!
//! ```text
//! 0    header line: magic u64, version u32, cells u32 (per ring)
//! 64   ring 0: offerer → accepter
//! 64 + ring_bytes: ring 1: accepter → offerer
//! ```
//!
//! The memory is a memfd (`MFD_CLOEXEC`), never a file: it has no name in `/dev/shm` or
//! anywhere, and is freed when the last descriptor and mapping go, crash or not. It is sealed
//! against shrinking and growing before it is offered, so the peer cannot truncate it under
//! this process's mapping (which would turn our next access into SIGBUS); the receiver checks
//! the seals and the size before it maps anything.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

use crate::primitive::Ordering;
use crate::ring::{CELL_BYTES, Geometry, RingArea};
use crate::sys::Mapping;
use crate::{Error, Result};

/// First word of the memory: "dsm-shm1" as little-endian bytes.
const MAGIC: u64 = u64::from_le_bytes(*b"dsm-shm1");
/// Layout version, second word.
const VERSION: u32 = 1;
/// Bytes of the header line.
const HEADER_BYTES: usize = CELL_BYTES;
/// Seals the receiver requires: the size is fixed.
const REQUIRED_SEALS: SealFlag = SealFlag::F_SEAL_SHRINK.union(SealFlag::F_SEAL_GROW);

/// Which of the pair's two rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Written by the side that created and offered the memory.
    FromOfferer,
    /// Written by the side that accepted it.
    FromAccepter,
}

/// A pair's shared memory: the memfd and its mapping. Drop order: the mapping, then the fd
/// (either order is safe; the mapping keeps the memory alive on its own).
#[derive(Debug)]
pub struct SharedMemory {
    mapping: Mapping,
    fd: OwnedFd,
    geometry: Geometry,
}

impl SharedMemory {
    /// Bytes of a memory holding two rings of `geometry`.
    pub fn bytes_for(geometry: Geometry) -> usize {
        HEADER_BYTES + 2 * geometry.ring_bytes()
    }

    /// Creates, sizes, seals and maps a fresh memfd with two empty rings of `geometry`.
    pub fn create(geometry: Geometry) -> Result<Self> {
        let fd = memfd_create(
            c"dsm-shm",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(|e| Error::nix("memfd_create", e))?;
        let len = Self::bytes_for(geometry);
        let off = libc::off_t::try_from(len).map_err(|_| Error::Config(format!("{len} bytes")))?;
        nix::unistd::ftruncate(&fd, off).map_err(|e| Error::nix("ftruncate", e))?;
        let seals = REQUIRED_SEALS | SealFlag::F_SEAL_SEAL;
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals))
            .map_err(|e| Error::nix("fcntl(F_ADD_SEALS)", e))?;
        let mapping = Mapping::shared(fd.as_fd(), len).map_err(|e| Error::io("mmap", e))?;
        let memory = SharedMemory {
            mapping,
            fd,
            geometry,
        };
        memory.write_header();
        Ok(memory)
    }

    /// Maps memory received from a peer, after checking that it is sealed, of the size two
    /// rings of `geometry` (as announced) take, and that its header says so too.
    pub fn open(fd: OwnedFd, geometry: Geometry) -> Result<Self> {
        let len = Self::bytes_for(geometry);
        check_file(&fd, len)?;
        let mapping = Mapping::shared(fd.as_fd(), len).map_err(|e| Error::io("mmap", e))?;
        let memory = SharedMemory {
            mapping,
            fd,
            geometry,
        };
        memory.check_header()?;
        Ok(memory)
    }

    /// The memfd, to pass to the peer.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The size of each ring.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// One of the two rings.
    pub fn ring(&self, direction: Direction) -> RingArea<'_> {
        let ring_bytes = self.geometry.ring_bytes();
        let base = HEADER_BYTES
            + match direction {
                Direction::FromOfferer => 0,
                Direction::FromAccepter => ring_bytes,
            };
        let cells = self.geometry.cells() as usize;
        let m = &self.mapping;
        RingArea::new(
            self.geometry,
            m.u64_at(base + Geometry::head_offset()),
            m.u32_at(base + Geometry::state_offset()),
            m.u64_slice(base + Geometry::seq_offset(), cells),
            m.u64_slice(base + self.geometry.data_offset(), cells * CELL_BYTES / 8),
        )
    }

    fn write_header(&self) {
        let words = self.mapping.u64_slice(0, 2);
        words[0].store(MAGIC, Ordering::Relaxed);
        let version = u64::from(VERSION) | u64::from(self.geometry.cells()) << 32;
        words[1].store(version, Ordering::Relaxed);
    }

    fn check_header(&self) -> Result<()> {
        let words = self.mapping.u64_slice(0, 2);
        let (magic, version) = (
            words[0].load(Ordering::Relaxed),
            words[1].load(Ordering::Relaxed),
        );
        let expected = u64::from(VERSION) | u64::from(self.geometry.cells()) << 32;
        if magic != MAGIC || version != expected {
            return Err(Error::BadMemory(format!(
                "header {magic:#x} {version:#x}, expected {MAGIC:#x} {expected:#x}"
            )));
        }
        debug_assert_eq!(self.mapping.len(), Self::bytes_for(self.geometry));
        Ok(())
    }
}

/// Checks a received descriptor before mapping it: a regular file of exactly `len` bytes,
/// sealed against shrinking and growing.
fn check_file(fd: &OwnedFd, len: usize) -> Result<()> {
    let seals = fcntl(fd, FcntlArg::F_GET_SEALS)
        .map_err(|e| Error::BadMemory(format!("not a sealable memfd: F_GET_SEALS: {e}")))?;
    let seals = SealFlag::from_bits_truncate(seals);
    if !seals.contains(REQUIRED_SEALS) {
        return Err(Error::BadMemory(format!(
            "seals {seals:?} lack {REQUIRED_SEALS:?}"
        )));
    }
    let stat = nix::sys::stat::fstat(fd).map_err(|e| Error::nix("fstat", e))?;
    let size = usize::try_from(stat.st_size).unwrap_or(usize::MAX);
    if size != len {
        return Err(Error::BadMemory(format!("{size} bytes, expected {len}")));
    }
    Ok(())
}
