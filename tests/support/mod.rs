//! Shared helpers for the end-to-end tests: real binaries, real UDP sockets
//! on 127.0.0.1, deadlines instead of sleeps.
#![allow(dead_code)]

pub mod hosts;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Path of a workspace binary (`chatserver`, `chatclient`, `launcher`),
/// built once per test process: the root package's tests cannot use
/// `CARGO_BIN_EXE_*` for other packages' binaries.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let profile_release = std::env::current_exe()
            .ok()
            .and_then(|p| {
                p.parent()
                    .and_then(|d| d.parent())
                    .map(|d| d.ends_with("release"))
            })
            .unwrap_or(false);
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build", "--quiet", "-p", "node", "-p", "client", "-p", "launcher", "--bins",
        ]);
        if profile_release {
            cmd.arg("--release");
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cannot run cargo to build the binaries");
        assert!(status.success(), "building the binaries failed");
        // target/<profile>/deps/test-xxxx -> target/<profile>
        let exe = std::env::current_exe().expect("current_exe");
        exe.parent()
            .and_then(|d| d.parent())
            .expect("test binary lives in target/<profile>/deps")
            .to_path_buf()
    });
    let p = dir.join(name);
    assert!(p.exists(), "binary {} not found", p.display());
    p
}

/// A fresh scratch directory under the system temp dir, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("chatroom-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create scratch dir");
        Scratch(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write scratch file");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `n` UDP ports on 127.0.0.1 that were free a moment ago, drawn below the
/// kernel's ephemeral range (see [`launcher::net::free_ports`]), so no
/// port-0 bind of a parallel test takes one before its server binds it.
pub fn free_ports(n: usize) -> Vec<u16> {
    launcher::net::free_ports([127, 0, 0, 1].into(), n).expect("free ports")
}

/// A legacy config with `n` servers; with `proxy` each server gets a
/// separate forwarding port. Returns (file text, bind addrs, forward addrs).
pub fn legacy_config(n: usize, proxy: bool) -> (String, Vec<SocketAddr>, Vec<SocketAddr>) {
    let ports = free_ports(if proxy { 2 * n } else { n });
    let mut text = String::new();
    let mut binds = Vec::new();
    let mut fwds = Vec::new();
    for i in 0..n {
        let bind: SocketAddr = format!("127.0.0.1:{}", ports[i]).parse().unwrap();
        let fwd: SocketAddr = if proxy {
            format!("127.0.0.1:{}", ports[n + i]).parse().unwrap()
        } else {
            bind
        };
        if proxy {
            text.push_str(&format!("{fwd},{bind}\n"));
        } else {
            text.push_str(&format!("{bind}\n"));
        }
        binds.push(bind);
        fwds.push(fwd);
    }
    (text, binds, fwds)
}

/// A child process killed (by its own PID) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub stdout_lines: Option<mpsc::Receiver<String>>,
    pub stderr_lines: Option<mpsc::Receiver<String>>,
}

impl Proc {
    /// Spawns with stdout and stderr captured line by line.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout_lines = child.stdout.take().map(lines_of);
        let stderr_lines = child.stderr.take().map(lines_of);
        Proc {
            child,
            name: name.to_string(),
            stdout_lines,
            stderr_lines,
        }
    }

    /// Waits for a stderr line containing `needle`; returns all lines read.
    pub fn wait_stderr(&mut self, needle: &str) -> Vec<String> {
        wait_line(
            self.stderr_lines.as_ref().expect("stderr captured"),
            needle,
            &self.name,
        )
    }

    pub fn wait_stdout(&mut self, needle: &str) -> Vec<String> {
        wait_line(
            self.stdout_lines.as_ref().expect("stdout captured"),
            needle,
            &self.name,
        )
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for the process to exit, up to `WAIT`.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit in time",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A failing test shows what its processes said (CI keeps nothing else).
        if std::thread::panicking() {
            self.print_unread_output();
        }
    }
}

