//! Round trips of every message and one test per way a frame can be malformed.

use crate::*;

const CLUSTER: u64 = 0xc1_u64;

fn page(fill: u8) -> Page {
    Box::new([fill; PAGE_SIZE])
}

fn pid(region: u32, page: u32) -> PageId {
    PageId { region, page }
}

/// One instance of every message (kept in command order).
pub(crate) fn samples() -> Vec<Message> {
    let mut all = Vec::new();
    all.extend(membership_samples().into_iter().map(Message::Membership));
    all.extend(coherence_samples().into_iter().map(Message::Coherence));
    all.extend(sync_samples().into_iter().map(Message::Sync));
    all.extend(alloc_samples().into_iter().map(Message::Alloc));
    all.extend(view_samples().into_iter().map(Message::View));
    all.extend(transport_samples().into_iter().map(Message::Transport));
    all
}

fn membership_samples() -> Vec<Membership> {
    let ep = Endpoint {
        ip: [7; 16],
        port: 4000,
        transports: 3,
    };
    vec![
        Membership::Join {
            rank: 1,
            size: 4,
            endpoint: ep.clone(),
        },
        Membership::NodeList {
            nodes: vec![ep.clone(), ep],
        },
        Membership::Joined { rank: 2 },
        Membership::Heartbeat { beat: 99 },
        Membership::NodeFailed { rank: 3 },
        Membership::RdmaHello(RdmaConnInfo {
            qp_num: 17,
            psn: 0x123,
            lid: 0,
            gid_index: 1,
            gid: [9; 16],
        }),
        Membership::Leave { rank: 0 },
    ]
}

fn coherence_samples() -> Vec<Coherence> {
    vec![
        Coherence::ReadRequest {
            req: 1,
            page: pid(0, 1),
            maps_master: true,
        },
        Coherence::ReadGrant {
            req: 1,
            page: pid(0, 1),
            version: 4,
            data: Some(page(1)),
        },
        Coherence::ReadGrant {
            req: 1,
            page: pid(0, 1),
            version: 4,
            data: None,
        },
        Coherence::WriteRequest {
            req: 2,
            page: pid(1, 2),
            has_copy: true,
        },
        Coherence::WriteGrant {
            req: 2,
            page: pid(1, 2),
            version: 5,
            data: None,
        },
        Coherence::Invalidate {
            req: 3,
            page: pid(1, 2),
        },
        Coherence::InvalidateAck {
            req: 3,
            page: pid(1, 2),
            data: Some(page(2)),
        },
        Coherence::Downgrade {
            req: 4,
            page: pid(0, 0),
        },
        Coherence::WriteBack {
            req: 4,
            page: pid(0, 0),
            data: page(3),
        },
        Coherence::MasterWritten {
            req: 4,
            page: pid(0, 1),
        },
        Coherence::HandBack {
            page: pid(0, 2),
            data: Some(page(4)),
            next: Some(3),
        },
        Coherence::HandBack {
            page: pid(1, 0),
            data: None,
            next: None,
        },
        Coherence::Push {
            page: pid(0, 3),
            version: 8,
            data: page(5),
        },
        Coherence::DiffAck {
            req: 5,
            page: pid(0, 0),
        },
        Coherence::DiffBatch {
            req: 6,
            diffs: vec![
                PageDiff {
                    page: pid(0, 1),
                    runs: vec![DiffRun {
                        offset: 7,
                        bytes: vec![9],
                    }],
                },
                PageDiff {
                    page: pid(0, 3),
                    runs: Vec::new(),
                },
                PageDiff {
                    page: pid(0, 0),
                    runs: vec![
                        DiffRun {
                            offset: 0,
                            bytes: vec![1, 2],
                        },
                        DiffRun {
                            offset: 4094,
                            bytes: vec![3, 4],
                        },
                    ],
                },
            ],
        },
        Coherence::WriteNotices {
            pages: vec![pid(0, 1), pid(2, 3)],
        },
        Coherence::Dropped {
            pages: vec![pid(0, 4), pid(0, 5), pid(1, 0)],
        },
        Coherence::PageLost {
            req: 6,
            page: pid(1, 2),
            writer: 3,
        },
    ]
}

