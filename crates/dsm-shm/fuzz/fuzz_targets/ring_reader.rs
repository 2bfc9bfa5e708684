//! Feeds the ring's consumer (and a producer) a shared area the peer filled with arbitrary
//! words, rewritten between reads as a hostile peer would: `cargo +nightly fuzz run
//! ring_reader` from `crates/dsm-shm`.
//!
//! Input: one byte choosing the ring size, then rounds of words. Each round overwrites the
//! area's words (head, marks, data) in order with the next input words, then the consumer
//! reads until the ring looks empty or corrupt and a producer sends a frame. Every frame
//! returned must fit the ring; nothing may panic or loop without bound.
#![no_main]

use std::sync::atomic::Ordering;

use dsm_shm::Error;
use dsm_shm::ring::{Consumer, Geometry, OwnedRing, Producer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&size, rest)) = data.split_first() else {
        return;
    };
    let geometry = Geometry::new(2 << (size % 4)).unwrap();
    let ring = OwnedRing::new(geometry);
    let area = ring.area();
    let (producer, mut consumer, mut out) = (Producer::new(), Consumer::new(), Vec::new());
    let mut words = rest
        .chunks(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .peekable();
    while words.peek().is_some() {
        for (slot, value) in area.words().zip(&mut words) {
            slot.store(value, Ordering::Relaxed);
        }
        // A peer can publish at most one frame per cell between two rewrites.
        for _ in 0..geometry.cells() {
            match consumer.try_recv(&area, &mut out) {
                Ok(true) => assert!(out.len() <= geometry.max_frame_len()),
                Ok(false) | Err(Error::Corrupt(_)) => break,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        match producer.try_send(&area, &out) {
            Ok(()) | Err(Error::Full | Error::Corrupt(_) | Error::FrameTooLarge { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
});