impl Proc {
    /// Prints the last lines of output nobody read, once the process is gone.
    fn print_unread_output(&mut self) {
        const LAST: usize = 300;
        for (stream, rx) in [
            ("stderr", &self.stderr_lines),
            ("stdout", &self.stdout_lines),
        ] {
            let Some(rx) = rx else { continue };
            let mut lines = std::collections::VecDeque::new();
            // The reader thread ends when the pipe closes, which it did above.
            while let Ok(l) = rx.recv_timeout(Duration::from_secs(2)) {
                if lines.len() == LAST {
                    lines.pop_front();
                }
                lines.push_back(l);
            }
            if lines.is_empty() {
                continue;
            }
            eprintln!(
                "---- {} {stream} (last {} lines unread) ----",
                self.name,
                lines.len()
            );
            for l in lines {
                eprintln!("{l}");
            }
        }
    }
}

fn lines_of<R: std::io::Read + Send + 'static>(r: R) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    rx
}

fn wait_line(rx: &mpsc::Receiver<String>, needle: &str, who: &str) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let hit = l.contains(needle);
                seen.push(l);
                if hit {
                    return seen;
                }
            }
            Err(_) => panic!("{who}: no line containing {needle:?} in time; saw {seen:#?}"),
        }
    }
}

/// Starts `chatserver CONFIG INDEX [args]` and waits until it is bound.
pub fn start_server(config: &Path, index: usize, args: &[&str]) -> Proc {
    let mut cmd = Command::new(bin("chatserver"));
    cmd.arg(config).arg(index.to_string()).args(args);
    let mut p = Proc::spawn(&format!("chatserver {index}"), cmd);
    p.wait_stderr("ready");
    p
}

/// A test client: one UDP socket, like `chatclient`.
pub struct Client {
    pub sock: UdpSocket,
    pub server: SocketAddr,
}

impl Client {
    pub fn new(server: SocketAddr) -> Client {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind client");
        Client { sock, server }
    }
    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("local addr")
    }
    pub fn send(&self, line: impl AsRef<[u8]>) {
        self.sock.send_to(line.as_ref(), self.server).expect("send");
    }
    /// Next datagram, or `None` after `timeout`.
    pub fn recv_within(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 70000];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("timeout");
            match self.sock.recv_from(&mut buf) {
                Ok((n, _)) => return Some(buf[..n].to_vec()),
                // A signal (a child of another test exiting) is not a timeout.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted && !left.is_zero() => {}
                Err(_) => return None,
            }
        }
    }
    /// Next datagram; panics after `WAIT`.
    pub fn recv(&self) -> Vec<u8> {
        self.recv_within(WAIT)
            .unwrap_or_else(|| panic!("client {} got nothing in time", self.addr()))
    }
    /// Sends `line` and checks the one reply, byte for byte.
    pub fn expect_reply(&self, line: &str, reply: &str) {
        self.send(line);
        let got = self.recv();
        assert_eq!(String::from_utf8_lossy(&got), reply, "reply to {line:?}");
    }
    /// Sends `line` and checks the reply starts with `prefix`.
    pub fn expect_reply_prefix(&self, line: &str, prefix: &str) -> String {
        self.send(line);
        let got = String::from_utf8_lossy(&self.recv()).into_owned();
        assert!(
            got.starts_with(prefix),
            "reply to {line:?} was {got:?}, expected {prefix}..."
        );
        got
    }
    /// Collects exactly `n` datagrams (each within `WAIT`).
    pub fn recv_n(&self, n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|_| self.recv()).collect()
    }
    /// Asserts nothing arrives for a short quiet period.
    pub fn expect_silence(&self, quiet: Duration) {
        if let Some(d) = self.recv_within(quiet) {
            panic!("unexpected datagram {:?}", String::from_utf8_lossy(&d));
        }
    }
}
