//! Set-up between two threads over a socket pair: a working channel, and every refusal.

use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use dsm_shm::{Channel, Credentials, Error, PairOptions, Result, accept, offer};

use crate::util::{CLUSTER, creds, dev_shm, options};

/// Runs `offer` (rank 0) and `accept` (rank 1) on the two ends of a socket pair.
fn set_up(
    offerer: Credentials,
    accepter: Credentials,
    offered: PairOptions,
    accepted: PairOptions,
) -> (Result<Channel>, Result<Channel>) {
    let (a, b) = UnixStream::pair().unwrap();
    let peer = thread::spawn(move || {
        let got = accept(&b, &accepter, |rank| rank == 0, &accepted);
        drop(b); // a refusing accepter hangs up, as a real one does
        got
    });
    let got = offer(&a, &offerer, 1, &offered);
    drop(a);
    (got, peer.join().unwrap())
}

#[test]
fn a_pair_carries_frames_both_ways_and_leaves_nothing_in_dev_shm() {
    let before = dev_shm();
    let (a, b) = set_up(creds(0), creds(1), options(64), options(64));
    let ((a_tx, mut a_rx), (b_tx, mut b_rx)) = (
        a.unwrap().split(Duration::ZERO),
        b.unwrap().split(Duration::ZERO),
    );
    assert_eq!(a_tx.peer().pid(), std::process::id() as i32);
    assert_eq!((a_tx.peer().rank(), b_tx.peer().rank()), (1, 0));
    let mut out = Vec::new();
    for i in 0..1000u32 {
        a_tx.send_timeout(&i.to_le_bytes(), Duration::from_secs(5))
            .unwrap();
        assert!(b_rx.recv_timeout(&mut out, Duration::from_secs(5)).unwrap());
        assert_eq!(out, i.to_le_bytes());
        b_tx.send_timeout(&out, Duration::from_secs(5)).unwrap();
        assert!(a_rx.recv_timeout(&mut out, Duration::from_secs(5)).unwrap());
        assert_eq!(out, i.to_le_bytes());
    }
    assert!(!a_rx.try_recv(&mut out).unwrap());
    assert_eq!(dev_shm(), before, "nothing new in /dev/shm");
}

#[test]
fn a_waker_interrupts_a_sleeping_receiver() {
    let (a, _b) = set_up(creds(0), creds(1), options(64), options(64));
    let (_tx, mut rx) = a.unwrap().split(Duration::ZERO);
    let waker = rx.waker();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        waker.wake();
    });
    // Woken with nothing to read and the peer alive, it goes back to sleep until the deadline.
    let mut out = Vec::new();
    assert!(
        !rx.recv_timeout(&mut out, Duration::from_millis(200))
            .unwrap()
    );
    t.join().unwrap();
}

#[test]
fn a_wrong_key_is_refused_by_both_sides() {
    let wrong = Credentials::new(1, CLUSTER, Some([0x13; 32]));
    let (a, b) = set_up(creds(0), wrong, options(64), options(64));
    assert!(matches!(a, Err(Error::WrongKey)), "{a:?}");
    // The accepter never gets the memfd: the offerer hung up instead.
    assert!(matches!(b, Err(Error::Handshake(_))), "{b:?}");
}

#[test]
fn a_keyless_node_is_refused_by_a_keyed_one() {
    let keyless = Credentials::new(0, CLUSTER, None);
    let (a, b) = set_up(keyless, creds(1), options(64), options(64));
    assert!(matches!(b, Err(Error::WrongKey)), "{b:?}");
    assert!(a.is_err());
}

#[test]
fn another_cluster_or_an_unexpected_rank_is_refused() {
    let other = Credentials::new(1, CLUSTER + 1, Some(crate::util::KEY));
    let (a, b) = set_up(creds(0), other, options(64), options(64));
    assert!(
        matches!(b, Err(Error::Handshake(ref m)) if m.contains("cluster")),
        "{b:?}"
    );
    assert!(a.is_err());
    // The accepter expects rank 0; rank 2 offers.
    let (a, b) = set_up(creds(2), creds(1), options(64), options(64));
    assert!(
        matches!(b, Err(Error::Handshake(ref m)) if m.contains("not expected")),
        "{b:?}"
    );
    assert!(a.is_err());
}

#[test]
fn rings_larger_than_the_accepter_takes_are_refused() {
    let (a, b) = set_up(creds(0), creds(1), options(1024), options(64));
    assert!(matches!(b, Err(Error::BadMemory(_))), "{b:?}");
    assert!(a.is_err());
}

#[test]
fn an_event_loop_can_sleep_on_the_futex_word_itself() {
    use dsm_shm::ring::{AWAKE, SLEEPING};
    use std::sync::atomic::Ordering;
    let (a, b) = set_up(creds(0), creds(1), options(64), options(64));
    let (a_tx, _a_rx) = a.unwrap().split(Duration::ZERO);
    let (_b_tx, mut b_rx) = b.unwrap().split(Duration::ZERO);
    let mut out = Vec::new();
    assert!(!b_rx.prepare_sleep(&mut out).unwrap(), "nothing sent yet");
    assert_eq!(b_rx.futex_word().load(Ordering::Acquire), SLEEPING);
    a_tx.try_send(b"wake").unwrap();
    // The producer flipped the word (and would have woken a FUTEX_WAIT on it).
    assert_eq!(b_rx.futex_word().load(Ordering::Acquire), AWAKE);
    b_rx.finish_sleep();
    assert!(b_rx.try_recv(&mut out).unwrap());
    assert_eq!(out, b"wake");
    // A frame already there: prepare_sleep takes it and withdraws the announcement.
    a_tx.try_send(b"two").unwrap();
    assert!(b_rx.prepare_sleep(&mut out).unwrap());
    assert_eq!(
        (out.as_slice(), b_rx.futex_word().load(Ordering::Acquire)),
        (&b"two"[..], AWAKE)
    );
}
