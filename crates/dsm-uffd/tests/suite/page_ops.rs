//! Page operations and region set-up: fixed addresses, batches, diffs, probing.

use std::sync::Arc;

use dsm_uffd::{
    Delivery, Error, Fault, FaultKind, FaultServer, Features, Installed, Protection, UffdRegion,
};
use dsm_wire::{DiffRun, PAGE_SIZE};

use super::common::{LocalSource, page_of, test_address, write_byte};

#[test]
fn a_fixed_address_already_taken_is_a_clear_error() {
    let address = test_address(10);
    let _first = UffdRegion::new(address, 4, Delivery::Signal).expect("first region");
    // Overlapping by one page is enough.
    let second = UffdRegion::new(address + 3 * PAGE_SIZE, 4, Delivery::Thread);
    let error = second.expect_err("the range is taken");
    assert_eq!(
        error,
        Error::AddressTaken {
            address: address + 3 * PAGE_SIZE,
            len: 4 * PAGE_SIZE
        }
    );
    assert!(
        error.to_string().contains("overlaps an existing mapping"),
        "{error}"
    );
}

#[test]
fn bad_geometry_is_refused() {
    let address = test_address(11);
    assert!(matches!(
        UffdRegion::new(address + 1, 4, Delivery::Signal),
        Err(Error::BadGeometry { .. })
    ));
    assert!(matches!(
        UffdRegion::new(address, 0, Delivery::Signal),
        Err(Error::BadGeometry { .. })
    ));
}

#[test]
fn the_kernel_offers_what_the_engine_needs() {
    let features = Features::probe().expect("probe");
    assert!(features.write_protect(), "{features:?}");
    assert!(features.sigbus(), "{features:?}");
}

#[test]
fn a_region_has_at_most_one_engine() {
    let region = Arc::new(UffdRegion::new(test_address(12), 4, Delivery::Signal).unwrap());
    let source = Arc::new(LocalSource::new(4));
    let _engine = FaultServer::start(Arc::clone(&region), source.clone()).unwrap();
    assert_eq!(
        FaultServer::start(Arc::clone(&region), source).err(),
        Some(Error::AlreadyServed)
    );
}

#[test]
fn page_operations_check_their_bounds() {
    let region = UffdRegion::new(test_address(13), 4, Delivery::Thread).unwrap();
    let page = [0u8; PAGE_SIZE];
    assert_eq!(
        region.install_read_only(4, &page),
        Err(Error::PageOutOfRange { index: 4, pages: 4 })
    );
    assert!(matches!(
        region.invalidate(2, 3),
        Err(Error::PageOutOfRange { .. })
    ));
    assert!(matches!(
        region.install_run(0, &[0u8; 100], Protection::ReadOnly),
        Err(Error::BadLength { .. })
    ));
}

#[test]
fn a_run_install_skips_present_pages_and_installs_the_rest() {
    let region = Arc::new(UffdRegion::new(test_address(14), 8, Delivery::Signal).unwrap());
    let source = Arc::new(LocalSource::new(8));
    let _engine = FaultServer::start(Arc::clone(&region), source.clone()).unwrap();
    assert_eq!(
        region.install_read_only(2, &[1; PAGE_SIZE]),
        Ok(Installed::New)
    );
    assert_eq!(
        region.install_read_only(2, &[9; PAGE_SIZE]),
        Ok(Installed::AlreadyPresent)
    );
    let run = vec![7u8; 6 * PAGE_SIZE];
    assert_eq!(
        region.install_run(0, &run, Protection::ReadOnly),
        Ok(Installed::AlreadyPresent)
    );
    for index in 0..6 {
        let want = if index == 2 { 1 } else { 7 };
        assert!(
            page_of(&region, index).iter().all(|&b| b == want),
            "page {index}"
        );
    }
    assert_eq!(
        source.counts(),
        (0, 0, 0),
        "no fault: the pages were installed before"
    );
    // Installed read-only: the first write is a write-protect fault.
    write_byte(&region, 4, 0, 1);
    assert_eq!(source.counts(), (0, 0, 1));
}

#[test]
fn twin_diff_and_apply_round_trip_through_a_region() {
    let region = Arc::new(UffdRegion::new(test_address(15), 2, Delivery::Signal).unwrap());
    let source = Arc::new(LocalSource::new(2));
    let _engine = FaultServer::start(Arc::clone(&region), source.clone()).unwrap();
    region.install_read_write(0, &[3; PAGE_SIZE]).unwrap();
    let twin = region.twin(0).unwrap();
    write_byte(&region, 0, 10, 4);
    write_byte(&region, 0, 11, 5);
    write_byte(&region, 0, 4095, 6);
    let runs = region.diff_against(0, &twin).unwrap();
    let got: Vec<(u16, Vec<u8>)> = runs.iter().map(|r| (r.offset, r.bytes.clone())).collect();
    assert_eq!(got, vec![(10, vec![4, 5]), (4095, vec![6])]);

    // The diff applied to another copy reproduces the page, in a region and at a home.
    region.install_read_write(1, &[3; PAGE_SIZE]).unwrap();
    region.apply_diff(1, &runs).unwrap();
    assert_eq!(page_of(&region, 1), page_of(&region, 0));
    let mut home = [3u8; PAGE_SIZE];
    dsm_uffd::apply_diff(&mut home, &runs).unwrap();
    assert_eq!(&home[..], page_of(&region, 0));

    let bad = [DiffRun {
        offset: 4090,
        bytes: vec![0; 7],
    }];
    assert!(matches!(
        region.apply_diff(1, &bad),
        Err(Error::DiffOutOfBounds { .. })
    ));
    assert_eq!(
        page_of(&region, 1),
        page_of(&region, 0),
        "a rejected diff changes nothing"
    );
}

