//! End-to-end tests of `chatclient` against real `chatserver` processes:
//! through pipes (scripts), through a pseudo-terminal (Ctrl+C), with
//! signals, and with bad addresses. Only 127.0.0.1; deadlines, no sleeps.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{Client, Proc, Scratch, WAIT, bin, legacy_config, start_server};

/// What a forgotten client gets when it chats.
const NOT_IN_ROOM: &str = "-ERR You are not in a chat room (join one with /join N)";

/// A cluster of `n` servers, all run with `-v` so their stdout logs events.
struct Cluster {
    _dir: Scratch,
    servers: Vec<Proc>,
    binds: Vec<SocketAddr>,
}

fn cluster(n: usize) -> Cluster {
    let dir = Scratch::new("client");
    let (text, binds, _) = legacy_config(n, false);
    let cfg = dir.write("servers.txt", &text);
    let servers = (1..=n).map(|i| start_server(&cfg, i, &["-v"])).collect();
    Cluster {
        _dir: dir,
        servers,
        binds,
    }
}

/// Waits for server's `-v` line `Client N (IP:PORT) quits`; the address.
fn wait_quit(server: &mut Proc) -> SocketAddr {
    let lines = server.wait_stdout(" quits");
    let line = lines.last().unwrap();
    let addr = line
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(a, _)| a)
        .unwrap_or_else(|| panic!("no (address) in the quit line {line:?}"));
    addr.parse()
        .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"))
}

/// The server has forgotten the client that was at `addr` (a room member
/// before): a chat line from that same address now gets the not-in-a-room
/// error instead of being posted. The client's port is free once it exited.
fn assert_forgotten(server: SocketAddr, addr: SocketAddr) {
    let sock = UdpSocket::bind(addr)
        .unwrap_or_else(|e| panic!("rebind the client's old address {addr}: {e}"));
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock.send_to(b"Is anybody there?", server).unwrap();
    let mut buf = vec![0u8; 70000];
    let (n, from) = sock
        .recv_from(&mut buf)
        .expect("a reply from the server in time");
    assert_eq!(from, server);
    assert_eq!(String::from_utf8_lossy(&buf[..n]), NOT_IN_ROOM);
}

fn wait_exit(child: &mut Child, who: &str) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        assert!(Instant::now() < deadline, "{who} did not exit in time");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `chatclient` with stdin, stdout and stderr on pipes; stdout is read as
/// raw byte lines. Killed on drop if still running.
struct Chat {
    child: Child,
    stdin: Option<ChildStdin>,
    out: mpsc::Receiver<Vec<u8>>,
    err: mpsc::Receiver<Vec<u8>>,
}

fn byte_lines<R: Read + Send + 'static>(r: R) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(r).split(b'\n') {
            let Ok(l) = line else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

