//! The smallest dsm program: join, pass some barriers, print the stats, leave.
//!
//! ```sh
//! dsm-run -n 4 -- target/release/examples/hello --iterations 10 --sleep-ms 20
//! ```

use std::time::Duration;

mod common;

fn main() {
    common::exit_on_error(run);
}

fn run() -> dsm::Result<()> {
    let iterations = common::number("--iterations", 3u64);
    let sleep = Duration::from_millis(common::number("--sleep-ms", 0));
    let node = dsm::Node::join(dsm::Config::from_env()?)?;
    println!("rank {} of {} joined", node.rank(), node.size());
    for i in 0..iterations {
        std::thread::sleep(sleep);
        node.barrier()?;
        if node.rank() == 0 && (i + 1) % 10 == 0 {
            println!("barrier {} passed", i + 1);
        }
    }
    println!("rank {} done: {}", node.rank(), node.stats());
    node.leave()
}
