//! A remote fetch under SIGBUS delivery: the faulting thread parks on a preallocated slot that
//! a "transport" thread fills, the way the node runtime waits for the network.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use dsm_uffd::{
    Delivery, Doorbell, Error, Fault, FaultKind, FaultResolver, FaultServer, PageSlots, Resolution,
    SlotId, UffdRegion,
};
use dsm_wire::PAGE_SIZE;

use super::common::{Home, page_of, test_address, write_byte};

const PAGES: u32 = 512;

/// Everything allocated before the first fault.
struct Remote {
    slots: PageSlots,
    requests: ArrayQueue<(u32, SlotId)>,
    doorbell: Doorbell,
}

impl FaultResolver for Remote {
    fn resolve(&self, fault: Fault, region: &UffdRegion) -> Resolution {
        if fault.kind == FaultKind::WriteProtect {
            return if region.upgrade(fault.page).is_ok() {
                Resolution::Resolved
            } else {
                Resolution::Fail
            };
        }
        let Ok(id) = self.slots.claim() else {
            return Resolution::Retry;
        };
        if self.requests.push((fault.page, id)).is_err() {
            return Resolution::Fail;
        }
        self.doorbell.ring();
        match self.slots.wait(id, Duration::from_secs(10)) {
            Ok(page) if region.install_read_only(fault.page, &page).is_ok() => Resolution::Resolved,
            _ => Resolution::Fail,
        }
    }
}

/// The transport thread: waits on the doorbell, "fetches" each requested page from the home.
fn transport(remote: &Remote, home: &Home, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        remote
            .doorbell
            .wait(Duration::from_millis(50))
            .expect("doorbell");
        while let Some((page, id)) = remote.requests.pop() {
            assert!(
                remote.slots.fill(id, home.page(page)),
                "the waiter is still there"
            );
        }
    }
}

#[test]
fn faulting_threads_wait_in_the_handler_for_pages_another_thread_delivers() {
    let region = Arc::new(UffdRegion::new(test_address(20), PAGES, Delivery::Signal).unwrap());
    let remote = Arc::new(Remote {
        slots: PageSlots::new(8),
        requests: ArrayQueue::new(8),
        doorbell: Doorbell::new().unwrap(),
    });
    let home = Arc::new(Home::new(PAGES as usize));
    let stop = Arc::new(AtomicBool::new(false));
    let engine = FaultServer::start(Arc::clone(&region), remote.clone()).unwrap();
    let server = {
        let (remote, home, stop) = (remote.clone(), home.clone(), stop.clone());
        std::thread::spawn(move || transport(&remote, &home, &stop))
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (region, home) = (Arc::clone(&region), home.clone());
            std::thread::spawn(move || {
                for index in 0..PAGES {
                    assert_eq!(page_of(&region, index), home.page(index), "page {index}");
                }
            })
        })
        .collect();
    for reader in readers {
        reader.join().expect("reader");
    }
    write_byte(&region, 0, 0, 1);
    assert_eq!(page_of(&region, 0)[0], 1);
    stop.store(true, Ordering::Release);
    server.join().expect("transport thread");
    drop(engine);
}

#[test]
fn a_slot_times_out_and_refuses_a_late_page() {
    let slots = PageSlots::new(1);
    let id = slots.claim().unwrap();
    assert!(
        matches!(slots.claim(), Err(Error::Exhausted { .. })),
        "one slot only"
    );
    assert!(matches!(
        slots.wait(id, Duration::from_millis(20)),
        Err(Error::Timeout { .. })
    ));
    assert!(
        !slots.fill(id, &[1; PAGE_SIZE]),
        "the waiter gave up: the page is refused"
    );
    let again = slots.claim().expect("the slot was freed");
    assert_ne!(again, id, "a new generation");
    assert!(slots.fill(again, &[2; PAGE_SIZE]));
    assert_eq!(slots.wait(again, Duration::from_secs(1)).unwrap()[100], 2);
    let failed = slots.claim().unwrap();
    assert!(slots.fail(failed));
    assert_eq!(
        slots.wait(failed, Duration::from_secs(1)).err(),
        Some(Error::FetchFailed)
    );
    assert_eq!(SlotId::from_token(failed.to_token()), failed);
}

/// A page marked ready from another thread ends the wait whether the waiter still spins or
/// already sleeps (the filler wakes only a sleeper: a lost wake-up would time out here).
#[test]
fn a_slot_marked_ready_ends_a_spinning_or_a_sleeping_wait() {
    let slots = std::sync::Arc::new(PageSlots::new(1));
    for (spin, delay) in [
        (Duration::from_secs(5), Duration::from_millis(2)),
        (Duration::ZERO, Duration::from_millis(2)),
        (Duration::from_micros(200), Duration::from_millis(5)),
    ] {
        for _ in 0..50 {
            let id = slots.claim().unwrap();
            let marker = std::sync::Arc::clone(&slots);
            let filler = std::thread::spawn(move || {
                std::thread::sleep(delay / 50);
                assert!(marker.mark_ready(id));
            });
            let started = std::time::Instant::now();
            let waited = slots.wait_spinning(id, spin, Duration::from_secs(5));
            assert!(waited.is_ok(), "spin {spin:?}: {waited:?}");
            drop(waited);
            assert!(started.elapsed() < Duration::from_secs(4), "spin {spin:?}");
            filler.join().unwrap();
        }
    }
}