fn sync_samples() -> Vec<SyncMsg> {
    vec![
        SyncMsg::LockRequest {
            lock: 7,
            timestamp: 11,
        },
        SyncMsg::LockReply {
            lock: 7,
            timestamp: 11,
            notices: vec![pid(0, 9)],
        },
        SyncMsg::LockAcquire { lock: 7, seq: 2 },
        SyncMsg::LockGrant {
            lock: 7,
            seq: 2,
            notices: vec![],
        },
        SyncMsg::LockRelease {
            lock: 7,
            seq: 2,
            notices: vec![pid(1, 1)],
        },
        SyncMsg::LockRecall { lock: 7, seq: 2 },
        SyncMsg::BarrierArrive {
            epoch: 3,
            round: 1,
            notices: vec![],
        },
        SyncMsg::BarrierAbort { epoch: 4 },
        SyncMsg::BarrierRound {
            epoch: 9,
            round: 2,
            arrivals: vec![
                crate::BarrierArrival {
                    node: 0,
                    kind: 0,
                    notices: vec![pid(0, 3), pid(1, 4)],
                },
                crate::BarrierArrival {
                    node: 3,
                    kind: 1,
                    notices: vec![],
                },
            ],
        },
        SyncMsg::BarrierRelease {
            epoch: 3,
            notices: vec![pid(0, 0)],
        },
    ]
}

fn alloc_samples() -> Vec<Alloc> {
    let spec = RegionSpec {
        name: "grid".into(),
        pages: 10,
        consistency: 1,
        placement: 0,
    };
    vec![
        Alloc::Malloc {
            req: 1,
            spec: spec.clone(),
        },
        Alloc::NMalloc {
            req: 1,
            region: 2,
            base_addr: 0x7f00_0000_0000,
            spec,
        },
        Alloc::Free { region: 2 },
        Alloc::NFree { region: 2 },
        Alloc::PRead {
            req: 9,
            region: 2,
            offset: 100,
            len: 8,
        },
        Alloc::PReadReply {
            req: 9,
            data: vec![1; 8],
        },
        Alloc::PWrite {
            req: 10,
            region: 2,
            offset: 100,
            data: vec![2; 8],
        },
        Alloc::PWriteAck { req: 10 },
        Alloc::RegionKey {
            region: 2,
            addr: 0x1000,
            len: 4096,
            rkey: 0xabc,
        },
    ]
}

fn view_samples() -> Vec<ViewMsg> {
    vec![
        ViewMsg::Locate {
            req: 1,
            path: "data/f".into(),
        },
        ViewMsg::Located { req: 1, master: 2 },
        ViewMsg::Open {
            req: 1,
            path: "data/f".into(),
            writable: true,
            create_len: 4096,
        },
        ViewMsg::Opened {
            req: 1,
            file: 1,
            len: 1 << 20,
        },
        ViewMsg::Define {
            req: 2,
            file: 1,
            offset: 0,
            len: 4096,
        },
        ViewMsg::Read {
            req: 3,
            file: 1,
            offset: 7,
            len: 100,
        },
        ViewMsg::Data {
            req: 3,
            data: vec![9; 100],
        },
        ViewMsg::Merge {
            req: 3,
            view: 1,
            offset: 8,
            data: vec![5; 3],
        },
        ViewMsg::MergeRuns {
            req: 3,
            view: 1,
            runs: vec![(0, vec![1, 2]), (100, vec![3; 7])],
        },
        ViewMsg::Commit {
            req: 3,
            file: 1,
            view: 1,
        },
        ViewMsg::CloseView {
            req: 4,
            file: 1,
            view: 1,
        },
        ViewMsg::Close { req: 4, handle: 1 },
        ViewMsg::Status {
            req: 4,
            code: 3,
            handle: 0,
            detail: "overlaps view 2 of node 1".into(),
        },
    ]
}

fn transport_samples() -> Vec<Transport> {
    vec![
        Transport::Hello {
            rank: 1,
            nonce: [3; 32],
        },
        Transport::Challenge {
            rank: 0,
            nonce: [4; 32],
            mac: [5; 32],
        },
        Transport::Response { mac: [6; 32] },
        Transport::Welcome { rank: 0 },
        Transport::PageReadRequest {
            token: 77,
            page: pid(2, 9),
        },
        Transport::PageReadReply {
            token: 77,
            page: pid(2, 9),
            status: PageStatus::Ok,
            data: Some(page(8)),
        },
        Transport::PageReadReply {
            token: 78,
            page: pid(2, 9),
            status: PageStatus::NotExposed,
            data: None,
        },
        Transport::PageWriteRequest {
            token: 79,
            page: pid(2, 1),
            data: page(9),
        },
        Transport::PageWriteReply {
            token: 79,
            page: pid(2, 1),
            status: PageStatus::OutOfRange,
        },
    ]
}

