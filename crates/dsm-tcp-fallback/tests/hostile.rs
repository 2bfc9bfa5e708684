//! Hostile and broken input: garbage bytes, a wrong cluster, a wrong key, bad frames after a
//! good handshake, a spoofed sender, and on a keyed mesh frames injected, altered, replayed or
//! reordered after the handshake. Each is rejected on its own connection; the rest of the
//! mesh keeps working.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use dsm_core::{EventSink, Transport, TransportEvent};
use dsm_tcp_fallback::handshake::{self, Credentials};
use dsm_tcp_fallback::{
    Error, FrameReader, Purpose, SessionKeys, TAG_LEN, TcpConfig, TcpTransport,
};
use dsm_wire::{
    HEADER_LEN, Header, Limits, Membership, Message, Transport as Wire, decode, encode,
};

use crate::common::{CLUSTER, Collect, channel_mesh, listeners, start_all, wait_for};

const TIMEOUT: Duration = Duration::from_secs(20);
const KEY: [u8; 32] = [0x42; 32];

fn beat(b: u64) -> Message {
    Message::Membership(Membership::Heartbeat { beat: b })
}

fn read_frame(stream: &mut TcpStream, cluster: u64) -> Option<Message> {
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header).ok()?;
    let h = Header::parse(&header, cluster, 1024).ok()?;
    let mut frame = header.to_vec();
    frame.resize(HEADER_LEN + h.body_len as usize, 0);
    stream.read_exact(&mut frame[HEADER_LEN..]).ok()?;
    decode(&frame, &Limits::new(cluster))
        .ok()
        .map(|f| f.message)
}

/// True when the other end closed the connection (EOF or reset) within the timeout.
fn closed_by_peer(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Dials `addr` claiming `rank` with no key (all-zero MAC): completes when the node runs
/// without a key, is refused when it has one.
fn fake_dial(addr: SocketAddr, rank: u32, cluster: u64) -> (TcpStream, Option<Message>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let hello = Message::Transport(Wire::Hello {
        rank,
        nonce: [1; 32],
    });
    s.write_all(&encode(&hello, cluster, rank)).unwrap();
    let _challenge = read_frame(&mut s, cluster);
    let response = Message::Transport(Wire::Response { mac: [0; 32] });
    let _ = s.write_all(&encode(&response, cluster, rank));
    let welcome = read_frame(&mut s, cluster);
    (s, welcome)
}

fn expect_message(rx: &Receiver<TransportEvent>, from: u32, want: &Message) {
    wait_for(
        rx,
        TIMEOUT,
        &format!("{want:?} from node {from}"),
        |e| match e {
            TransportEvent::Message { from: f, message } if f == from && message == *want => {
                Some(())
            }
            _ => None,
        },
    );
}

#[test]
fn intruders_are_rejected_while_the_mesh_forms() {
    let (listeners, addrs) = listeners(2);
    let (sinks, receivers): (Vec<Arc<dyn EventSink>>, Vec<_>) = (0..2)
        .map(|_| {
            let (tx, rx) = channel();
            (Arc::new(Collect(tx)) as Arc<dyn EventSink>, rx)
        })
        .unzip();
    let mut configs: Vec<TcpConfig> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let mut c = TcpConfig::new(rank as u32, l, addrs.clone(), CLUSTER);
            c.key = Some(KEY);
            c.connect_timeout = TIMEOUT;
            c
        })
        .collect();
    let second = configs.pop().unwrap();
    let first = configs.pop().unwrap();
    let sink0 = Arc::clone(&sinks[0]);
    let node0 = std::thread::spawn(move || TcpTransport::start(first, sink0));

    // Garbage: closed as soon as 32 bytes fail the header check.
    let mut garbage = TcpStream::connect(addrs[0]).unwrap();
    garbage.write_all(&[0xa5; 100]).unwrap();
    assert!(closed_by_peer(&mut garbage), "garbage connection left open");
    // Another cluster's frame.
    let mut foreign = TcpStream::connect(addrs[0]).unwrap();
    let hello = Message::Transport(Wire::Hello {
        rank: 1,
        nonce: [2; 32],
    });
    foreign.write_all(&encode(&hello, CLUSTER + 1, 1)).unwrap();
    assert!(
        closed_by_peer(&mut foreign),
        "foreign cluster connection left open"
    );
    // Another protocol version (header resealed so only the version is wrong).
    let mut old = TcpStream::connect(addrs[0]).unwrap();
    let mut frame = encode(&hello, CLUSTER, 1);
    frame[4..6].copy_from_slice(&(dsm_wire::PROTOCOL_VERSION + 1).to_le_bytes());
    frame[28..32].fill(0);
    let crc = crc32(&frame[..HEADER_LEN]);
    frame[28..32].copy_from_slice(&crc.to_le_bytes());
    old.write_all(&frame).unwrap();
    assert!(closed_by_peer(&mut old), "other protocol version left open");
    // Right cluster, claims rank 1, but cannot prove the key: no Welcome.
    let (mut impostor, welcome) = fake_dial(addrs[0], 1, CLUSTER);
    assert_eq!(welcome, None, "impostor without the key was welcomed");
    assert!(closed_by_peer(&mut impostor));
    // A real node with the wrong key gives up naming the rank it could not reach.
    let (wrong_listener, _) = listeners_one();
    let mut wrong = TcpConfig::new(1, wrong_listener, addrs.clone(), CLUSTER);
    wrong.key = Some([0x43; 32]);
    // Long enough that the first attempt's answer comes even on a loaded machine; later
    // attempts cut short by the deadline do not hide it (`mesh::LastError`).
    wrong.connect_timeout = Duration::from_secs(3);
    let (tx, _rx) = channel();
    match TcpTransport::start(wrong, Arc::new(Collect(tx))) {
        Err(Error::MeshTimeout {
            missing,
            last_error,
            ..
        }) => {
            assert_eq!(missing, vec![0]);
            assert!(last_error.contains("key"), "{last_error}");
        }
        other => panic!("wrong key accepted: {other:?}"),
    }

    // The real rank 1 still joins, and the two talk.
    let node1 = TcpTransport::start(second, Arc::clone(&sinks[1])).expect("rank 1 joins");
    let node0 = node0.join().unwrap().expect("rank 0 completes its mesh");
    node1.send(0, &beat(1)).unwrap();
    expect_message(&receivers[0], 1, &beat(1));
    node0.send(1, &beat(2)).unwrap();
    expect_message(&receivers[1], 0, &beat(2));
}

