//! Distributed shared memory over userfaultfd and RDMA/TCP
