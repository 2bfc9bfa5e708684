//! Criterion bench `locks` (issue #5): not written yet.

fn main() {
    eprintln!("bench locks is not written yet (issue #5)");
    std::process::exit(1);
}
