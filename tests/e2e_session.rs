//! End-to-end: real `chatserver` processes from a legacy config, real UDP
//! clients, every reply and delivery checked byte for byte.

mod support;

use std::time::Duration;
use support::{Client, Scratch, legacy_config, start_server};

struct Cluster {
    _dir: Scratch,
    _servers: Vec<support::Proc>,
    binds: Vec<std::net::SocketAddr>,
}

fn cluster(n: usize, mode: &str) -> Cluster {
    let dir = Scratch::new("e2e");
    let (text, binds, _) = legacy_config(n, false);
    let cfg = dir.write("servers.txt", &text);
    let servers = (1..=n)
        .map(|i| start_server(&cfg, i, &["-o", mode]))
        .collect();
    Cluster {
        _dir: dir,
        _servers: servers,
        binds,
    }
}

#[test]
fn spec_session_byte_for_byte_across_three_servers() {
    let c = cluster(3, "total");
    let alice = Client::new(c.binds[0]);
    let bob = Client::new(c.binds[1]);
    let carol = Client::new(c.binds[2]);
    let outsider = Client::new(c.binds[2]);

    // Text before joining, bad rooms, unknown commands.
    alice.expect_reply_prefix("Hello?", "-ERR ");
    for bad in ["/join 0", "/join 11", "/join abc", "/join"] {
        alice.expect_reply_prefix(bad, "-ERR ");
    }
    alice.expect_reply_prefix("/shout hi", "-ERR ");
    alice.expect_reply_prefix("/part", "-ERR ");
    alice.expect_reply_prefix("/nick", "-ERR ");

    alice.expect_reply("/join 3", "+OK You are now in chat room #3");
    bob.expect_reply("/join 3", "+OK You are now in chat room #3");
    carol.expect_reply("/join 3", "+OK You are now in chat room #3");
    outsider.expect_reply("/join 4", "+OK You are now in chat room #4");
    alice.expect_reply("/join 5", "-ERR You are already in room #3");

    // Default nick is the client's IP:PORT; echo to the sender.
    alice.send("Hello everyone!");
    let expected = format!("<{}> Hello everyone!", alice.addr());
    for who in [&alice, &bob, &carol] {
        assert_eq!(String::from_utf8(who.recv()).unwrap(), expected);
    }

    alice.expect_reply("/nick Alice", "+OK Nickname set to 'Alice'");
    bob.expect_reply("/nick Bob", "+OK Nickname set to 'Bob'");

    // Special characters, repeated text, invalid UTF-8, a 1000-byte message.
    let texts: Vec<Vec<u8>> = vec![
        b"a,b|c+d <x> \"quoted\" 'single' \\ tab\there".to_vec(),
        "caf\u{e9} \u{1F600} \u{65e5}\u{672c}".as_bytes().to_vec(),
        b"same text".to_vec(),
        b"same text".to_vec(),
        b"\xff\xfe raw \x01 bytes \x00 nul".to_vec(),
        vec![b'x'; 1000],
        b"/not a command? no: starts with slash".to_vec(),
    ];
    for t in &texts[..6] {
        bob.send(t);
    }
    for who in [&alice, &bob, &carol] {
        for t in &texts[..6] {
            let got = who.recv();
            let mut want = b"<Bob> ".to_vec();
            want.extend_from_slice(t);
            assert_eq!(got, want, "delivery to {}", who.addr());
        }
    }
    // A line that starts with '/' is a command, even in a room.
    bob.expect_reply_prefix(std::str::from_utf8(&texts[6]).unwrap(), "-ERR ");
    // 1001 bytes are refused, not truncated.
    bob.send(vec![b'y'; 1001]);
    assert!(String::from_utf8_lossy(&bob.recv()).starts_with("-ERR "));
    // Nothing crossed into room 4.
    outsider.expect_silence(Duration::from_millis(200));

    // /part: no more deliveries; /quit: the server forgets the client.
    carol.expect_reply("/part", "+OK You have left chat room #3");
    alice.send("after part");
    assert_eq!(alice.recv(), b"<Alice> after part");
    assert_eq!(bob.recv(), b"<Alice> after part");
    carol.expect_silence(Duration::from_millis(200));
    bob.send("/quit");
    alice.send("after quit");
    assert_eq!(alice.recv(), b"<Alice> after quit");
    bob.expect_silence(Duration::from_millis(200));
    bob.expect_reply(
        "still there?",
        "-ERR You are not in a chat room (join one with /join N)",
    );
    // The nickname survives a room change.
    alice.expect_reply("/part", "+OK You have left chat room #3");
    alice.expect_reply("/join 4", "+OK You are now in chat room #4");
    alice.send("moved");
    assert_eq!(alice.recv(), b"<Alice> moved");
    assert_eq!(outsider.recv(), b"<Alice> moved");
}

