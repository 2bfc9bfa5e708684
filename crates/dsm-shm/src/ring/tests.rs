//! Unit tests of the ring in ordinary memory: lengths, wrapping, back-pressure, several
//! producers, sleeping, and the reader against garbage.

use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};

use super::*;
use crate::primitive::Ordering;

fn ring(cells: u32) -> OwnedRing {
    OwnedRing::new(Geometry::new(cells).unwrap())
}

/// The low byte of `x` (test patterns wrap on purpose).
fn low_byte(x: u64) -> u8 {
    x.to_le_bytes()[0]
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| low_byte(i as u64).wrapping_mul(31) ^ salt)
        .collect()
}

#[test]
fn geometry_rejects_bad_sizes() {
    for cells in [0, 1, 3, 6, MAX_CELLS * 2] {
        assert!(
            matches!(Geometry::new(cells), Err(Error::Config(_))),
            "{cells}"
        );
    }
    let g = Geometry::new(4).unwrap();
    assert_eq!(g.max_frame_len(), 4 * 64 - 8);
    assert_eq!(g.ring_bytes() % 64, 0);
}

#[test]
fn frames_of_every_length_round_trip_across_wraps() {
    let owned = ring(16);
    let area = owned.area();
    let (producer, mut consumer) = (Producer::new(), Consumer::new());
    let mut out = Vec::new();
    for round in 0..50u8 {
        for len in [
            0,
            1,
            7,
            8,
            9,
            55,
            56,
            57,
            63,
            64,
            65,
            200,
            area.geometry().max_frame_len(),
        ] {
            let frame = pattern(len, round);
            producer.try_send(&area, &frame).unwrap();
            assert!(consumer.try_recv(&area, &mut out).unwrap());
            assert_eq!(out, frame, "len {len} round {round}");
            assert!(!consumer.try_recv(&area, &mut out).unwrap());
        }
    }
}

#[test]
fn a_full_ring_pushes_back_and_drops_nothing() {
    let owned = ring(8);
    let area = owned.area();
    let (producer, mut consumer) = (Producer::new(), Consumer::new());
    // 56 payload bytes + the header fill one cell exactly.
    for i in 0..8u8 {
        producer.try_send(&area, &[i; 56]).unwrap();
    }
    assert!(matches!(producer.try_send(&area, &[9]), Err(Error::Full)));
    let mut out = Vec::new();
    assert!(consumer.try_recv(&area, &mut out).unwrap());
    assert_eq!(out, [0; 56]);
    // One free cell: a two-cell frame still does not fit, a one-cell frame does.
    assert!(matches!(
        producer.try_send(&area, &[1; 57]),
        Err(Error::Full)
    ));
    producer.try_send(&area, &[8; 56]).unwrap();
    for i in 1..9u8 {
        assert!(consumer.try_recv(&area, &mut out).unwrap());
        assert_eq!(out, [i; 56]);
    }
    let too_long = vec![0; area.geometry().max_frame_len() + 1];
    assert!(matches!(
        producer.try_send(&area, &too_long),
        Err(Error::FrameTooLarge { .. })
    ));
}

/// Frame of producer `thread`, number `seq`: thread and seq first, then a checkable body.
fn numbered(thread: u8, seq: u32, len: usize) -> Vec<u8> {
    let mut frame = vec![thread];
    frame.extend_from_slice(&seq.to_le_bytes());
    frame.extend(pattern(len, thread ^ low_byte(seq.into())));
    frame
}

/// Checks a frame's body and that it is the next of its producer; returns the producer.
fn check_next(frame: &[u8], next: &mut [u32]) -> usize {
    let thread = frame[0] as usize;
    let seq = u32::from_le_bytes(frame[1..5].try_into().unwrap());
    assert_eq!(seq, next[thread], "FIFO of producer {thread}");
    assert_eq!(
        frame[5..],
        pattern(
            frame.len() - 5,
            low_byte(thread as u64) ^ low_byte(seq.into())
        )
    );
    next[thread] += 1;
    thread
}

