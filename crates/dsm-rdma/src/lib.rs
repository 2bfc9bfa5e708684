//! RDMA verbs transport of dsm (rdma-sys), used on Soft-RoCE in tests