#[test]
fn every_mode_starts_and_delivers() {
    for mode in ["unordered", "fifo", "total", "causal"] {
        let c = cluster(2, mode);
        let a = Client::new(c.binds[0]);
        let b = Client::new(c.binds[1]);
        a.expect_reply("/join 1", "+OK You are now in chat room #1");
        b.expect_reply("/join 1", "+OK You are now in chat room #1");
        a.expect_reply("/nick A", "+OK Nickname set to 'A'");
        a.send("ping");
        assert_eq!(a.recv(), b"<A> ping", "{mode}");
        assert_eq!(b.recv(), b"<A> ping", "{mode}");
    }
}

#[test]
fn unknown_mode_and_bad_index_are_clear_errors() {
    let dir = Scratch::new("e2e-err");
    let (text, _, _) = legacy_config(2, false);
    let cfg = dir.write("servers.txt", &text);
    let out = std::process::Command::new(support::bin("chatserver"))
        .arg(&cfg)
        .arg("1")
        .args(["-o", "sequencer"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown ordering mode 'sequencer'") && err.contains("total"),
        "{err}"
    );
    let out = std::process::Command::new(support::bin("chatserver"))
        .arg(&cfg)
        .arg("3")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("out of range"), "{err}");
}

#[test]
fn verbose_lines_have_time_and_server_tag() {
    let dir = Scratch::new("e2e-v");
    let (text, binds, _) = legacy_config(2, false);
    let cfg = dir.write("servers.txt", &text);
    let _s1 = start_server(&cfg, 1, &["-o", "total"]);
    let mut s2 = start_server(&cfg, 2, &["-o", "total", "-v"]);
    let a = Client::new(binds[1]);
    a.expect_reply("/join 2", "+OK You are now in chat room #2");
    a.send("Hi");
    assert_eq!(a.recv(), format!("<{}> Hi", a.addr()).into_bytes());
    let lines = s2.wait_stdout("Delivered");
    let posts = lines
        .iter()
        .find(|l| l.contains("posts"))
        .expect("a posts line");
    // hh:mm:ss.uuuuuu S02 ...
    let (time, rest) = posts.split_at(15);
    assert!(
        time.len() == 15
            && time.as_bytes()[2] == b':'
            && time.as_bytes()[5] == b':'
            && time.as_bytes()[8] == b'.',
        "{posts}"
    );
    assert!(rest.starts_with(" S02 Client "), "{posts}");
    // The post names the message's id, and the delivery names the same:
    // that is how `launcher trace` joins them.
    let (_, id) = rest
        .split_once(r#"posts "Hi" to chat room #2 as "#)
        .unwrap_or_else(|| panic!("{posts}"));
    let counter = id.strip_prefix("S02#").unwrap_or_else(|| panic!("{posts}"));
    assert!(
        !counter.is_empty() && counter.bytes().all(|b| b.is_ascii_digit()),
        "{posts}"
    );
    let delivered = format!("Delivered {id} to 1 member(s) of chat room #2");
    assert!(
        lines.iter().any(|l| l.ends_with(&delivered)),
        "{delivered:?} in {lines:#?}"
    );
}

#[test]
fn help_lists_every_registered_mode() {
    let out = std::process::Command::new(support::bin("chatserver"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for mode in ["unordered", "fifo", "total", "causal"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(mode)),
            "--help does not list {mode}:\n{help}"
        );
    }
    assert!(
        help.contains("CONFIG") && help.contains("INDEX") && help.contains("-o"),
        "{help}"
    );
}
