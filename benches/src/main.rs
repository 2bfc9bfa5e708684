//! `dsm-bench SUITE --json`: one suite per area, each printing one JSON object with its figures,
//! the baselines measured in the same run, and `ratio_*` fields.

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use dsm_bench::suites;

/// The benchmark suites; each lives in its own module.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Suite {
    /// userfaultfd fault service vs bare UFFDIO_COPY (issue #3).
    Uffd,
    /// io_uring TCP page round trip and streaming vs std::net (issue #4).
    Tcp,
    /// Lock and barrier latency vs one transport round trip (issue #5).
    Locks,
    /// Remote read fault over RDMA vs ib_read_lat + local fault (issue #7).
    Rdma,
    /// Jacobi stencil protocol efficiency at 4 nodes (issue #6), and dsm over TCP and over
    /// shared memory against hand-written MPI at 1, 2 and 4 ranks (issues #10, #14).
    Jacobi,
    /// Remote fault, scan, lock hand-off and barrier latency against the round-trip and
    /// local-fault floors, 2 pinned nodes and 4 oversubscribed, over TCP and over shared
    /// memory (issues #10, #14).
    Latency,
    /// Shared files: merge throughput and release-to-acquire latency vs pwrite+fsync (issue #13).
    Views,
}

#[derive(Debug, Parser)]
#[command(name = "dsm-bench", about = "dsm's benchmark suites")]
struct Args {
    /// Which suite to run.
    suite: Suite,
    /// Print one JSON object (the only output format for now; kept for scripts).
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let report = match args.suite {
        Suite::Uffd => suites::uffd::run()?,
        Suite::Tcp => suites::tcp::run()?,
        Suite::Locks => suites::locks::run()?,
        Suite::Rdma => suites::rdma::run()?,
        Suite::Jacobi => suites::jacobi::run()?,
        Suite::Latency => suites::latency::run()?,
        Suite::Views => suites::views::run()?,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