#[test]
fn downgrade_makes_the_next_write_fault_again() {
    let region = Arc::new(UffdRegion::new(test_address(16), 1, Delivery::Thread).unwrap());
    let source = Arc::new(LocalSource::new(1));
    let _engine = FaultServer::start(Arc::clone(&region), source.clone()).unwrap();
    write_byte(&region, 0, 0, 1);
    assert_eq!(source.counts(), (0, 1, 0), "write to a missing page");
    region.downgrade(0).unwrap();
    write_byte(&region, 0, 0, 2);
    assert_eq!(source.counts(), (0, 1, 1), "write after downgrade");
    assert_eq!(page_of(&region, 0)[0], 2);
}

/// A shared region read zero-copy, unmapped with its page cache kept, then read again: the
/// MINOR faults are served from the shadow; reads through the shadow never fault.
fn shared_region_minor_faults(delivery: Delivery, slot: usize) {
    const PAGES: u32 = 64;
    let region = Arc::new(UffdRegion::new_shared(test_address(slot), PAGES, delivery).unwrap());
    let source = Arc::new(LocalSource::with_zero_copy(PAGES as usize, true));
    let _engine = FaultServer::start(Arc::clone(&region), source.clone()).unwrap();
    let mut copy = [0u8; PAGE_SIZE];
    region.read_page(5, &mut copy).unwrap();
    assert!(
        copy.iter().all(|&b| b == 0),
        "an untouched page reads as zeros via the shadow"
    );
    assert_eq!(
        source.counts(),
        (0, 0, 0),
        "reading through the shadow never faults"
    );
    for index in 0..PAGES {
        assert_eq!(page_of(&region, index), source.home.page(index));
    }
    source.home.set_generation(1);
    region.invalidate_mapping(0, PAGES).unwrap();
    region.read_page(7, &mut copy).unwrap();
    assert_ne!(
        &copy,
        source.home.page(7),
        "the cache still holds the old contents"
    );
    for index in 0..PAGES {
        assert_eq!(
            page_of(&region, index),
            source.home.page(index),
            "page {index}"
        );
    }
    assert_eq!(source.counts(), (2 * u64::from(PAGES), 0, 0));
    assert!(matches!(
        UffdRegion::new(test_address(slot + 1), 1, delivery)
            .unwrap()
            .shadow_address(0),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn shared_region_minor_faults_under_signal_delivery() {
    shared_region_minor_faults(Delivery::Signal, 22);
}

#[test]
fn shared_region_minor_faults_under_thread_delivery() {
    shared_region_minor_faults(Delivery::Thread, 24);
}

#[test]
fn a_runtime_can_read_faults_in_its_own_loop() {
    const PAGES: u32 = 32;
    let region = Arc::new(UffdRegion::new(test_address(26), PAGES, Delivery::Thread).unwrap());
    let source = LocalSource::new(PAGES as usize);
    let reader = {
        let region = Arc::clone(&region);
        std::thread::spawn(move || {
            (0..PAGES)
                .map(|index| page_of(&region, index)[100])
                .collect::<Vec<u8>>()
        })
    };
    let mut faults = [Fault::default(); 8];
    let mut served = 0;
    // Each fault is served within a bounded number of polls; the thread needs PAGES of them.
    for _ in 0..PAGES * 1000 {
        if served == PAGES {
            break;
        }
        let mut pollfd = libc::pollfd {
            fd: region.fault_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call.
        unsafe { libc::poll(&mut pollfd, 1, 10) };
        let count = region.read_faults(&mut faults).unwrap();
        for fault in &faults[..count] {
            assert_eq!(fault.kind, FaultKind::Read);
            region
                .install_read_only(fault.page, source.home.page(fault.page))
                .unwrap();
            served += 1;
        }
    }
    let bytes = reader.join().expect("faulting thread");
    for (index, byte) in bytes.into_iter().enumerate() {
        assert_eq!(byte, source.home.page(index as u32)[100]);
    }
    let _engine = FaultServer::start(Arc::clone(&region), Arc::new(source)).unwrap();
    assert_eq!(region.read_faults(&mut faults), Err(Error::AlreadyServed));
}