fn listeners_one() -> (std::net::TcpListener, SocketAddr) {
    let (mut l, a) = listeners(1);
    (l.pop().unwrap(), a[0])
}

/// Ranks 0 and 1 are real; rank 2 is this test speaking the protocol by hand (no key).
fn two_real_one_fake() -> (
    Vec<TcpTransport>,
    Vec<Receiver<TransportEvent>>,
    Vec<TcpStream>,
) {
    let (listeners, mut addrs) = listeners(2);
    addrs.push("127.0.0.1:9".parse().unwrap());
    let (sinks, receivers): (Vec<Arc<dyn EventSink>>, Vec<_>) = (0..2)
        .map(|_| {
            let (tx, rx) = channel();
            (Arc::new(Collect(tx)) as Arc<dyn EventSink>, rx)
        })
        .unzip();
    let configs = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let mut c = TcpConfig::new(rank as u32, l, addrs.clone(), CLUSTER);
            c.key = None; // the fake peer speaks without a key
            c.connect_timeout = TIMEOUT;
            c
        })
        .collect::<Vec<_>>();
    let fake_addrs = [addrs[0], addrs[1]];
    let fake = std::thread::spawn(move || {
        fake_addrs
            .iter()
            .map(|a| {
                let (s, welcome) = fake_dial(*a, 2, CLUSTER);
                assert!(matches!(
                    welcome,
                    Some(Message::Transport(Wire::Welcome { .. }))
                ));
                s
            })
            .collect::<Vec<_>>()
    });
    let transports = start_all(configs, sinks)
        .into_iter()
        .map(|t| t.unwrap())
        .collect();
    (transports, receivers, fake.join().unwrap())
}

fn expect_failed(rx: &Receiver<TransportEvent>, failed: u32, reason_has: &str) {
    let reason = wait_for(rx, TIMEOUT, &format!("PeerFailed({failed})"), |e| match e {
        TransportEvent::PeerFailed { node, reason } => {
            assert_eq!(node, failed);
            Some(reason)
        }
        _ => None,
    });
    assert!(
        reason.contains(reason_has),
        "reason {reason:?} lacks {reason_has:?}"
    );
}

