//! Criterion bench `uffd_fault` (issue #3): not written yet.

fn main() {
    eprintln!("bench uffd_fault is not written yet (issue #3)");
    std::process::exit(1);
}
