//! Criterion bench `tcp_page` (issue #4): not written yet.

fn main() {
    eprintln!("bench tcp_page is not written yet (issue #4)");
    std::process::exit(1);
}