#[test]
fn bad_frames_after_the_handshake_close_only_that_connection() {
    let (transports, receivers, mut fake) = two_real_one_fake();
    // A good frame from the fake peer is delivered.
    fake[0].write_all(&encode(&beat(7), CLUSTER, 2)).unwrap();
    expect_message(&receivers[0], 2, &beat(7));
    // A frame whose body was corrupted in flight: typed checksum error, connection closed.
    let mut bad = encode(&beat(8), CLUSTER, 2);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    fake[0].write_all(&bad).unwrap();
    expect_failed(&receivers[0], 2, "checksum");
    assert!(closed_by_peer(&mut fake[0]));
    // To node 1, a frame claiming to come from node 0: a protocol violation.
    fake[1].write_all(&encode(&beat(9), CLUSTER, 0)).unwrap();
    expect_failed(&receivers[1], 2, "sender");
    assert!(closed_by_peer(&mut fake[1]));
    // Nodes 0 and 1 carry on.
    transports[0].send(1, &beat(10)).unwrap();
    expect_message(&receivers[1], 0, &beat(10));
    transports[1].send(0, &beat(11)).unwrap();
    expect_message(&receivers[0], 1, &beat(11));
}

#[test]
fn oversized_length_and_unasked_replies_are_rejected() {
    let (transports, receivers, mut fake) = two_real_one_fake();
    // A header announcing a 4 GiB body: rejected from the header alone, nothing allocated.
    let mut huge = encode(&beat(1), CLUSTER, 2);
    huge[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    huge[28..32].fill(0);
    let crc = crc32(&huge[..HEADER_LEN]);
    huge[28..32].copy_from_slice(&crc.to_le_bytes());
    fake[0].write_all(&huge[..HEADER_LEN]).unwrap();
    expect_failed(&receivers[0], 2, "over the limit");
    // A page reply nobody asked for.
    let reply = Message::Transport(Wire::PageWriteReply {
        token: 5,
        page: dsm_wire::PageId { region: 0, page: 0 },
        status: dsm_wire::PageStatus::Ok,
    });
    fake[1].write_all(&encode(&reply, CLUSTER, 2)).unwrap();
    expect_failed(&receivers[1], 2, "waiting for None");
    transports[0].send(1, &beat(3)).unwrap();
    expect_message(&receivers[1], 0, &beat(3));
}

/// crc32c (Castagnoli), bitwise: the header checksum, recomputed after tampering.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn keyed_mesh_works_end_to_end() {
    let (transports, receivers) = channel_mesh(3, Some(KEY));
    transports[2].send(0, &beat(5)).unwrap();
    expect_message(&receivers[0], 2, &beat(5));
}

/// Ranks 0 and 1 are real, keyed with `KEY`; rank 2 is this test holding the key and speaking
/// the protocol by hand: it dials both and keeps each connection's session keys.
/// Two real nodes, their events, and the insider's connection to each.
type Insider = (
    Vec<TcpTransport>,
    Vec<Receiver<TransportEvent>>,
    Vec<(TcpStream, SessionKeys)>,
);

fn keyed_two_real_one_insider() -> Insider {
    let (listeners, mut addrs) = listeners(2);
    addrs.push("127.0.0.1:9".parse().unwrap());
    let (sinks, receivers): (Vec<Arc<dyn EventSink>>, Vec<_>) = (0..2)
        .map(|_| {
            let (tx, rx) = channel();
            (Arc::new(Collect(tx)) as Arc<dyn EventSink>, rx)
        })
        .unzip();
    let configs = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let mut c = TcpConfig::new(rank as u32, l, addrs.clone(), CLUSTER);
            c.key = Some(KEY);
            c.connect_timeout = TIMEOUT;
            c
        })
        .collect::<Vec<_>>();
    let targets = [(0, addrs[0]), (1, addrs[1])];
    let insider = std::thread::spawn(move || {
        let me = Credentials::new(2, CLUSTER, Some(KEY), Purpose::Mesh);
        targets
            .iter()
            .map(|&(rank, addr)| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                let keys = handshake::dial(&me, &mut s, rank).unwrap().expect("keyed");
                (s, keys)
            })
            .collect::<Vec<_>>()
    });
    let transports = start_all(configs, sinks)
        .into_iter()
        .map(|t| t.unwrap())
        .collect();
    (transports, receivers, insider.join().unwrap())
}

/// `message` from rank 2 as a sealed frame followed by its tag.
fn sealed(keys: &mut SessionKeys, message: &Message) -> Vec<u8> {
    let mut frame = encode(message, CLUSTER, 2);
    keys.send.seal_at(&mut frame, 0);
    frame
}

