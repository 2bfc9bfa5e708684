//! Criterion bench `rdma_page` (issue #7): not written yet.

fn main() {
    eprintln!("bench rdma_page is not written yet (issue #7)");
    std::process::exit(1);
}
