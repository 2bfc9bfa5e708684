//! Boot-up over real loopback sockets, nodes as threads of this process.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use super::*;

fn free_address() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn config(rank: u32, size: u32, coordinator: &str, timeout_ms: u64) -> Config {
    Config::builder(rank, size)
        .coordinator(coordinator)
        .join_timeout(Duration::from_millis(timeout_ms))
        .build()
        .unwrap()
}

/// Boots `ranks` of a cluster of `size`, rank `r` starting after `delays[r]`.
fn boot(
    size: u32,
    ranks: &[u32],
    delays_ms: &[u64],
    timeout_ms: u64,
) -> Vec<(u32, Result<Booted>)> {
    let coordinator = free_address();
    let handles: Vec<_> = ranks
        .iter()
        .zip(delays_ms)
        .map(|(&rank, &delay)| {
            let c = config(rank, size, &coordinator, timeout_ms);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(delay));
                (rank, run(&c, 0))
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn nodes_started_in_shuffled_order_agree_on_the_node_list() {
    // Rank 0 (the coordinator) starts last.
    let results = boot(4, &[2, 0, 3, 1], &[0, 300, 50, 120], 10_000);
    let mut lists = Vec::new();
    for (rank, result) in results {
        let booted = result.unwrap_or_else(|e| panic!("rank {rank}: {e}"));
        assert_eq!(
            booted.peers[rank as usize],
            booted.listener.local_addr().unwrap()
        );
        lists.push(booted.peers);
    }
    assert!(
        lists.iter().all(|l| l == &lists[0] && l.len() == 4),
        "{lists:?}"
    );
}

#[test]
fn a_rank_that_never_comes_is_named_by_every_node() {
    let results = boot(4, &[0, 1, 3], &[0, 0, 0], 400);
    for (rank, result) in results {
        match result {
            Err(Error::JoinTimeout { missing }) => assert_eq!(missing, vec![2], "rank {rank}"),
            other => panic!("rank {rank}: expected JoinTimeout, got {other:?}"),
        }
    }
}

#[test]
fn a_missing_coordinator_is_rank_0() {
    let results = boot(2, &[1], &[0], 200);
    assert!(matches!(&results[0].1, Err(Error::JoinTimeout { missing }) if missing == &[0]));
}

#[test]
fn intruders_and_impostors_do_not_disturb_the_join() {
    let coordinator = free_address();
    let c0 = config(0, 2, &coordinator, 5_000);
    let node0 = std::thread::spawn(move || run(&c0, 0));
    let limits = Limits::new(config(0, 2, &coordinator, 1).cluster_id());
    // Garbage, then a Join claiming a size the cluster does not have, then one of a foreign
    // cluster: each is dropped.
    let garbage = connect_until(
        coordinator.parse().unwrap(),
        Instant::now() + Duration::from_secs(5),
    );
    garbage.unwrap().write_all(&[0x55; 64]).unwrap();
    let wrong_size = Message::Membership(Membership::Join {
        rank: 1,
        size: 3,
        endpoint: to_endpoint("127.0.0.1:1".parse().unwrap(), 0),
    });
    TcpStream::connect(&coordinator)
        .unwrap()
        .write_all(&dsm_wire::encode(&wrong_size, limits.cluster, 1))
        .unwrap();
    TcpStream::connect(&coordinator)
        .unwrap()
        .write_all(&dsm_wire::encode(&wrong_size, 0xbad, 1))
        .unwrap();
    let c1 = config(1, 2, &coordinator, 5_000);
    let booted1 = run(&c1, 0).unwrap();
    let booted0 = node0.join().unwrap().unwrap();
    assert_eq!(booted0.peers, booted1.peers);
}
