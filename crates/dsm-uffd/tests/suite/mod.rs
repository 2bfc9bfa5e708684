//! One module per concern; `common` holds the local page source the others serve from.

mod common;
mod delivery;
mod files;
mod page_ops;
mod remote;
mod signals;
mod unprivileged;
mod written;