impl Chat {
    fn spawn(args: &[&str]) -> Chat {
        let mut child = Command::new(bin("chatclient"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chatclient");
        let stdin = child.stdin.take();
        let out = byte_lines(child.stdout.take().unwrap());
        let err = byte_lines(child.stderr.take().unwrap());
        Chat {
            child,
            stdin,
            out,
            err,
        }
    }

    fn write(&mut self, text: &[u8]) {
        let w = self.stdin.as_mut().expect("stdin open");
        w.write_all(text).expect("write to chatclient");
        w.flush().unwrap();
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next stdout line; panics after `WAIT`.
    fn line(&self) -> String {
        let l = self
            .out
            .recv_timeout(WAIT)
            .expect("a line from chatclient in time");
        String::from_utf8(l).expect("UTF-8 line")
    }

    fn expect_line(&self, want: &str) {
        assert_eq!(self.line(), want);
    }

    /// Every remaining stdout line, up to EOF (the process has exited).
    fn rest(&self) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + WAIT;
        let mut v = Vec::new();
        loop {
            match self
                .out
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) => v.push(l),
                Err(mpsc::RecvTimeoutError::Disconnected) => return v,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("chatclient's stdout did not end in time")
                }
            }
        }
    }

    fn stderr_text(&self) -> String {
        let mut s = String::new();
        let deadline = Instant::now() + WAIT;
        loop {
            match self
                .err
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) => {
                    s.push_str(&String::from_utf8_lossy(&l));
                    s.push('\n');
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return s,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("chatclient's stderr did not end in time")
                }
            }
        }
    }

    fn wait_exit(&mut self) -> ExitStatus {
        wait_exit(&mut self.child, "chatclient")
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn piped_script_with_linger_prints_replies_byte_exact_and_quits() {
    let mut c = cluster(2);
    // Someone on the other server, in the same room.
    let alice = Client::new(c.binds[1]);
    alice.expect_reply("/join 3", "+OK You are now in chat room #3");

    let linger = Duration::from_millis(1500);
    let started = Instant::now();
    let mut chat = Chat::spawn(&[
        &c.binds[0].to_string(),
        "--linger",
        &linger.as_millis().to_string(),
    ]);
    // The whole script at once, then end of input: only --linger lets the
    // replies be printed before the client quits. CR LF is accepted.
    chat.write(b"/join 3\n/nick Bob\r\nHello there\n");
    chat.close_stdin();
    let st = chat.wait_exit();
    assert!(
        st.success(),
        "chatclient exited with {st}; stderr: {}",
        chat.stderr_text()
    );
    assert!(
        started.elapsed() >= linger,
        "exited before the linger was over"
    );
    let lines = chat.rest();
    let want: Vec<&[u8]> = vec![
        b"+OK You are now in chat room #3",
        b"+OK Nickname set to 'Bob'",
        b"<Bob> Hello there",
    ];
    assert_eq!(
        lines,
        want,
        "stdout was {:?}",
        lines
            .iter()
            .map(|l| String::from_utf8_lossy(l))
            .collect::<Vec<_>>()
    );
    assert_eq!(chat.stderr_text(), "");
    // The line went through the cluster as one datagram.
    assert_eq!(String::from_utf8_lossy(&alice.recv()), "<Bob> Hello there");

    // The client said /quit: server 1 logged it and no longer knows Bob.
    let addr = wait_quit(&mut c.servers[0]);
    assert_forgotten(c.binds[0], addr);
}

#[test]
fn typed_quit_exits_while_input_stays_open() {
    let mut c = cluster(1);
    let mut chat = Chat::spawn(&[&c.binds[0].to_string()]);
    chat.write(b"/join 2\n");
    chat.expect_line("+OK You are now in chat room #2");
    chat.write(b"/quit\n");
    let st = chat.wait_exit();
    assert!(st.success(), "chatclient exited with {st}");
    assert!(chat.stdin.is_some(), "stdin was still open");
    let addr = wait_quit(&mut c.servers[0]);
    assert_forgotten(c.binds[0], addr);
}

#[test]
fn sigterm_sends_quit_and_exits_zero() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let mut c = cluster(1);
    let mut chat = Chat::spawn(&[&c.binds[0].to_string()]);
    chat.write(b"/join 5\n");
    chat.expect_line("+OK You are now in chat room #5");
    kill(Pid::from_raw(chat.child.id() as i32), Signal::SIGTERM).unwrap();
    let st = chat.wait_exit();
    assert!(st.success(), "chatclient exited with {st}");
    let addr = wait_quit(&mut c.servers[0]);
    assert_forgotten(c.binds[0], addr);
}

#[test]
fn hostname_strangers_ignored_long_lines_sent_raw_bytes_printed() {
    let c = cluster(1);
    let port = c.binds[0].port();
    let alice = Client::new(c.binds[0]);
    alice.expect_reply("/join 4", "+OK You are now in chat room #4");

    let mut chat = Chat::spawn(&[&format!("localhost:{port}")]);
    chat.write(b"/join 4\n");
    chat.expect_line("+OK You are now in chat room #4");
    chat.write(b"Hi Alice\n");
    // The default nick reveals the client's address.
    let echo = String::from_utf8(alice.recv()).unwrap();
    let addr: SocketAddr = echo
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix("> Hi Alice"))
        .unwrap_or_else(|| panic!("unexpected delivery {echo:?}"))
        .parse()
        .unwrap();
    chat.expect_line(&echo);

    // A datagram from a stranger is queued before Alice's next message,
    // so it would be printed first if the client did not filter it.
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger.send_to(b"spoofed", addr).unwrap();
    alice.send(b"marker \xff\xfe");
    let mut want = format!("<{}> marker ", alice.addr()).into_bytes();
    want.extend_from_slice(b"\xff\xfe");
    assert_eq!(alice.recv(), want);
    // Not valid UTF-8: printed as the raw bytes.
    let got = chat.out.recv_timeout(WAIT).expect("Alice's line in time");
    assert_eq!(got, want, "printed {:?}", String::from_utf8_lossy(&got));

    // Over-long lines are the server's business: sent as they are.
    let long = vec![b'x'; 1500];
    chat.write(&long);
    chat.write(b"\n");
    let reply = chat.line();
    assert!(
        reply.starts_with("-ERR "),
        "reply to a 1500-byte line: {reply:?}"
    );

    chat.close_stdin();
    let st = chat.wait_exit();
    assert!(st.success(), "chatclient exited with {st}");
}