#[test]
fn frames_on_a_keyed_mesh_are_sealed_and_the_receiver_opens_them() {
    let (transports, receivers, mut insider) = keyed_two_real_one_insider();
    let (stream, keys) = &mut insider[0];
    // A tagged frame is delivered; the node's own frames come tagged under the session.
    stream.write_all(&sealed(keys, &beat(1))).unwrap();
    expect_message(&receivers[0], 2, &beat(1));
    transports[0].send(2, &beat(2)).unwrap();
    let mut reader = FrameReader::authenticated(Limits::new(CLUSTER), keys.receive.clone());
    let mut frames = Vec::new();
    let mut wire = Vec::new();
    let mut buf = [0u8; 256];
    while frames.is_empty() {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed");
        wire.extend_from_slice(&buf[..n]);
        reader.feed(&mut buf[..n], &mut frames).unwrap();
    }
    assert_eq!(frames[0].message, beat(2));
    let clear = encode(&beat(2), CLUSTER, 0);
    assert_eq!(wire.len(), clear.len() + TAG_LEN);
    assert_ne!(
        wire[HEADER_LEN..clear.len()],
        clear[HEADER_LEN..],
        "the body went in clear"
    );
    // The same frame again: a replay.
    let replay = sealed(&mut keys.clone(), &beat(3));
    stream.write_all(&sealed(keys, &beat(3))).unwrap();
    expect_message(&receivers[0], 2, &beat(3));
    stream.write_all(&replay).unwrap();
    expect_failed(&receivers[0], 2, "failed authentication");
    assert!(closed_by_peer(stream));
    transports[1].send(0, &beat(4)).unwrap();
    expect_message(&receivers[0], 1, &beat(4));
}

#[test]
fn injected_altered_and_reordered_frames_close_the_keyed_connection() {
    let (transports, receivers, mut insider) = keyed_two_real_one_insider();
    // To node 0: a frame with valid header and checksums but no tag (an injection by someone
    // on the path without the key).
    let (stream, keys) = &mut insider[0];
    stream.write_all(&sealed(keys, &beat(1))).unwrap();
    expect_message(&receivers[0], 2, &beat(1));
    let mut injected = encode(&beat(66), CLUSTER, 2);
    injected.extend_from_slice(&[0; TAG_LEN]);
    stream.write_all(&injected).unwrap();
    expect_failed(&receivers[0], 2, "failed authentication");
    assert!(closed_by_peer(stream));
    // To node 1: a frame altered in flight with its checksums recomputed (what an attacker
    // who knows the format does), then two frames swapped.
    let (stream, keys) = &mut insider[1];
    let mut altered = sealed(keys, &beat(5));
    altered[HEADER_LEN] ^= 1; // the beat number
    let body = HEADER_LEN..altered.len() - TAG_LEN;
    let body_crc = crc32(&altered[body]);
    altered[24..28].copy_from_slice(&body_crc.to_le_bytes());
    altered[28..32].fill(0);
    let crc = crc32(&altered[..HEADER_LEN]);
    altered[28..32].copy_from_slice(&crc.to_le_bytes());
    stream.write_all(&altered).unwrap();
    expect_failed(&receivers[1], 2, "frame #0");
    assert!(closed_by_peer(stream));
    transports[0].send(1, &beat(6)).unwrap();
    expect_message(&receivers[1], 0, &beat(6));
}

#[test]
fn reordered_frames_close_the_keyed_connection() {
    let (_transports, receivers, mut insider) = keyed_two_real_one_insider();
    let (stream, keys) = &mut insider[0];
    let first = sealed(keys, &beat(1));
    let second = sealed(keys, &beat(2));
    stream.write_all(&second).unwrap();
    stream.write_all(&first).unwrap();
    expect_failed(&receivers[0], 2, "frame #0");
    assert!(closed_by_peer(stream));
}

/// Sixteen idle connections to rank 0's listener, opened before its peers dial: each
/// handshake runs on its own thread with its own deadline, so the mesh forms. Handled one at
/// a time (1 s each before the peers' turn) it could not within the 5 s allowed.
#[test]
fn idle_connections_do_not_delay_the_mesh() {
    let (listeners, addrs) = listeners(3);
    let idle: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(addrs[0]).unwrap())
        .collect();
    let mut sinks: Vec<Arc<dyn EventSink>> = Vec::new();
    let configs = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let (tx, _rx) = channel();
            sinks.push(Arc::new(Collect(tx)));
            let mut c = TcpConfig::new(rank as u32, l, addrs.clone(), CLUSTER);
            c.key = Some(KEY);
            c.handshake_timeout = Duration::from_secs(1);
            c.connect_timeout = Duration::from_secs(5);
            c
        })
        .collect();
    for started in start_all(configs, sinks) {
        let transport = started.expect("the mesh formed despite the idle connections");
        transport.shutdown().unwrap();
    }
    drop(idle);
}
