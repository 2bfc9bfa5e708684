//! Two processes sharing one device: this test binary runs itself again as the home node,
//! and the two swap connection data over the child's stdin and stdout.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use dsm_core::{Transport, TransportEvent};
use dsm_rdma::{RdmaConfig, RdmaConnector};
use dsm_wire::{Alloc, Message, PageId, RdmaConnInfo};

use crate::pages::wait_for_key;
use crate::support::{CLUSTER, EVENT_TIMEOUT, Events, Home, rdma_or_skip};

const CHILD_TEST: &str = "processes::home_process";

fn encode(info: &RdmaConnInfo) -> String {
    let gid: String = info.gid.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "CONN {} {} {} {} {gid}",
        info.qp_num, info.psn, info.lid, info.gid_index
    )
}

fn decode(line: &str) -> RdmaConnInfo {
    let fields: Vec<&str> = line.trim().split(' ').collect();
    assert_eq!(fields.len(), 6, "connection line {line:?}");
    let gid_hex = fields[5];
    let mut gid = [0u8; 16];
    for (i, byte) in gid.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&gid_hex[2 * i..2 * i + 2], 16).expect("gid hex");
    }
    RdmaConnInfo {
        qp_num: fields[1].parse().unwrap(),
        psn: fields[2].parse().unwrap(),
        lid: fields[3].parse().unwrap(),
        gid_index: fields[4].parse().unwrap(),
        gid,
    }
}

#[test]
fn a_page_is_read_from_another_process() {
    if !rdma_or_skip("a_page_is_read_from_another_process") {
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            CHILD_TEST,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the home process");
    // The child's stdout, line by line, with a timeout on each wait.
    let (lines_tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let their_info = loop {
        let line = lines
            .recv_timeout(EVENT_TIMEOUT)
            .expect("the home process's connection line");
        // libtest prints "test name ... " without a newline before the child's output.
        if let Some(start) = line.find("CONN ") {
            break decode(&line[start..]);
        }
    };
    let mut connector = RdmaConnector::open(0, 2, RdmaConfig::from_env(CLUSTER)).unwrap();
    writeln!(
        child.stdin.as_mut().unwrap(),
        "{}",
        encode(&connector.conn_info(1).unwrap())
    )
    .unwrap();
    connector.connect(1, &their_info).unwrap();
    let (sink, events) = Events::new();
    let transport = connector.start(sink).unwrap();
    wait_for_key(&transport, 1);
    transport
        .read_page(1, PageId { region: 3, page: 1 }, 9)
        .unwrap();
    match events.next("the page read from the other process") {
        TransportEvent::PageRead { token: 9, result } => {
            assert!(result.unwrap().iter().all(|&b| b == 0xa1), "page content")
        }
        other => panic!("unexpected event {other:?}"),
    }
    transport
        .send(1, &Message::Alloc(Alloc::NFree { region: 3 }))
        .unwrap();
    let status = wait_child(&mut child);
    assert!(status.success(), "the home process failed: {status}");
}

fn wait_child(child: &mut std::process::Child) -> std::process::ExitStatus {
    for _ in 0..3000 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = child.kill();
    panic!("the home process did not exit within 30 s");
}

/// The home node, run only by `a_page_is_read_from_another_process` (hence ignored).
#[test]
#[ignore = "the child half of a_page_is_read_from_another_process"]
fn home_process() {
    let mut home = Home::new(2, |i| 0xa0 + i as u8);
    let mut connector = RdmaConnector::open(1, 2, RdmaConfig::from_env(CLUSTER)).unwrap();
    println!("{}", encode(&connector.conn_info(0).unwrap()));
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .expect("the reader's connection line");
    connector.connect(0, &decode(&line)).unwrap();
    let (sink, events) = Events::new();
    let transport = connector.start(sink).unwrap();
    transport.expose(3, home.memory()).unwrap();
    match events.next("the reader's goodbye") {
        TransportEvent::Message { from: 0, message } => {
            assert_eq!(message, Message::Alloc(Alloc::NFree { region: 3 }))
        }
        other => panic!("unexpected event {other:?}"),
    }
    drop(transport);
    let _ = &mut home;
}
