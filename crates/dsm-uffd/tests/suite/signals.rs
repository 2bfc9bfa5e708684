//! What SIGBUS delivery does with everything that is not a servable fault, checked in child
//! processes (the handler is process-wide and a failed fault kills the process):
//! - a SIGBUS outside every region reaches the handler installed before ours;
//! - a resolver that answers `Fail` kills the process (SIGBUS; SIGABRT under thread
//!   delivery) after saying so on stderr, instead of hanging.

use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dsm_uffd::{Delivery, Fault, FaultResolver, FaultServer, Resolution, UffdRegion};
use dsm_wire::PAGE_SIZE;

use super::common::{LocalSource, page_of, test_address};

/// Runs the ignored test `name` of this binary in a child process.
fn run_child(name: &str) -> Output {
    Command::new(std::env::current_exe().expect("own path"))
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .expect("spawn child")
}

static EARLIER_HANDLER_RAN: AtomicBool = AtomicBool::new(false);

/// The application's own SIGBUS handler: repairs the faulting page with anonymous memory.
extern "C" fn earlier_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    EARLIER_HANDLER_RAN.store(true, Ordering::SeqCst);
    // SAFETY: the kernel's siginfo for a SIGBUS; the page is the child's own file mapping,
    // replaced by anonymous memory (mmap is async-signal-safe).
    unsafe {
        let page = ((*info).si_addr() as usize) & !(PAGE_SIZE - 1);
        libc::mmap(
            page as *mut libc::c_void,
            PAGE_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        );
    }
}

#[test]
#[ignore = "run in a child process by a_sigbus_outside_every_region_reaches_the_earlier_handler"]
fn child_chains_foreign_sigbus() {
    // SAFETY: installs a valid SA_SIGINFO handler before the engine installs its own.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = earlier_handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        assert_eq!(
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()),
            0
        );
    }
    let region = Arc::new(UffdRegion::new(test_address(40), 4, Delivery::Signal).unwrap());
    let source = Arc::new(LocalSource::new(4));
    let _engine = FaultServer::start(Arc::clone(&region), source.clone()).unwrap();
    // A shared mapping of an empty file: touching it raises SIGBUS (beyond end of file).
    // SAFETY: a fresh memfd of size 0 mapped anywhere; touched only below.
    let foreign = unsafe {
        let fd = libc::memfd_create(c"empty".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0);
        let map = libc::mmap(
            std::ptr::null_mut(),
            PAGE_SIZE,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        );
        assert_ne!(map, libc::MAP_FAILED);
        map.cast::<u8>()
    };
    // SAFETY: mapped above; the earlier handler repairs the page, then the read succeeds.
    let byte = unsafe { foreign.read_volatile() };
    assert_eq!(byte, 0);
    assert!(
        EARLIER_HANDLER_RAN.load(Ordering::SeqCst),
        "the earlier handler ran"
    );
    assert_eq!(
        page_of(&region, 1),
        source.home.page(1),
        "region faults still served"
    );
    println!("CHAINED OK");
}

#[test]
fn a_sigbus_outside_every_region_reaches_the_earlier_handler() {
    let output = run_child("suite::signals::child_chains_foreign_sigbus");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("CHAINED OK"),
        "child: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Gives up on every fault.
struct Refuse;

impl FaultResolver for Refuse {
    fn resolve(&self, _: Fault, _: &UffdRegion) -> Resolution {
        Resolution::Fail
    }
}

fn touch_with_refusing_resolver(delivery: Delivery, slot: usize) {
    let region = Arc::new(UffdRegion::new(test_address(slot), 1, delivery).unwrap());
    let _engine = FaultServer::start(Arc::clone(&region), Arc::new(Refuse)).unwrap();
    println!("TOUCHING");
    let byte = page_of(&region, 0)[0];
    println!("SURVIVED {byte}");
}

#[test]
#[ignore = "run in a child process by a_failed_fault_kills_the_process"]
fn child_fails_under_signal_delivery() {
    touch_with_refusing_resolver(Delivery::Signal, 41);
}

#[test]
#[ignore = "run in a child process by a_failed_fault_kills_the_process"]
fn child_fails_under_thread_delivery() {
    touch_with_refusing_resolver(Delivery::Thread, 42);
}

#[test]
fn a_failed_fault_kills_the_process() {
    use std::os::unix::process::ExitStatusExt;
    for (child, signal) in [
        ("child_fails_under_signal_delivery", libc::SIGBUS),
        ("child_fails_under_thread_delivery", libc::SIGABRT),
    ] {
        let output = run_child(&format!("suite::signals::{child}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stdout.contains("TOUCHING"),
            "{child} reached the access: {stdout}"
        );
        assert!(
            !stdout.contains("SURVIVED"),
            "{child} must not read the page: {stdout}"
        );
        assert_eq!(
            output.status.signal(),
            Some(signal),
            "{child}: {}",
            output.status
        );
        assert!(
            stderr.contains("could not be served"),
            "{child} says why: {stderr}"
        );
    }
}
