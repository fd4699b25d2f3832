//! Scale smoke test at the spec's size: 10 servers, 250 clients, 10 rooms
//! that each span servers. Every member gets every message of its room
//! exactly once, nothing crosses rooms, and (total mode) one order per room.

mod support;

use std::collections::{HashMap, HashSet};
use support::{Client, Scratch, legacy_config, start_server};

const SERVERS: usize = 10;
const CLIENTS: usize = 250;
const ROOMS: usize = 10;
const PER_CLIENT: usize = 2;

#[test]
fn ten_servers_250_clients_10_rooms_total() {
    let dir = Scratch::new("scale");
    let (text, binds, _) = legacy_config(SERVERS, false);
    let cfg = dir.write("servers.txt", &text);
    let _servers: Vec<_> = (1..=SERVERS)
        .map(|i| start_server(&cfg, i, &["-o", "total"]))
        .collect();

    // Client i: room (i % 10) + 1 on server (i / 10) % 10, so rooms span servers.
    let clients: Vec<(Client, usize)> = (0..CLIENTS)
        .map(|i| (Client::new(binds[(i / ROOMS) % SERVERS]), i % ROOMS + 1))
        .collect();
    for (i, (c, room)) in clients.iter().enumerate() {
        c.expect_reply(
            &format!("/join {room}"),
            &format!("+OK You are now in chat room #{room}"),
        );
        c.expect_reply(
            &format!("/nick c{i}"),
            &format!("+OK Nickname set to 'c{i}'"),
        );
    }
    for k in 0..PER_CLIENT {
        for (i, (c, room)) in clients.iter().enumerate() {
            c.send(format!("m-{i}-{k}-room{room}"));
        }
    }
    let per_room = CLIENTS / ROOMS * PER_CLIENT;
    let mut orders: HashMap<usize, Vec<Vec<u8>>> = HashMap::new();
    for (i, (c, room)) in clients.iter().enumerate() {
        let got = c.recv_n(per_room);
        let unique: HashSet<&Vec<u8>> = got.iter().collect();
        assert_eq!(unique.len(), per_room, "client {i} got duplicates");
        for line in &got {
            let s = String::from_utf8_lossy(line);
            assert!(
                s.ends_with(&format!("-room{room}")),
                "client {i} in room {room} got {s}"
            );
            let (nick, body) = s.split_once("> ").expect("<nick> body");
            let sender: usize = body.split('-').nth(1).unwrap().parse().unwrap();
            assert_eq!(nick, format!("<c{sender}"), "nick names the sender");
        }
        match orders.get(room) {
            Some(reference) => assert_eq!(&got, reference, "client {i}: room {room} order differs"),
            None => {
                orders.insert(*room, got);
            }
        }
    }
    for (c, _) in &clients {
        c.expect_silence(std::time::Duration::from_millis(5));
    }
}
