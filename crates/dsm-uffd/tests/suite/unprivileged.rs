//! As an ordinary user (a child process that dropped root), faults are still served: the
//! engine falls back to a `UFFD_USER_MODE_ONLY` uffd.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use dsm_uffd::{Delivery, Features, Source};

use super::common::test_address;
use super::delivery::{Setup, read_write_invalidate};

const CHILD_TEST: &str = "suite::unprivileged::child_body";
const NOBODY: u32 = 65534;

/// The body the dropped-privilege child runs: both deliveries on a 4 MiB region.
#[test]
#[ignore = "run as an ordinary user by ordinary_users_get_faults_served"]
fn child_body() {
    let features = Features::probe().expect("an ordinary user gets a uffd");
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if uid != 0 {
        assert_ne!(
            features.source,
            Source::Syscall,
            "uid {uid} should not get full rights"
        );
    }
    println!("child uid {uid}: uffd source {:?}", features.source);
    for (delivery, slot) in [(Delivery::Signal, 30), (Delivery::Thread, 31)] {
        let setup = Setup {
            delivery,
            workers: 1,
            shared: false,
        };
        read_write_invalidate(setup, test_address(slot), 1024);
    }
    let shared = Setup {
        delivery: Delivery::Signal,
        workers: 0,
        shared: true,
    };
    read_write_invalidate(shared, test_address(32), 1024);
}

#[test]
fn ordinary_users_get_faults_served() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("NOTE: already an ordinary user: running the body in-process, no child");
        child_body();
        return;
    }
    let exe = copy_of_this_test_binary();
    let output = Command::new(&exe)
        .args([
            "--exact",
            CHILD_TEST,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_remove("RUST_TEST_THREADS")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("spawn the unprivileged child");
    let _ = std::fs::remove_dir_all(exe.parent().expect("temp dir"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "child failed: {}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran its test: {stdout}"
    );
    assert!(
        stdout.contains("uffd source UserModeOnly") || stdout.contains("uffd source Device"),
        "nobody gets a user-mode-only uffd here: {stdout}"
    );
}

/// The test binary copied to a directory any user can read (the target dir may not be).
fn copy_of_this_test_binary() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("dsm-uffd-child-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let exe = dir.join("dsm-uffd-tests");
    std::fs::copy(std::env::current_exe().expect("own path"), &exe).expect("copy test binary");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod exe");
    exe
}
