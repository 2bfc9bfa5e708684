//! Clusters started by hand for the shared-memory tests (not by dsm-run, so that one node
//! can run as another user or die alone), what their nodes print, and /dev/shm.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::{finish_all, free_address, printed_counter};

/// User and group nobody.
pub const NOBODY: &str = "65534";

/// A cluster of `size` nodes on this host, each running the node program `child` under
/// `DSM_TRANSPORT=transport`; rank `nobody`, if any, runs as user nobody.
pub struct Launch<'a> {
    pub child: &'a str,
    pub transport: &'a str,
    pub size: u32,
    pub nobody: Option<u32>,
    /// More environment for every node.
    pub env: &'a [(&'a str, &'a str)],
}

/// Starts every node and waits for each (bounded): (success, output) by rank.
pub fn run(launch: &Launch<'_>) -> Vec<(bool, String)> {
    let coordinator = free_address();
    // In the environment, not in a per-user key file: user nobody has none (and no home).
    let key = format!("shm tests {coordinator} {}", std::process::id());
    let nodes: Vec<Child> = (0..launch.size)
        .map(|rank| start(launch, rank, &coordinator, &key))
        .collect();
    finish_all(nodes, Duration::from_secs(60))
}

fn start(launch: &Launch<'_>, rank: u32, coordinator: &str, key: &str) -> Child {
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = if launch.nobody == Some(rank) {
        let mut setpriv = Command::new("setpriv");
        setpriv.args(as_nobody()).arg(exe);
        setpriv
    } else {
        Command::new(exe)
    };
    cmd.args(["--ignored", "--exact", "--nocapture", launch.child])
        .env("DSM_RANK", rank.to_string())
        .env("DSM_SIZE", launch.size.to_string())
        .env("DSM_COORDINATOR", coordinator)
        .env("DSM_TRANSPORT", launch.transport)
        .env("DSM_CLUSTER_KEY", key)
        .envs(launch.env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a node")
}

/// `setpriv` arguments that run the rest of the command as user and group nobody, without
/// supplementary groups (leaving uid 0 also drops every capability).
fn as_nobody() -> [String; 4] {
    [
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".to_owned(),
        "--".to_owned(),
    ]
}

/// Whether this test binary can run as user nobody: needs root, `setpriv` (util-linux) and
/// a binary nobody may execute. Says loudly why not.
pub fn can_run_as_nobody(test: &str) -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let exe = std::env::current_exe().expect("test binary");
    let listed = root
        && Command::new("setpriv")
            .args(as_nobody())
            .arg(&exe)
            .arg("--list")
            .output()
            .is_ok_and(|out| out.status.success());
    if !listed {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: cannot run {} as user nobody (needs root, setpriv from util-linux, \
             and a path nobody may execute); this test checked nothing here",
            exe.display()
        );
    }
    listed
}

/// The counters of a node's stats line (`rank R stats {json}`) this module looks at.
#[derive(Debug)]
pub struct Counters {
    pub shm_peers: u64,
    pub pages_fetched: u64,
    pub bytes_received: u64,
    pub diffs_sent: u64,
    pub diffs_merged_in_place: u64,
    pub pages_mapped: u64,
}

impl Counters {
    pub fn of(out: &str, rank: usize) -> Counters {
        let field = |name: &str| printed_counter(out, rank, name);
        Counters {
            shm_peers: field("shm_peers"),
            pages_fetched: field("pages_fetched"),
            bytes_received: field("bytes_received"),
            diffs_sent: field("diffs_sent"),
            diffs_merged_in_place: field("diffs_merged_in_place"),
            pages_mapped: field("pages_mapped"),
        }
    }

    /// Whether the data of the pages fetched came in messages: at least a page of bytes
    /// received per page.
    pub fn data_in_messages(&self) -> bool {
        self.bytes_received >= self.pages_fetched * 4096
    }
}

/// Names in /dev/shm now.
pub fn dev_shm() -> BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Nothing appeared in /dev/shm since `before`: segments are memfds passed over Unix
/// sockets, so even a crash leaves no name behind.
pub fn assert_nothing_left(before: &BTreeSet<String>, what: &str) {
    let new: Vec<_> = dev_shm().difference(before).cloned().collect();
    assert!(new.is_empty(), "{what} left {new:?} in /dev/shm");
}

/// The number after `tag` on the line of `out` that has it.
pub fn number_after(out: &str, tag: &str) -> u128 {
    out.lines()
        .find_map(|l| l.find(tag).map(|i| &l[i + tag.len()..]))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("no `{tag}<number>` in {out}"))
}