#[test]
fn several_producers_keep_their_order() {
    const THREADS: u8 = 3;
    const FRAMES: u32 = 20_000;
    let owned = Arc::new(ring(8));
    let producer = Arc::new(Producer::new());
    let senders: Vec<_> = (0..THREADS)
        .map(|t| {
            let (owned, producer) = (Arc::clone(&owned), Arc::clone(&producer));
            std::thread::spawn(move || {
                let area = owned.area();
                for seq in 0..FRAMES {
                    let frame = numbered(t, seq, (seq as usize * 7) % 150);
                    while let Err(e) = producer.try_send(&area, &frame) {
                        assert!(matches!(e, Error::Full));
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    let (area, mut consumer, mut out) = (owned.area(), Consumer::new(), Vec::new());
    let mut next = [0u32; THREADS as usize];
    for _ in 0..THREADS as u32 * FRAMES {
        let got = consumer.recv_timeout(
            &area,
            &mut out,
            Duration::from_micros(50),
            Some(Duration::from_secs(10)),
        );
        assert!(got.unwrap(), "a frame within 10 s");
        check_next(&out, &mut next);
    }
    senders.into_iter().for_each(|s| s.join().unwrap());
    assert_eq!(next, [FRAMES; THREADS as usize]);
}

#[test]
fn a_sleeping_consumer_is_woken() {
    let owned = Arc::new(ring(4));
    let producer = Producer::new();
    let sender = {
        let owned = Arc::clone(&owned);
        std::thread::spawn(move || {
            for i in 0..200u8 {
                std::thread::sleep(Duration::from_micros(200));
                // A consumer descheduled on a loaded machine may leave the 4 cells full:
                // wait for room (bounded) rather than fail the test for it.
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while let Err(Error::Full) = producer.try_send(&owned.area(), &[i]) {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "ring stayed full 10 s"
                    );
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        })
    };
    let (area, mut consumer, mut out) = (owned.area(), Consumer::new(), Vec::new());
    for i in 0..200u8 {
        assert!(
            consumer
                .recv_timeout(
                    &area,
                    &mut out,
                    Duration::ZERO,
                    Some(Duration::from_secs(10))
                )
                .unwrap()
        );
        assert_eq!(out, [i]);
    }
    sender.join().unwrap();
    assert!(
        !consumer
            .recv_timeout(
                &area,
                &mut out,
                Duration::ZERO,
                Some(Duration::from_millis(5))
            )
            .unwrap()
    );
}

#[test]
fn a_quiet_frame_leaves_a_sleeping_consumer_asleep_and_keeps_its_place() {
    let owned = ring(8);
    let area = owned.area();
    let producer = Producer::new();
    // The consumer announced its sleep (as `recv_timeout` does before its futex wait).
    area.state.store(SLEEPING, Ordering::SeqCst);
    producer.try_send_quietly(&area, b"quiet").unwrap();
    assert_eq!(
        area.state.load(Ordering::SeqCst),
        SLEEPING,
        "woken by a quiet frame"
    );
    producer.try_send(&area, b"loud").unwrap();
    assert_eq!(
        area.state.load(Ordering::SeqCst),
        AWAKE,
        "not woken by a frame"
    );
    let (mut consumer, mut out) = (Consumer::new(), Vec::new());
    assert!(consumer.try_recv(&area, &mut out).unwrap());
    assert_eq!(out, b"quiet");
    assert!(consumer.try_recv(&area, &mut out).unwrap());
    assert_eq!(out, b"loud");
}

/// Fills every shared word with garbage, some of it shaped like valid marks and headers so the
/// reader gets past its first check.
fn scribble(area: &RingArea<'_>, rng: &mut StdRng, consumed: u64) {
    for word in area.words() {
        let value = match rng.random_range(0..4) {
            0 => rng.random(),
            1 => consumed + 1,
            2 => rng.random_range(0..600),
            _ => u64::MAX - rng.random_range(0..3),
        };
        word.store(value, Ordering::Relaxed);
    }
    area.state_word().store(rng.random(), Ordering::Relaxed);
}

#[test]
fn garbage_in_the_area_is_rejected_never_a_panic() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut frames, mut corrupt) = (0, 0);
    for _ in 0..2_000 {
        let owned = ring(*[2, 4, 8].get(rng.random_range(0..3)).unwrap());
        let area = owned.area();
        let (producer, mut consumer, mut out) = (Producer::new(), Consumer::new(), Vec::new());
        for _ in 0..8 {
            scribble(&area, &mut rng, 0);
            match consumer.try_recv(&area, &mut out) {
                Ok(true) => {
                    assert!(out.len() <= area.geometry().max_frame_len());
                    frames += 1;
                }
                Ok(false) => {}
                Err(Error::Corrupt(_)) => corrupt += 1,
                Err(e) => panic!("unexpected {e} (seed {seed})"),
            }
            match producer.try_send(&area, &[1; 70]) {
                Ok(()) | Err(Error::Full | Error::Corrupt(_)) => {}
                Err(e) => panic!("unexpected {e} (seed {seed})"),
            }
        }
        // A bounded wait on garbage ends, whatever the futex word holds.
        let waited = consumer.recv_timeout(
            &area,
            &mut out,
            Duration::ZERO,
            Some(Duration::from_millis(1)),
        );
        assert!(matches!(waited, Ok(_) | Err(Error::Corrupt(_))));
    }
    assert!(
        frames > 0 && corrupt > 0,
        "garbage reached both paths: {frames} {corrupt}"
    );
}