#[test]
fn page_frames_built_in_place_match_encode() {
    let data = page(0x5a);
    let mut out = vec![1, 2, 3];
    msg::transport::append_page_read_reply(
        &mut out,
        CLUSTER,
        2,
        BodyCheck::Crc,
        7,
        pid(1, 4),
        &data,
    );
    let expected = encode(
        &Message::Transport(Transport::PageReadReply {
            token: 7,
            page: pid(1, 4),
            status: PageStatus::Ok,
            data: Some(data.clone()),
        }),
        CLUSTER,
        2,
    );
    assert_eq!(&out[3..], &expected[..]);
    out.clear();
    msg::transport::append_page_write_request(
        &mut out,
        CLUSTER,
        2,
        BodyCheck::Crc,
        8,
        pid(1, 5),
        &data,
    );
    let expected = encode(
        &Message::Transport(Transport::PageWriteRequest {
            token: 8,
            page: pid(1, 5),
            data,
        }),
        CLUSTER,
        2,
    );
    assert_eq!(out, expected);
}

#[test]
fn every_message_round_trips() {
    let limits = Limits::new(CLUSTER);
    for msg in samples() {
        let bytes = encode(&msg, CLUSTER, 3);
        let frame = decode(&bytes, &limits).unwrap_or_else(|e| panic!("{msg:?}: {e}"));
        assert_eq!(
            frame,
            Frame {
                sender: 3,
                message: msg
            }
        );
    }
}

#[test]
fn command_codes_are_distinct() {
    let mut codes: Vec<u16> = samples().iter().map(Message::command).collect();
    codes.dedup(); // samples repeat a command only back to back
    let n = codes.len();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), n);
}

fn sample_frame() -> Vec<u8> {
    encode(
        &Message::Coherence(Coherence::ReadRequest {
            req: 1,
            page: pid(0, 5),
            maps_master: false,
        }),
        CLUSTER,
        1,
    )
}

