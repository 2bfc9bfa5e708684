//! File-level views over shared regions (planned)
