//! io_uring TCP transport of dsm