/// Rewrites the header's checksum so a test reaches the check behind it.
fn reseal(bytes: &mut [u8]) {
    bytes[28..32].fill(0);
    let crc = crc32c::crc32c(&bytes[..HEADER_LEN]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn truncated_frames_are_rejected() {
    let bytes = sample_frame();
    for cut in 0..bytes.len() {
        assert!(matches!(
            decode(&bytes[..cut], &Limits::new(CLUSTER)),
            Err(Error::Truncated { .. })
        ));
        assert_eq!(
            decode_prefix(&bytes[..cut], &Limits::new(CLUSTER)),
            Ok(None)
        );
    }
}

#[test]
fn bad_magic_version_cluster_and_checksums_are_rejected() {
    let limits = Limits::new(CLUSTER);
    let mut b = sample_frame();
    b[0] ^= 1;
    assert!(matches!(decode(&b, &limits), Err(Error::BadMagic(_))));
    let mut b = sample_frame();
    b[10] ^= 1;
    assert!(matches!(
        decode(&b, &limits),
        Err(Error::HeaderChecksum { .. })
    ));
    let mut b = sample_frame();
    b[4] = 9;
    reseal(&mut b);
    assert!(matches!(
        decode(&b, &limits),
        Err(Error::WrongVersion { got: 9, .. })
    ));
    let b = sample_frame();
    assert!(matches!(
        decode(&b, &Limits::new(CLUSTER + 1)),
        Err(Error::WrongCluster { .. })
    ));
    let mut b = sample_frame();
    let last = b.len() - 1;
    b[last] ^= 0x40;
    assert!(matches!(
        decode(&b, &limits),
        Err(Error::BodyChecksum { .. })
    ));
}

#[test]
fn unknown_command_and_oversized_body_are_rejected() {
    let limits = Limits::new(CLUSTER);
    let mut b = sample_frame();
    b[6..8].copy_from_slice(&0x02ffu16.to_le_bytes());
    reseal(&mut b);
    assert_eq!(decode(&b, &limits), Err(Error::UnknownCommand(0x02ff)));
    let mut b = sample_frame();
    b[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut b);
    assert!(matches!(
        decode_prefix(&b, &limits),
        Err(Error::BodyTooLong { .. })
    ));
}

#[test]
fn page_index_out_of_range_is_rejected() {
    let mut limits = Limits::new(CLUSTER);
    limits.max_pages_per_region = 5;
    assert!(matches!(
        decode(&sample_frame(), &limits),
        Err(Error::PageOutOfRange { page: 5, limit: 5 })
    ));
}

#[test]
fn overlapping_or_escaping_diff_runs_are_rejected() {
    let limits = Limits::new(CLUSTER);
    for runs in [
        vec![DiffRun {
            offset: 4095,
            bytes: vec![1, 2],
        }],
        vec![
            DiffRun {
                offset: 8,
                bytes: vec![1, 2],
            },
            DiffRun {
                offset: 9,
                bytes: vec![1],
            },
        ],
        vec![DiffRun {
            offset: 8,
            bytes: vec![],
        }],
    ] {
        let msg = Message::Coherence(Coherence::DiffBatch {
            req: 1,
            diffs: vec![PageDiff {
                page: pid(0, 0),
                runs,
            }],
        });
        assert!(matches!(
            decode(&encode(&msg, CLUSTER, 0), &limits),
            Err(Error::InvalidField { .. })
        ));
    }
}

#[test]
fn an_empty_diff_batch_is_rejected() {
    let limits = Limits::new(CLUSTER);
    let msg = Message::Coherence(Coherence::DiffBatch {
        req: 1,
        diffs: Vec::new(),
    });
    assert!(matches!(
        decode(&encode(&msg, CLUSTER, 0), &limits),
        Err(Error::InvalidField { .. })
    ));
}

#[test]
fn only_a_drop_is_not_awaited() {
    for message in coherence_samples() {
        let dropped = matches!(message, Coherence::Dropped { .. });
        assert_eq!(Message::Coherence(message).is_awaited(), !dropped);
    }
}

#[test]
fn a_dropped_list_empty_or_over_a_batch_is_rejected() {
    let limits = Limits::new(CLUSTER);
    for n in [0, crate::MAX_BATCH_PAGES + 1] {
        let pages = (0..n).map(|i| pid(0, u32::try_from(i).unwrap())).collect();
        let msg = Message::Coherence(Coherence::Dropped { pages });
        assert!(matches!(
            decode(&encode(&msg, CLUSTER, 0), &limits),
            Err(Error::InvalidField {
                field: "dropped pages",
                ..
            })
        ));
    }
}

#[test]
fn trailing_bytes_and_bad_flags_are_rejected() {
    let limits = Limits::new(CLUSTER);
    let mut b = sample_frame();
    b.push(0);
    assert!(matches!(
        decode(&b, &limits),
        Err(Error::TrailingBytes { .. })
    ));
    let flagged = [
        (
            Coherence::WriteRequest {
                req: 2,
                page: pid(1, 2),
                has_copy: true,
            },
            "has_copy",
        ),
        (
            Coherence::ReadRequest {
                req: 2,
                page: pid(1, 2),
                maps_master: true,
            },
            "maps_master",
        ),
    ];
    for (message, flag) in flagged {
        let msg = Message::Coherence(message);
        let mut b = encode(&msg, CLUSTER, 0);
        let last = b.len() - 1;
        b[last] = 2;
        let header = Header::seal(msg.command(), CLUSTER, 0, &b[HEADER_LEN..]);
        b[..HEADER_LEN].copy_from_slice(&header.to_bytes());
        assert!(
            matches!(decode(&b, &limits), Err(Error::InvalidField { field, .. }) if field == flag),
            "{flag}"
        );
    }
}

#[test]
fn stream_of_frames_decodes_one_at_a_time() {
    let limits = Limits::new(CLUSTER);
    let msgs = samples();
    let stream: Vec<u8> = msgs.iter().flat_map(|m| encode(m, CLUSTER, 1)).collect();
    let mut at = 0;
    for m in &msgs {
        let (frame, used) = decode_prefix(&stream[at..], &limits).unwrap().unwrap();
        assert_eq!(&frame.message, m);
        at += used;
    }
    assert_eq!(at, stream.len());
}

#[test]
#[allow(clippy::cast_possible_truncation)] // xorshift bits picked as index and mask
fn random_corruption_never_panics() {
    // A small deterministic mutation loop beside the cargo-fuzz target: flip bytes of valid
    // frames and feed them back, including with a header resealed so the body checks run.
    let limits = Limits::new(CLUSTER);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for msg in samples() {
        let frame = encode(&msg, CLUSTER, 1);
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut b = frame.clone();
            let i = (x as usize) % b.len();
            b[i] ^= (x >> 32) as u8 | 1;
            let _ = decode(&b, &limits);
            if b.len() > HEADER_LEN {
                let header = Header::seal(
                    u16::from_le_bytes([b[6], b[7]]),
                    CLUSTER,
                    1,
                    &b[HEADER_LEN..],
                );
                b[..HEADER_LEN].copy_from_slice(&header.to_bytes());
                let _ = decode(&b, &limits);
            }
        }
    }
}

#[test]
fn a_barrier_round_promising_more_arrivals_than_it_holds_is_refused_before_allocating() {
    let limits = Limits::new(CLUSTER);
    let body = |count: u32| {
        let mut w = crate::codec::Writer::with_capacity(32);
        w.u64(1); // epoch
        w.u32(0); // round
        w.u32(count);
        w.u32(0); // one arrival's node, kind and empty notices
        w.u32(0);
        w.u32(0);
        w.finish()
    };
    let decode_round = |bytes: &[u8]| {
        let mut r = crate::codec::Reader::new(bytes, &limits);
        Message::decode_body(crate::msg::sync::BARRIER_ROUND, &mut r)
    };
    assert!(decode_round(&body(1)).is_ok());
    assert!(matches!(
        decode_round(&body(1000)),
        Err(Error::Truncated {
            what: "barrier arrivals",
            ..
        })
    ));
    assert!(matches!(
        decode_round(&body(u32::MAX)),
        Err(Error::CountTooLarge { .. })
    ));
}

#[test]
fn a_sealed_frame_has_no_body_checksum_and_only_a_sealed_read_skips_it() {
    let message = Message::Transport(Transport::PageWriteRequest {
        token: 8,
        page: pid(1, 5),
        data: page(0x5a),
    });
    let limits = Limits::new(CLUSTER);
    let checked = encode(&message, CLUSTER, 2);
    let sealed = encode_for(&message, CLUSTER, 2, BodyCheck::Sealed);
    assert_eq!(checked[HEADER_LEN..], sealed[HEADER_LEN..], "same body");
    assert_eq!(sealed[24..28], [0; 4], "no body checksum");
    let mut built = Vec::new();
    let data = page(0x5a);
    msg::transport::append_page_write_request(
        &mut built,
        CLUSTER,
        2,
        BodyCheck::Sealed,
        8,
        pid(1, 5),
        &data,
    );
    assert_eq!(built, sealed, "built in place as encode_for builds it");
    // The header stays checked either way; the body checksum only where the body has no seal.
    let opened = decode_prefix_for(&sealed, &limits, BodyCheck::Sealed)
        .unwrap()
        .unwrap();
    assert_eq!(
        (opened.0.message, opened.1),
        (message.clone(), sealed.len())
    );
    assert!(matches!(
        decode_prefix(&sealed, &limits),
        Err(Error::BodyChecksum { .. })
    ));
    let mut bad_header = sealed.clone();
    bad_header[21] ^= 1; // the body length
    assert!(matches!(
        decode_prefix_for(&bad_header, &limits, BodyCheck::Sealed),
        Err(Error::HeaderChecksum { .. })
    ));
    let frame = decode_prefix_for(&checked, &limits, BodyCheck::Sealed)
        .unwrap()
        .unwrap();
    assert_eq!(
        frame.0.message, message,
        "a checksummed frame reads sealed too"
    );
}

/// Found by the decode fuzzer: a hand-back whose `next` was absent but whose node field was
/// not 0 decoded as absent, so two byte strings meant one message.
#[test]
fn an_absent_next_node_must_be_zero() {
    let message = Message::Coherence(Coherence::HandBack {
        page: pid(1, 2),
        data: None,
        next: None,
    });
    let mut bytes = encode(&message, CLUSTER, 0);
    let node = bytes.len() - 4;
    bytes[node] = 13;
    let body = bytes[HEADER_LEN..].to_vec();
    let header = Header::seal(message.command(), CLUSTER, 0, &body);
    bytes[..HEADER_LEN].copy_from_slice(&header.to_bytes());
    assert_eq!(
        decode(&bytes, &Limits::new(CLUSTER)),
        Err(Error::InvalidField {
            field: "next",
            value: 13
        })
    );
}
