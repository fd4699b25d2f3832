//! The chat client as people use it (issue 18) and its answer to the
//! server's address-confirmation request (issue 13): the interactive mode
//! under a pseudo-terminal, whose output is run through a terminal emulator
//! (vt100) to check the screen a person would see; the pipe mode's notices
//! and exit status when no server is there; fake UDP servers played by the
//! test. Only 127.0.0.1; deadlines, no sleeps.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{Client, Proc, Scratch, WAIT, bin, free_ports, legacy_config, start_server};

const ROWS: u16 = 30;
const COLS: u16 = 100;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `chatclient` on a pseudo-terminal of ROWS x COLS, as the session
/// leader with the pty as its controlling terminal; everything it writes is
/// fed to a vt100 emulator.
struct Term {
    child: KillOnDrop,
    input: std::fs::File,
    rx: mpsc::Receiver<Vec<u8>>,
    screen: vt100::Parser,
}

impl Term {
    fn spawn(server: SocketAddr, env: &[(&str, Option<&str>)]) -> Term {
        use std::os::unix::process::CommandExt;
        let size = nix::pty::Winsize {
            ws_row: ROWS,
            ws_col: COLS,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        let mut cmd = Command::new(bin("chatclient"));
        cmd.arg(server.to_string())
            .env("TERM", "xterm-256color")
            .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
            .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
            .stderr(Stdio::from(pty.slave.try_clone().unwrap()));
        for (k, v) in env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
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
        drop(cmd);
        drop(pty.slave);
        let input = std::fs::File::from(pty.master);
        let mut output = input.try_clone().unwrap();
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match output.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Term {
            child: KillOnDrop(child),
            input,
            rx,
            screen: vt100::Parser::new(
                std::num::NonZeroU16::new(ROWS).unwrap(),
                std::num::NonZeroU16::new(COLS).unwrap(),
                0,
            ),
        }
    }

    fn text(&self) -> String {
        self.screen.screen().contents()
    }

    /// The screen's rows, trailing blanks trimmed, empty rows at the end
    /// dropped.
    fn rows(&self) -> Vec<String> {
        let mut rows: Vec<String> = self
            .screen
            .screen()
            .rows(0, COLS)
            .map(|r| r.trim_end().to_string())
            .collect();
        while rows.last().is_some_and(|r| r.is_empty()) {
            rows.pop();
        }
        rows
    }

    /// Feeds output until `ok(screen)` holds; panics after WAIT.
    fn wait(&mut self, what: &str, ok: impl Fn(&Term) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !ok(self) {
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(b) => self.screen.process(&b),
                Err(_) => panic!("the screen never showed {what}; it shows:\n{}", self.text()),
            }
        }
    }

    fn wait_text(&mut self, needle: &str) {
        self.wait(&format!("{needle:?}"), |t| t.text().contains(needle));
    }

    /// The last non-empty row is exactly `row` (the prompt line).
    fn wait_last_row(&mut self, row: &str) {
        self.wait(&format!("{row:?} as the last row"), |t| {
            t.rows().last().map(String::as_str) == Some(row)
        });
    }

