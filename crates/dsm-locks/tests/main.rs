//! dsm-locks integration tests: one binary (see STYLE.md), one module per area.

mod cluster;
mod table;
mod tcp;
