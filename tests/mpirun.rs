//! Under the real Open MPI launcher: `mpirun -np 3` on localhost; the nodes take their ranks
//! from `OMPI_COMM_WORLD_RANK/SIZE`.

use std::process::Command;
use std::time::Duration;

use crate::util::{example, run_bounded, text};

#[test]
fn counter_runs_under_mpirun_with_3_ranks() {
    if Command::new("mpirun").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED: mpirun not found (install Debian's openmpi-bin: scripts/install-deps.sh)"
        );
        return;
    }
    let coordinator = crate::util::free_address();
    let mut cmd = Command::new("mpirun");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.arg("--allow-run-as-root");
    }
    cmd.args(["--oversubscribe", "-np", "3", "-x"])
        .arg(format!("DSM_COORDINATOR={coordinator}"))
        .arg(example("counter"))
        .args(["--increments", "50", "--mode", "release"]);
    let (out, _) = run_bounded(&mut cmd, Duration::from_secs(60));
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("counter check passed: 150 increments"),
        "{all}"
    );
    for rank in 0..3 {
        let line = all
            .lines()
            .find(|l| l.contains(&format!("rank {rank}: faults")))
            .unwrap_or_else(|| panic!("no stats line of rank {rank}: {all}"));
        assert!(line.contains(" 50 lock acquires"), "{all}");
    }
}