    fn keys(&mut self, k: &str) {
        self.input.write_all(k.as_bytes()).unwrap();
        self.input.flush().unwrap();
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.0.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "chatclient did not exit in time");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn terminal_client_keeps_the_typed_line_while_messages_arrive() {
    let dir = Scratch::new("ux-tty");
    let (text, binds, _) = legacy_config(1, false);
    let cfg = dir.write("servers.txt", &text);
    let _server: Proc = start_server(&cfg, 1, &[]);
    let alice = Client::new(binds[0]);
    alice.expect_reply("/nick Alice", "+OK Nickname set to 'Alice'");
    alice.expect_reply("/join 1", "+OK You are now in chat room #1");

    let mut t = Term::spawn(binds[0], &[("NO_COLOR", None)]);
    // Banner, then a prompt with the default nick (our IP:PORT), no room.
    t.wait_text(&format!("chatclient: chat server {} (UDP)", binds[0]));
    t.wait_text("/help lists the commands");
    t.wait("the no-room prompt", |t| {
        t.rows()
            .last()
            .is_some_and(|r| r.starts_with("127.0.0.1:") && r.ends_with(" (no room)>"))
    });

    // The prompt follows the server's replies.
    t.keys("/join 1\r");
    t.wait_text("+OK You are now in chat room #1");
    t.keys("/nick Bob\r");
    t.wait_text("+OK Nickname set to 'Bob'");
    t.wait_last_row("Bob #1>");

    // /help is answered locally, not sent (the server would say -ERR).
    t.keys("/help\r");
    t.wait_text("/join N      enter chat room N");
    t.wait_last_row("Bob #1>");

    // Half a line typed, then messages arrive: each on a row of its own
    // above the prompt, and the prompt still holds the half line.
    t.keys("hello wor");
    t.wait_last_row("Bob #1> hello wor");
    for i in 1..=5 {
        alice.send(format!("message {i} from Alice"));
    }
    for i in 1..=5 {
        assert_eq!(
            String::from_utf8_lossy(&alice.recv()),
            format!("<Alice> message {i} from Alice")
        );
    }
    t.wait_text("<Alice> message 5 from Alice");
    t.wait_last_row("Bob #1> hello wor");
    let rows = t.rows();
    for i in 1..=5 {
        let want = format!("<Alice> message {i} from Alice");
        assert!(
            rows.contains(&want),
            "no row {want:?} on the screen:\n{}",
            rows.join("\n")
        );
    }
    assert!(
        !t.text().contains("-ERR"),
        "something went to the server that should not have:\n{}",
        t.text()
    );

    // Finishing the line sends it whole.
    t.keys("ld\r");
    assert_eq!(String::from_utf8_lossy(&alice.recv()), "<Bob> hello world");
    t.wait_text("<Bob> hello world");
    t.wait_last_row("Bob #1>");

    // Colours: nicks are coloured (no NO_COLOR here), the text is not.
    let screen = t.screen.screen();
    let (row, _) = t
        .rows()
        .iter()
        .enumerate()
        .find(|(_, r)| r.starts_with("<Alice> message 1"))
        .map(|(i, r)| (i as u16, r.clone()))
        .expect("Alice's row");
    let nick = screen.cell(row, 1).expect("cell");
    let body = screen.cell(row, 9).expect("cell");
    assert_eq!(nick.contents(), "A");
    assert_ne!(
        nick.fgcolor(),
        vt100::Color::Default,
        "the nick has no colour"
    );
    assert_eq!(
        body.fgcolor(),
        vt100::Color::Default,
        "the text is coloured"
    );

    // History: Up brings back the last line.
    t.keys("\x1b[A");
    t.wait_last_row("Bob #1> hello world");
    t.keys("\x15"); // Ctrl+U clears it
    t.wait_last_row("Bob #1>");

    // Ctrl+D on an empty line leaves with /quit.
    t.keys("\x04");
    let st = t.wait_exit();
    assert!(st.success(), "chatclient exited with {st}");
}

#[test]
fn terminal_client_without_colour_when_no_color_is_set() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    server.set_read_timeout(Some(WAIT)).unwrap();
    let mut t = Term::spawn(server.local_addr().unwrap(), &[("NO_COLOR", Some("1"))]);
    t.wait_text("(no room)>");
    t.keys("hi\r");
    let mut buf = [0u8; 100];
    let (n, from) = server.recv_from(&mut buf).expect("the line");
    assert_eq!(&buf[..n], b"hi");
    server.send_to(b"<Zed> plain", from).unwrap();
    t.wait_text("<Zed> plain");
    let screen = t.screen.screen();
    let row = t
        .rows()
        .iter()
        .position(|r| r == "<Zed> plain")
        .expect("Zed's row") as u16;
    assert_eq!(
        screen.cell(row, 1).unwrap().fgcolor(),
        vt100::Color::Default
    );
    t.keys("/quit\r");
    let (n, _) = server.recv_from(&mut buf).expect("the quit");
    assert_eq!(&buf[..n], b"/quit");
    assert!(t.wait_exit().success());
}

/// A server that is gone: the terminal says so (ICMP refusal), keeps
/// going, and says when the server answers again.
#[test]
fn terminal_client_notices_a_missing_server_and_its_return() {
    let port = free_ports(1)[0];
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut t = Term::spawn(addr, &[("NO_COLOR", Some("1"))]);
    t.wait_text("(no room)>");
    t.keys("/join 1\r");
    t.wait_text(&format!(
        "* no chat server at {addr}: it refused the datagram"
    ));
    // Still running: the server comes up and answers the next line.
    let server = UdpSocket::bind(addr).expect("rebind the free port");
    server.set_read_timeout(Some(WAIT)).unwrap();
    t.keys("/join 2\r");
    let mut buf = [0u8; 100];
    let (n, from) = server.recv_from(&mut buf).expect("the line");
    assert_eq!(&buf[..n], b"/join 2");
    server
        .send_to(b"+OK You are now in chat room #2", from)
        .unwrap();
    t.wait_text(&format!("* {addr} answers again"));
    t.wait_last_row(&format!("{from} #2>"));
    t.keys("\x03"); // Ctrl+C leaves with /quit
    let (n, _) = server.recv_from(&mut buf).expect("the quit");
    assert_eq!(&buf[..n], b"/quit");
    assert!(t.wait_exit().success());
}

