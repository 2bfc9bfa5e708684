//! Trust with real processes on loopback: who may join, where the key comes from, and what a
//! node says on stderr by default (issue 12). Frame tampering after the handshake is tested
//! against the transport itself (dsm-tcp-fallback `tests/hostile.rs`), a replayed Join
//! against the boot-up (`membership::bootstrap` unit tests), with a recording proxy.

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{
    KillOnDrop, dsm_run, example, finish, finish_all, free_address, run_bounded, signal, text,
};

const KEY: &str = "a passphrase only the honest nodes know";

/// A scratch directory standing in for `$XDG_CONFIG_HOME`, removed on drop.
struct ConfigHome(PathBuf);

impl ConfigHome {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dsm-security-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        ConfigHome(dir)
    }
    fn key_file(&self) -> PathBuf {
        self.0.join("dsm").join("cluster.key")
    }
}

impl Drop for ConfigHome {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts rank `rank` of `size` of example `program` directly, with no key of the test's
/// environment: only `env` says where the key comes from (the key file lives in `home`).
fn start(
    program: &str,
    (rank, size): (u32, u32),
    coordinator: &str,
    home: &ConfigHome,
    args: &[&str],
    env: &[(&str, &str)],
) -> Child {
    Command::new(example(program))
        .args(args)
        .env_remove("DSM_CLUSTER_KEY")
        .env_remove("DSM_INSECURE")
        .env_remove("DSM_LOG")
        .env("XDG_CONFIG_HOME", &home.0)
        .env("DSM_RANK", rank.to_string())
        .env("DSM_SIZE", size.to_string())
        .env("DSM_COORDINATOR", coordinator)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start example")
}

/// Waits until something listens on `address` (rank 0's coordinator socket). The probe
/// connection is one more stranger rank 0 rejects.
fn wait_listening(address: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(address).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {address}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_intruder_without_the_key_cannot_join_and_the_cluster_completes() {
    let home = ConfigHome::new("intruder");
    let coordinator = free_address();
    let keyed = [("DSM_CLUSTER_KEY", KEY), ("DSM_JOIN_TIMEOUT_MS", "20000")];
    let args = ["--increments", "50"];
    let rank0 = KillOnDrop::new(start("counter", (0, 3), &coordinator, &home, &args, &keyed));
    wait_listening(&coordinator);
    // Knows the coordinator, claims rank 1, has no key (the default before issue 12), and
    // then one with a wrong key.
    for env in [[("DSM_INSECURE", "1")], [("DSM_CLUSTER_KEY", "a guess")]] {
        let intruder = start("counter", (1, 3), &coordinator, &home, &args, &env);
        let (ok, out) = finish(intruder, Duration::from_secs(20));
        assert!(!ok, "the intruder ran: {out}");
        assert!(out.contains("rejected our Join"), "{out}");
    }
    let honest = [1, 2].map(|r| start("counter", (r, 3), &coordinator, &home, &args, &keyed));
    let nodes = std::iter::once(rank0.into_child()).chain(honest).collect();
    let outcomes = finish_all(nodes, Duration::from_secs(60));
    let (ok, out0) = &outcomes[0];
    assert!(ok, "rank 0: {out0}");
    assert!(
        out0.contains("counter check passed: 150 increments"),
        "{out0}"
    );
    let rejected = out0
        .lines()
        .filter(|l| l.contains("rejected a connection to the coordinator"))
        .count();
    // The probe, the keyless intruder and the one with a wrong key, each on one line.
    assert!(
        rejected >= 3,
        "rank 0 reported {rejected} rejections: {out0}"
    );
    for (ok, out) in &outcomes[1..] {
        assert!(ok, "{out}");
    }
}

#[test]
fn sixteen_idle_connections_do_not_delay_a_4_node_boot() {
    let home = ConfigHome::new("idle");
    let coordinator = free_address();
    let env = [("DSM_CLUSTER_KEY", KEY), ("DSM_JOIN_TIMEOUT_MS", "15000")];
    let args = ["--iterations", "3"];
    let started = Instant::now();
    let rank0 = start("hello", (0, 4), &coordinator, &home, &args, &env);
    wait_listening(&coordinator);
    // Connected and silent: served one after the other, each would hold rank 0 for 2 s.
    let idle: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(&coordinator).unwrap())
        .collect();
    let others: Vec<Child> = (1..4)
        .map(|r| start("hello", (r, 4), &coordinator, &home, &args, &env))
        .collect();
    let nodes = std::iter::once(rank0).chain(others).collect();
    for (rank, (ok, out)) in finish_all(nodes, Duration::from_secs(30))
        .iter()
        .enumerate()
    {
        assert!(ok, "rank {rank}: {out}");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "4-node boot took {took:?}");
    drop(idle);
}

#[test]
fn insecure_mode_runs_and_says_so() {
    let home = ConfigHome::new("insecure");
    let coordinator = free_address();
    let env = [("DSM_INSECURE", "1")];
    let children: Vec<Child> = (0..2)
        .map(|r| start("hello", (r, 2), &coordinator, &home, &[], &env))
        .collect();
    for (ok, out) in finish_all(children, Duration::from_secs(30)) {
        assert!(ok, "{out}");
        assert!(
            out.contains("DSM_INSECURE=1: running without a cluster key"),
            "{out}"
        );
    }
    assert!(!home.key_file().exists(), "an insecure run made a key file");
}

#[test]
fn without_a_key_nodes_share_a_private_key_file_and_refuse_an_open_one() {
    let home = ConfigHome::new("keyfile");
    let coordinator = free_address();
    // What mpirun or srun gives: rank and size, no key.
    let children: Vec<Child> = (0..3)
        .map(|r| start("hello", (r, 3), &coordinator, &home, &[], &[]))
        .collect();
    for (ok, out) in finish_all(children, Duration::from_secs(30)) {
        assert!(ok, "{out}");
        assert!(!out.contains("DSM_INSECURE"), "{out}");
    }
    let meta = std::fs::metadata(home.key_file()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let key = std::fs::read_to_string(home.key_file()).unwrap();
    assert_eq!(key.trim().len(), 64, "{key:?}");

    std::fs::set_permissions(home.key_file(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let coordinator = free_address();
    let children: Vec<Child> = (0..2)
        .map(|r| start("hello", (r, 2), &coordinator, &home, &[], &[]))
        .collect();
    for (ok, out) in finish_all(children, Duration::from_secs(30)) {
        assert!(!ok, "ran with a world-readable key file: {out}");
        assert!(out.contains("mode 644"), "{out}");
    }
}

#[test]
fn dsm_run_hands_each_run_a_fresh_key() {
    let run = |env: &[(&str, &str)]| {
        let (out, _) = run_bounded(
            Command::new(dsm_run())
                .env_remove("DSM_CLUSTER_KEY")
                .env_remove("DSM_INSECURE")
                .envs(env.iter().copied())
                .args(["-n", "2", "--", "sh", "-c", "echo key=$DSM_CLUSTER_KEY"]),
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let keys: Vec<String> = stdout
            .lines()
            .filter_map(|l| l.split_once("key=").map(|(_, k)| k.to_owned()))
            .collect();
        assert_eq!(keys.len(), 2, "{stdout}");
        assert_eq!(keys[0], keys[1], "the nodes of one run got different keys");
        keys[0].clone()
    };
    let (first, second) = (run(&[]), run(&[]));
    for key in [&first, &second] {
        assert!(
            key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()),
            "{key:?}"
        );
    }
    assert_ne!(first, second, "two runs got the same key");
    assert_eq!(run(&[("DSM_CLUSTER_KEY", "mine")]), "mine");
    assert_eq!(run(&[("DSM_INSECURE", "1")]), "");
}

#[test]
fn a_dropped_connection_and_a_declared_failure_are_logged_by_default() {
    let home = ConfigHome::new("logged");
    let coordinator = free_address();
    let args = ["--iterations", "100000", "--sleep-ms", "5"];
    let env = [
        ("DSM_CLUSTER_KEY", KEY),
        ("DSM_HEARTBEAT_MS", "100"),
        ("DSM_FAILURE_TIMEOUT_MS", "1000"),
    ];
    let mut children: Vec<Child> = (0..3)
        .map(|r| start("hello", (r, 3), &coordinator, &home, &args, &env))
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let victim = KillOnDrop::new(children.remove(1));
    signal(victim.id(), libc::SIGKILL);
    for (rank, (ok, out)) in [0, 2]
        .into_iter()
        .zip(finish_all(children, Duration::from_secs(20)))
    {
        assert!(!ok, "rank {rank} should fail: {out}");
        let warned = |all: &[&str]| {
            out.lines()
                .any(|l| l.contains("WARN") && all.iter().all(|w| l.contains(w)))
        };
        // The connection: by the transport (a reset) or the runtime (a clean close).
        assert!(
            warned(&["closing connection", "peer=1", "reason="])
                || warned(&["peer connection failed", "node=1", "reason="]),
            "rank {rank}: the dropped connection is not reported: {out}"
        );
        assert!(
            warned(&["declared failed", "failed=1"]),
            "rank {rank}: {out}"
        );
    }
}