#[test]
fn bad_addresses_are_refused_with_a_message() {
    for bad in [
        "nonsense",
        "1.2.3.4",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:x",
        ":5000",
        "",
    ] {
        let out = Command::new(bin("chatclient"))
            .arg(bad)
            .stdin(Stdio::null())
            .output()
            .expect("run chatclient");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", out.status);
        assert!(
            out.stdout.is_empty(),
            "{bad:?}: stdout {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            err.starts_with("chatclient: bad server address") && err.contains(&format!("{bad:?}")),
            "{bad:?}: stderr {err:?}"
        );
        assert!(!err.contains("panicked"), "{bad:?}: {err}");
    }
    // No address at all: clap's usage error.
    let out = Command::new(bin("chatclient"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}

/// A pseudo-terminal: chatclient runs as the session leader with the pty
/// slave as its controlling terminal, like in a shell.
#[test]
fn ctrl_c_on_a_terminal_sends_quit_and_exits_zero() {
    use std::os::unix::process::CommandExt;
    let mut c = cluster(1);
    let alice = Client::new(c.binds[0]);
    alice.expect_reply("/join 1", "+OK You are now in chat room #1");

    let pty = nix::pty::openpty(None, None).expect("openpty");
    let mut cmd = Command::new(bin("chatclient"));
    // The screen is compared byte for byte: no colours.
    cmd.arg(c.binds[0].to_string())
        .env("NO_COLOR", "1")
        .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave.try_clone().unwrap()));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn chatclient on a pty");
    // Only the child may hold the slave, so the master sees EOF/EIO at exit.
    drop(cmd);
    drop(pty.slave);
    let mut child = KillOnDrop(child);

    let mut master_w = std::fs::File::from(pty.master);
    let mut master_r = master_w.try_clone().unwrap();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match master_r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut screen = Vec::new();
    let mut wait_screen = |needle: &str| {
        let deadline = Instant::now() + WAIT;
        while !String::from_utf8_lossy(&screen).contains(needle) {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(b) => screen.extend_from_slice(&b),
                Err(_) => panic!(
                    "terminal never showed {needle:?}; it shows {:?}",
                    String::from_utf8_lossy(&screen)
                ),
            }
        }
    };

    master_w.write_all(b"/join 1\n").unwrap();
    wait_screen("+OK You are now in chat room #1\r\n");
    master_w.write_all(b"Hello from a terminal\n").unwrap();
    let echo = String::from_utf8(alice.recv()).unwrap();
    let addr: SocketAddr = echo
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix("> Hello from a terminal"))
        .unwrap_or_else(|| panic!("unexpected delivery {echo:?}"))
        .parse()
        .unwrap();
    wait_screen(&format!("{echo}\r\n"));

    // Ctrl+C: the line discipline sends SIGINT to the foreground group.
    master_w.write_all(b"\x03").unwrap();
    let st = wait_exit(&mut child.0, "chatclient");
    assert!(st.success(), "chatclient exited with {st} after Ctrl+C");
    assert_eq!(
        wait_quit(&mut c.servers[0]),
        addr,
        "the quit came from another client"
    );
    assert_forgotten(c.binds[0], addr);
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A busy room: the server sends the client its deliveries in runs (one
/// segmented send each; its counters say so), the client reads a run whole
/// and prints every line of it on its own, in order, byte for byte.
#[test]
fn a_burst_of_deliveries_is_printed_line_by_line_in_order() {
    let mut c = cluster(1);
    let mut chat = Chat::spawn(&[&c.binds[0].to_string()]);
    chat.write(b"/join 5\n/nick Eve\n");
    chat.expect_line("+OK You are now in chat room #5");
    chat.expect_line("+OK Nickname set to 'Eve'");
    let ann = Client::new(c.binds[0]);
    ann.expect_reply("/join 5", "+OK You are now in chat room #5");
    ann.expect_reply("/nick Ann", "+OK Nickname set to 'Ann'");
    let n = 300;
    for i in 0..n {
        ann.send(format!("burst line {i:04}"));
    }
    for i in 0..n {
        chat.expect_line(&format!("<Ann> burst line {i:04}"));
    }
    chat.close_stdin();
    let st = chat.wait_exit();
    assert!(st.success(), "chatclient exited with {st}");
    assert_eq!(chat.stderr_text(), "");
    // The server sent runs (to Eve and Ann alike: the same deliveries).
    let server = &mut c.servers[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let lines = server.wait_stderr(" stopped: ");
    let counters =
        node::stats::ServerCounters::from_stopped_line(lines.last().unwrap()).expect("counters");
    assert!(
        counters.segmented_sends > 0,
        "no run was sent segmented: {counters:?}"
    );
}