/// The terminal client answers the server's confirmation request at once
/// and does not show it as a chat line.
#[test]
fn terminal_client_confirms_its_address() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    server.set_read_timeout(Some(WAIT)).unwrap();
    let mut t = Term::spawn(server.local_addr().unwrap(), &[("NO_COLOR", Some("1"))]);
    t.wait_text("(no room)>");
    t.keys("hello\r");
    let mut buf = [0u8; 200];
    let (_, from) = server.recv_from(&mut buf).expect("the line");
    server
        .send_to(
            b"+OK Confirm your address to keep receiving messages: send /confirm 1234567890abcdef",
            from,
        )
        .unwrap();
    let (n, _) = server.recv_from(&mut buf).expect("the confirmation");
    assert_eq!(&buf[..n], b"/confirm 1234567890abcdef");
    server.send_to(b"+OK Address confirmed", from).unwrap();
    t.wait_text("* the server asked this client to confirm its address: confirmed");
    t.wait_text("* +OK Address confirmed");
    assert!(!t.text().contains("send /confirm"), "{}", t.text());
    t.keys("/quit\r");
    assert!(t.wait_exit().success());
}

fn piped(args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new(bin("chatclient"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chatclient");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = read_all(Box::new(child.stdout.take().unwrap()));
    let err = read_all(Box::new(child.stderr.take().unwrap()));
    let mut child = KillOnDrop(child);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "chatclient did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

#[test]
fn piped_client_without_a_server_says_so_and_fails() {
    let port = free_ports(1)[0];
    let addr = format!("127.0.0.1:{port}");
    let o = piped(&[&addr, "--linger", "500"], b"/join 1\nhello\n");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(o.stdout.is_empty(), "stdout: {:?}", o.stdout);
    assert!(
        err.contains(&format!(
            "chatclient: no chat server at {addr}: it refused the datagram"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("chatclient: no chat server answered at {addr}")),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn piped_client_with_a_silent_server_says_so_and_fails() {
    // Something holds the port but never answers (a stopped server, a
    // wrong address on a busy host).
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let started = Instant::now();
    let o = piped(&[&addr, "--linger", "3600"], b"/join 1\n");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(started.elapsed() >= Duration::from_millis(3600));
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(o.stdout.is_empty());
    assert!(
        err.contains(&format!(
            "chatclient: no reply from {addr} to \"/join 1\" within 3 s"
        )),
        "{err}"
    );
}

/// Pipe mode: the confirmation request is printed like every datagram
/// (stdout is the server's output) and answered at once.
#[test]
fn piped_client_confirms_its_address_and_prints_everything() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    server.set_read_timeout(Some(WAIT)).unwrap();
    let addr = server.local_addr().unwrap();
    let fake = std::thread::spawn(move || {
        let mut buf = [0u8; 200];
        let (n, from) = server.recv_from(&mut buf).expect("the line");
        assert_eq!(&buf[..n], b"/join 1");
        server
            .send_to(b"+OK You are now in chat room #1", from)
            .unwrap();
        server
            .send_to(
                b"+OK Confirm your address to keep receiving messages: send /confirm feedfacecafebeef",
                from,
            )
            .unwrap();
        let (n, _) = server.recv_from(&mut buf).expect("the confirmation");
        assert_eq!(&buf[..n], b"/confirm feedfacecafebeef");
        server.send_to(b"+OK Address confirmed", from).unwrap();
        let (n, _) = server.recv_from(&mut buf).expect("the quit");
        assert_eq!(&buf[..n], b"/quit");
    });
    let o = piped(&[&addr.to_string(), "--linger", "1500"], b"/join 1\n");
    fake.join().expect("the fake server's checks");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "+OK You are now in chat room #1\n\
         +OK Confirm your address to keep receiving messages: send /confirm feedfacecafebeef\n\
         +OK Address confirmed\n"
    );
    assert_eq!(String::from_utf8_lossy(&o.stderr), "");
}

/// `chatclient ... | head -1`: the reader goes away; the client ends
/// quietly with /quit and status 0.
#[test]
fn piped_client_with_closed_stdout_ends_quietly() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    server.set_read_timeout(Some(WAIT)).unwrap();
    let addr = server.local_addr().unwrap();
    let mut child = Command::new(bin("chatclient"))
        .arg(addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chatclient");
    let mut stdin = child.stdin.take().unwrap();
    drop(child.stdout.take()); // nobody reads stdout
    let mut child = KillOnDrop(child);
    stdin.write_all(b"/join 1\n").unwrap();
    let mut buf = [0u8; 100];
    let (_, from) = server.recv_from(&mut buf).expect("the line");
    server
        .send_to(b"+OK You are now in chat room #1", from)
        .unwrap();
    let (n, _) = server.recv_from(&mut buf).expect("the quit");
    assert_eq!(&buf[..n], b"/quit");
    let deadline = Instant::now() + WAIT;
    let st = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "chatclient did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(st.success(), "{st}: {err}");
    assert_eq!(err, "");
}
