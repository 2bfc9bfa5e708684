//! The cluster-wide table of the views of one file, held by the file's master.
//!
//! Writable views are pairwise disjoint: each byte of the file has at most one writer, so merges
//! from different nodes never race on a byte and need no ordering among themselves. Read views
//! never merge, so they may overlap anything; they are recorded only so that their owner can be
//! told apart and closed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::{Error, NodeId, Result};

/// A view's id, unique within one file's table for the life of the table (ids are not reused,
/// so a stale id held by a slow node can never name somebody else's new view).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ViewId(pub u32);

impl fmt::Display for ViewId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What a node may do with an open file or a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Access {
    /// Map read-only; never merges.
    Read,
    /// Map read-write and merge updates into the master copy.
    ReadWrite,
}

/// One view: a byte range of the file and the node that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// The view's id.
    pub id: ViewId,
    /// The node (rank) that defined it.
    pub owner: NodeId,
    /// First byte in the file.
    pub offset: u64,
    /// Length in bytes, never zero.
    pub len: u64,
    /// Whether the owner may merge through it.
    pub access: Access,
}

impl View {
    /// One past the last byte in the file (`offset + len` never overflows: `define` checked).
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }

    /// The file offset of `len` bytes at `offset` within the view, refused when they do not lie
    /// inside it.
    pub fn file_offset(&self, offset: u64, len: u64) -> Result<u64> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.offset + offset),
            _ => Err(Error::RunOutOfBounds {
                offset,
                len,
                view_len: self.len,
            }),
        }
    }
}

/// Every view of one file. The file does not grow: a view must lie inside `file_len`.
#[derive(Debug, Clone)]
pub struct ViewTable {
    file_len: u64,
    next_id: u32,
    views: HashMap<ViewId, View>,
    /// Writable views by offset. They are disjoint, so their ends increase with their offsets
    /// and one lookup finds any overlap.
    writers: BTreeMap<u64, ViewId>,
}

impl ViewTable {
    /// An empty table for a file of `file_len` bytes.
    pub fn new(file_len: u64) -> Self {
        Self {
            file_len,
            next_id: 1,
            views: HashMap::new(),
            writers: BTreeMap::new(),
        }
    }

    /// Length of the file the views cut.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Defines a writable view of `len` bytes at `offset` owned by `owner`.
    ///
    /// Refuses a zero length, an overflowing or out-of-file range, and any overlap with a
    /// writable view of any node (the error names that view and its owner). A refused define
    /// changes nothing.
    pub fn define(&mut self, owner: NodeId, offset: u64, len: u64) -> Result<ViewId> {
        self.check_range(offset, len)?;
        if let Some(other) = self.writer_overlapping(offset, len) {
            return Err(Error::Overlap {
                offset,
                len,
                other: other.id,
                other_offset: other.offset,
                other_len: other.len,
                owner: other.owner,
            });
        }
        let id = self.insert(owner, offset, len, Access::ReadWrite)?;
        self.writers.insert(offset, id);
        Ok(id)
    }

    /// Defines a read-only view: the same range checks as [`define`](Self::define), but it may
    /// overlap any view since it never merges.
    pub fn define_read(&mut self, owner: NodeId, offset: u64, len: u64) -> Result<ViewId> {
        self.check_range(offset, len)?;
        self.insert(owner, offset, len, Access::Read)
    }

    /// The view with this id.
    pub fn get(&self, id: ViewId) -> Option<&View> {
        self.views.get(&id)
    }

    /// The view with this id, if `node` owns it.
    pub fn owned(&self, id: ViewId, node: NodeId) -> Result<&View> {
        let view = self.views.get(&id).ok_or(Error::UnknownView(id))?;
        if view.owner != node {
            return Err(Error::NotOwner {
                view: id,
                owner: view.owner,
                node,
            });
        }
        Ok(view)
    }

    /// Closes a view; its range becomes free for a new writer.
    pub fn close(&mut self, id: ViewId) -> Result<View> {
        let view = self.views.remove(&id).ok_or(Error::UnknownView(id))?;
        if view.access == Access::ReadWrite {
            self.writers.remove(&view.offset);
        }
        Ok(view)
    }

    /// Closes every view `node` owns (the node closed the file, or failed) and returns them.
    pub fn remove_owner(&mut self, node: NodeId) -> Vec<View> {
        let mut ids: Vec<ViewId> = self
            .views
            .values()
            .filter(|v| v.owner == node)
            .map(|v| v.id)
            .collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| self.close(id).ok())
            .collect()
    }

    /// Every view, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &View> {
        self.views.values()
    }

    /// Number of views.
    pub fn len(&self) -> usize {
        self.views.len()
    }

    /// Whether no view is defined.
    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Err(Error::ZeroLength { offset });
        }
        let end = offset
            .checked_add(len)
            .ok_or(Error::RangeOverflow { offset, len })?;
        if end > self.file_len {
            return Err(Error::BeyondEnd {
                offset,
                len,
                file_len: self.file_len,
            });
        }
        Ok(())
    }

    /// The writable view overlapping `offset..offset + len`, if any: the last writer starting
    /// before the range's end is the only candidate, since writers are disjoint and sorted.
    fn writer_overlapping(&self, offset: u64, len: u64) -> Option<&View> {
        let (_, id) = self.writers.range(..offset + len).next_back()?;
        let view = &self.views[id];
        (view.end() > offset).then_some(view)
    }

    fn insert(&mut self, owner: NodeId, offset: u64, len: u64, access: Access) -> Result<ViewId> {
        let id = ViewId(self.next_id);
        self.next_id = self.next_id.checked_add(1).ok_or(Error::ViewIdsExhausted)?;
        let view = View {
            id,
            owner,
            offset,
            len,
            access,
        };
        self.views.insert(id, view);
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_views_do_not_overlap() {
        let mut t = ViewTable::new(100);
        let a = t.define(1, 10, 10).unwrap();
        let b = t.define(2, 20, 5).unwrap();
        let c = t.define(3, 5, 5).unwrap();
        assert_ne!(a, b);
        assert_ne!(b, c);
        assert!(matches!(
            t.define(4, 19, 1),
            Err(Error::Overlap { other, owner: 1, .. }) if other == a
        ));
        // Overlapping two views: the error names one of them.
        assert!(matches!(
            t.define(4, 19, 2),
            Err(Error::Overlap { other, owner: 2, .. }) if other == b
        ));
    }
}
