//! The service threads' scheduling (docs/architecture.md, "Scheduling"): by default the data
//! path (transport threads, fault readers) runs `SCHED_FIFO` where the process may, the
//! driver and monitor at nice -20, the application's own threads are left alone; a process
//! without the privilege runs all the same, at the closest priority allowed, and says so once.

use std::process::Command;
use std::time::Duration;

use dsm::{Config, Consistency, Node, ServicePriority};

use crate::util::{dsm_run, run_bounded, run_child_nodes, text};

/// `SCHED_FIFO`, as `/proc/<pid>/task/<tid>/sched` prints the policy.
const FIFO: &str = "1";
const NORMAL: &str = "0";

/// Runs on every node: touches a page of every other node (so every thread has run), then
/// prints what `Stats` says and each of its threads' policy and nice value.
#[test]
#[ignore = "a node program: run by the tests below under dsm-run"]
fn child_report_service_threads() {
    let node = Node::join(Config::from_env().expect("config")).expect("join");
    let (rank, size) = (node.rank() as usize, node.size() as usize);
    let region = node
        .alloc::<u64>("sched", 512 * size, Consistency::Sequential)
        .expect("alloc");
    region.set(rank * 512, rank as u64 + 1);
    node.barrier().expect("barrier");
    for other in 0..size {
        assert_eq!(region.get(other * 512), other as u64 + 1);
    }
    node.barrier().expect("barrier");
    let priority = match node.stats().service_priority {
        ServicePriority::Realtime => "realtime".to_owned(),
        ServicePriority::Nice(n) => format!("nice {n}"),
    };
    println!("rank {rank}: service priority {priority}");
    // A transport thread that just polled (after the barrier) may still poll at normal
    // priority for `DSM_SPIN_US`, and is real-time again before it sleeps: look after that.
    std::thread::sleep(Duration::from_millis(50));
    for (name, policy, nice) in threads() {
        println!("rank {rank}: thread {name} policy {policy} nice {nice}");
    }
    node.leave().expect("leave");
}

/// Every thread of this process: name, policy and nice value, from `/proc`.
fn threads() -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = task.expect("task").path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        let Ok(sched) = std::fs::read_to_string(path.join("sched")) else {
            continue;
        };
        let field = |key: &str| {
            sched
                .lines()
                .find(|l| l.split(':').next().map(str::trim) == Some(key))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let nice = i32::try_from(field("prio").parse::<i64>().unwrap_or(120) - 120)
            .expect("nice fits")
            .to_string();
        found.push((name.trim().to_owned(), field("policy"), nice));
    }
    found
}

/// The policy and nice value printed for threads of rank `rank` whose name starts with
/// `prefix`.
fn printed<'a>(out: &'a str, rank: u32, prefix: &str) -> Vec<(&'a str, &'a str)> {
    let start = format!("rank {rank}: thread {prefix}");
    out.lines()
        .filter_map(|l| l.find(&start).map(|i| &l[i..]))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            (words[5], words[7])
        })
        .collect()
}

/// What every node printed agrees with `priority` (`"realtime"` or `"nice N"`): the data
/// path's policy and nice value follow it, the driver runs normal at `driver_nice`, the
/// application's thread is untouched.
fn assert_threads(out: &str, nodes: u32, priority: &str, driver_nice: &str) {
    for rank in 0..nodes {
        assert!(
            out.contains(&format!("rank {rank}: service priority {priority}")),
            "rank {rank} should run its service threads at {priority}: {out}"
        );
        // The TCP thread, and the shared-memory thread (same-host peers, the default
        // transport) or the fault reader (thread delivery): two at least either way.
        let data_path = [
            printed(out, rank, "dsm-tcp"),
            printed(out, rank, "dsm-shm"),
            printed(out, rank, "dsm-uffd"),
        ]
        .concat();
        assert!(
            data_path.len() >= 2,
            "rank {rank}'s data path threads: {out}"
        );
        for (policy, nice) in data_path {
            match priority.strip_prefix("nice ") {
                None => assert_eq!(policy, FIFO, "rank {rank}: {out}"),
                Some(n) => assert_eq!((policy, nice), (NORMAL, n), "rank {rank}: {out}"),
            }
        }
        let driver = printed(out, rank, "dsm-driver");
        assert_eq!(driver.len(), 1, "rank {rank}'s driver: {out}");
        assert_eq!(
            driver[0],
            (NORMAL, driver_nice),
            "rank {rank}'s driver: {out}"
        );
        let application = printed(out, rank, "scheduling::");
        assert!(!application.is_empty(), "rank {rank}'s own thread: {out}");
        assert!(
            application.iter().all(|&t| t == (NORMAL, "0")),
            "the application's threads keep their priority: {out}"
        );
    }
}

#[test]
fn the_data_path_runs_real_time_where_allowed_and_the_application_is_left_alone() {
    let out = run_child_nodes("scheduling::child_report_service_threads", 2, &[]);
    // Real-time needs CAP_SYS_NICE or RLIMIT_RTPRIO: whichever this process had, the nodes
    // say what they got, and their threads agree with it.
    let (priority, driver) = if out.contains("service priority realtime") {
        ("realtime", "-20")
    } else {
        assert!(out.contains("dsm: service threads run at"), "{out}");
        ("nice 0", "0")
    };
    assert_threads(&out, 2, priority, driver);
}

#[test]
fn a_nice_value_asked_is_what_every_service_thread_gets() {
    let env = [("DSM_SERVICE_PRIORITY", "5")];
    let out = run_child_nodes("scheduling::child_report_service_threads", 2, &env);
    assert_threads(&out, 2, "nice 5", "5");
    assert!(!out.contains("dsm: service threads run at"), "{out}");
}

/// Runs the child on 2 nodes under `setpriv`, without `CAP_SYS_NICE` and with
/// `RLIMIT_RTPRIO` and `RLIMIT_NICE` at 0 (an unprivileged user's defaults); `None` when this
/// process cannot drop capabilities (not root, or no `setpriv`): the caller then skips,
/// saying so.
fn without_cap_sys_nice() -> Option<String> {
    // SAFETY: geteuid takes no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let setpriv = Command::new("setpriv").arg("--version").output();
    if !root || setpriv.is_err() {
        eprintln!(
            "SKIP: dropping CAP_SYS_NICE needs root and setpriv (util-linux); this test \
             checked nothing here"
        );
        return None;
    }
    let (out, _) = run_bounded(
        Command::new("prlimit")
            .args(["--rtprio=0:0", "--nice=0:0", "--"])
            .args([
                "setpriv",
                "--bounding-set",
                "-sys_nice",
                "--inh-caps",
                "-sys_nice",
            ])
            .arg(dsm_run())
            .args(["-n", "2", "--timeout-secs", "60", "--"])
            .arg(std::env::current_exe().expect("test binary"))
            .args([
                "--ignored",
                "--exact",
                "--nocapture",
                "scheduling::child_report_service_threads",
            ]),
        Duration::from_secs(90),
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    Some(all)
}

#[test]
fn without_the_privilege_nodes_run_at_normal_priority_and_say_so_once() {
    let Some(out) = without_cap_sys_nice() else {
        return;
    };
    assert_threads(&out, 2, "nice 0", "0");
    for rank in 0..2 {
        let notices = out
            .lines()
            .filter(|l| l.starts_with(&format!("[{rank}]")) && l.contains("service threads run at"))
            .count();
        assert!(notices <= 1, "rank {rank} says it at most once: {out}");
    }
    assert!(
        out.contains("dsm: service threads run at nice 0, not real-time priority"),
        "{out}"
    );
}
