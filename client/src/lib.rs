//! `chatclient`: one user's session with a chat server.
//!
//! Every line read from standard input is sent to the server as one UDP
//! datagram (without its trailing LF or CR LF). Every datagram that arrives
//! from the server is printed, byte for byte, as one line on standard output
//! as soon as it arrives, also while the user is still typing.
//!
//! The session ends, always by sending `/quit` to the server first, when:
//! - the user types `/quit` (sent as typed);
//! - SIGINT (Ctrl+C), SIGTERM or SIGHUP arrives;
//! - standard input ends, after `--linger` milliseconds during which
//!   datagrams are still printed (so scripts can collect the replies);
//! - standard output is closed (`chatclient ... | head -1`), quietly.
//!
//! That is the pipe mode, for scripts: standard output carries exactly the
//! server's datagrams. When standard input and output are both a terminal,
//! [`tty`] runs the interactive client instead (banner, prompt, line
//! editing, colours). Both modes notice a missing or dead server (ICMP
//! refusals on the connected socket, no reply to a command within
//! [`REPLY_TIMEOUT`]) and say so once, on standard error in pipe mode, and
//! keep going; both answer the server's address-confirmation request
//! ([`confirm_token`]) at once.

pub mod gro;
pub mod tty;

use clap::Parser;
use std::fmt;
use std::future::Future;
use std::io::{self, BufRead, IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The `chatclient` command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "chatclient",
    version,
    about = "Chat with a chat server over UDP: each input line is one datagram, each datagram received is one output line",
    long_about = "Chat with a chat server over UDP.\n\n\
                  Each line typed (or piped) is sent to the server as one datagram; each datagram \
                  from the server is printed as one line as it arrives. Commands: /join N, /part, \
                  /nick NAME, /quit. Ctrl+C, SIGTERM and end of input also send /quit and exit."
)]
pub struct Args {
    /// The server's bind address: IP:PORT, `[IPV6]:PORT` or HOST:PORT.
    #[arg(value_name = "IP:PORT")]
    pub server: String,
    /// After end of input, keep printing received datagrams for MS
    /// milliseconds before sending /quit and exiting.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub linger: u64,
}

/// Exit status for a bad command line (like clap's own usage errors).
const EXIT_USAGE: u8 = 2;

/// How long a command may go unanswered before the client says the server
/// seems to be missing. The server answers commands at once, so this only
/// fires when the server (or the path to it) is gone.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// The server's request that a client confirm its address (issue 13), up
/// to the token; the whole datagram is this prefix and 16 lowercase hex
/// digits.
pub const CONFIRM_PREFIX: &[u8] =
    b"+OK Confirm your address to keep receiving messages: send /confirm ";

/// The token of an address-confirmation request, when `data` is exactly
/// one (prefix, then 16 lowercase hex digits, nothing else).
pub fn confirm_token(data: &[u8]) -> Option<&[u8]> {
    let token = data.strip_prefix(CONFIRM_PREFIX)?;
    let hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
    (token.len() == 16 && token.iter().all(hex)).then_some(token)
}

/// The line that answers an address-confirmation request.
pub fn confirm_reply(token: &[u8]) -> Vec<u8> {
    let mut line = b"/confirm ".to_vec();
    line.extend_from_slice(token);
    line
}

/// Whether `data` is the server's answer to a `/confirm` line.
pub fn is_confirm_answer(data: &[u8]) -> bool {
    data == b"+OK Address confirmed" || data.starts_with(b"-ERR Invalid confirmation token")
}

/// Writes one notice line on standard error; a closed stderr is ignored.
pub fn notice(text: &str) {
    let _ = writeln!(io::stderr(), "chatclient: {text}");
}

/// Whether the server answers `line` (everything but `/quit` gets a reply
/// or an echo) and whether that answer comes at once (commands do; a chat
/// line's echo may wait for the ordering of its room).
fn is_command(line: &[u8]) -> bool {
    line.first() == Some(&b'/') && !is_quit(line)
}

/// What the client knows of its server's health, and the notices that go
/// with it: one notice when the server seems gone, one when it is back.
#[derive(Debug)]
pub struct Health {
    server: SocketAddr,
    /// Any datagram ever came from the server.
    pub answered: bool,
    /// A line that expects an answer was sent.
    pub asked: bool,
    /// An ICMP refusal or a reply timeout was ever seen.
    pub trouble: bool,
    /// The oldest command sent since the last datagram, and when.
    pending: Option<(std::time::Instant, String)>,
    /// A "seems gone" notice is out and no datagram came since.
    down: bool,
}

impl Health {
    pub fn new(server: SocketAddr) -> Health {
        Health {
            server,
            answered: false,
            asked: false,
            trouble: false,
            pending: None,
            down: false,
        }
    }

    /// A line went to the server.
    pub fn sent(&mut self, line: &[u8], now: std::time::Instant) {
        if !is_quit(line) {
            self.asked = true;
        }
        if is_command(line) && self.pending.is_none() {
            let shown = String::from_utf8_lossy(&line[..line.len().min(40)]).into_owned();
            self.pending = Some((now, shown));
        }
    }

    /// A datagram came from the server; a notice when it had seemed gone.
    pub fn received(&mut self) -> Option<String> {
        self.answered = true;
        self.pending = None;
        if std::mem::take(&mut self.down) {
            Some(format!("{} answers again", self.server))
        } else {
            None
        }
    }

    /// The connected socket reported an ICMP refusal.
    pub fn refused(&mut self) -> Option<String> {
        self.trouble = true;
        if std::mem::replace(&mut self.down, true) {
            return None;
        }
        Some(format!(
            "no chat server at {}: it refused the datagram (nothing listens there); still trying",
            self.server
        ))
    }

    /// Time passes: a notice when a command has waited too long.
    pub fn tick(&mut self, now: std::time::Instant) -> Option<String> {
        let (at, cmd) = self.pending.as_ref()?;
        if now.saturating_duration_since(*at) < REPLY_TIMEOUT || self.down {
            return None;
        }
        let text = format!(
            "no reply from {} to {cmd:?} within {} s: the server may be down; still trying",
            self.server,
            REPLY_TIMEOUT.as_secs()
        );
        self.trouble = true;
        self.down = true;
        Some(text)
    }

    /// Whether the session should end with a failure status: no server ever
    /// answered although one was asked something and either refused it,
    /// timed out, or was given `waited` (the linger) to answer.
    pub fn failed(&self, waited: bool) -> bool {
        !self.answered && self.asked && (self.trouble || waited)
    }
}

/// Runs the client with parsed arguments; the process' exit status.
pub fn run(args: Args) -> ExitCode {
    let server = match resolve_server(&args.server) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("chatclient: bad server address {:?}: {e}", args.server);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if io::stdin().is_terminal() && io::stdout().is_terminal() {
        match tty::run(server) {
            Ok(code) => return code,
            // A terminal rustyline cannot drive (TERM=dumb): the plain mode.
            Err(tty::TtyError::Unsupported) => {}
            Err(tty::TtyError::Io(e)) => {
                notice(&e.to_string());
                return ExitCode::FAILURE;
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            notice(&format!("cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let linger = Duration::from_millis(args.linger);
    match rt.block_on(main_loop(server, linger)) {
        Ok(end) if end.health.failed(!linger.is_zero()) => {
            notice(&format!("no chat server answered at {server}"));
            ExitCode::FAILURE
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            notice(&e.to_string());
            ExitCode::FAILURE
        }
    }
}

async fn main_loop(server: SocketAddr, linger: Duration) -> io::Result<SessionEnd> {
    // Signals first: a Ctrl+C from now on ends the session with /quit.
    let stop = stop_signal()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot catch signals: {e}")))?;
    let sock = bind_for(server)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open a UDP socket: {e}")))?;
    // Connected: the kernel reports ICMP refusals (no server on that port)
    // as errors on this socket, and drops datagrams from anyone else.
    sock.connect(server)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot reach {server}: {e}")))?;
    let (tx, mut rx) = mpsc::channel(64);
    spawn_stdin_reader(tx)?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    session(&sock, server, &mut rx, &mut out, linger, stop).await
}

/// A UDP socket on an ephemeral port of `server`'s address family.
pub async fn bind_for(server: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    UdpSocket::bind(local).await
}

/// A blocking UDP socket on an ephemeral port of `server`'s address family.
pub fn bind_std(server: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    std::net::UdpSocket::bind(local)
}

/// Resolves after SIGINT, SIGTERM or SIGHUP (Ctrl+C elsewhere). Must be
/// called inside the runtime; the handlers are installed when it returns.
#[cfg(unix)]
fn stop_signal() -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn stop_signal() -> io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// What the input side reports.
#[derive(Debug)]
pub enum Input {
    /// One line, without its line ending.
    Line(Vec<u8>),
    /// End of input.
    Eof,
    /// Reading failed; treated like the end of input.
    Error(io::Error),
}

/// Reads stdin as raw byte lines on a plain thread (a blocking read cannot
/// be cancelled; the thread simply dies with the process).
fn spawn_stdin_reader(tx: mpsc::Sender<Input>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let stdin = io::stdin();
            let mut r = stdin.lock();
            loop {
                let mut line = Vec::new();
                let ev = match r.read_until(b'\n', &mut line) {
                    Ok(0) => Input::Eof,
                    Ok(_) => Input::Line(strip_line_ending(line)),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Input::Error(e),
                };
                let last = !matches!(ev, Input::Line(_));
                if tx.blocking_send(ev).is_err() || last {
                    return;
                }
            }
        })?;
    Ok(())
}

/// Drops a trailing LF, then a trailing CR.
pub fn strip_line_ending(mut line: Vec<u8>) -> Vec<u8> {
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    line
}

/// Whether the server will take `line` as `/quit` (its command word is the
/// text up to the first space, and commands are case sensitive).
pub fn is_quit(line: &[u8]) -> bool {
    let cmd = line.split(|&b| b == b' ').next().unwrap_or_default();
    cmd == b"/quit"
}

/// How a pipe-mode session ended.
#[derive(Debug)]
pub struct SessionEnd {
    pub health: Health,
}

/// The session proper: forwards `input` lines to `server`, prints what the
/// server sends to `out`, and ends as the module documentation says. Always
/// sends `/quit` (or the user's own `/quit` line) before returning.
/// Answers an address-confirmation request at once (after printing it, as
/// every datagram). Errors only when `out` cannot be written for another
/// reason than a closed pipe.
pub async fn session<W: Write>(
    sock: &UdpSocket,
    server: SocketAddr,
    input: &mut mpsc::Receiver<Input>,
    out: &mut W,
    linger: Duration,
    stop: impl Future<Output = ()>,
) -> io::Result<SessionEnd> {
    tokio::pin!(stop);
    let mut buf = vec![0u8; 65536];
    let mut input_open = true;
    let mut deadline: Option<Instant> = None;
    let mut health = Health::new(server);
    let mut ticks = tokio::time::interval(Duration::from_millis(250));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Runs of deliveries come whole (see `gro`); without it, one by one.
    gro::enable(sock);
    let result = 'session: loop {
        tokio::select! {
            biased;
            _ = &mut stop => break Ok(()),
            _ = sleep_until_opt(deadline), if deadline.is_some() => break Ok(()),
            ev = input.recv(), if input_open => match ev {
                Some(Input::Line(line)) => {
                    send(sock, server, &line, &mut health).await;
                    if is_quit(&line) {
                        return Ok(SessionEnd { health });
                    }
                }
                end => {
                    if let Some(Input::Error(e)) = end {
                        notice(&format!("cannot read input: {e}"));
                    }
                    input_open = false;
                    if linger.is_zero() {
                        break Ok(());
                    }
                    deadline = Some(Instant::now() + linger);
                }
            },
            r = sock.async_io(Interest::READABLE, || gro::recv(sock, &mut buf)) => match r {
                Ok(run) if run.from == Some(server) => {
                    for data in gro::split(&buf[..run.len], run.segment) {
                        if let Some(text) = health.received() {
                            notice(&text);
                        }
                        if let Err(e) = print_line(out, data) {
                            if e.kind() == io::ErrorKind::BrokenPipe {
                                break 'session Ok(()); // `| head`: nobody reads any more
                            }
                            break 'session Err(io::Error::new(
                                e.kind(),
                                format!("cannot write output: {e}"),
                            ));
                        }
                        if let Some(token) = confirm_token(data) {
                            send(sock, server, &confirm_reply(token), &mut health).await;
                        }
                    }
                }
                Ok(_) => {} // not from our server: ignored
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    if let Some(text) = health.refused() {
                        notice(&text);
                    }
                }
                Err(e) => notice(&format!("receive failed: {e}")),
            },
            _ = ticks.tick() => {
                if let Some(text) = health.tick(std::time::Instant::now()) {
                    notice(&text);
                }
            }
        }
    };
    send(sock, server, b"/quit", &mut health).await;
    // A refusal of the last datagrams may still be pending on the socket.
    if let Ok(Some(e)) = sock.take_error()
        && e.kind() == io::ErrorKind::ConnectionRefused
        && let Some(text) = health.refused()
    {
        notice(&text);
    }
    result.map(|()| SessionEnd { health })
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Sends one datagram; a failure (e.g. too large for UDP) is reported on
/// stderr and the session goes on. A refusal reported for an earlier
/// datagram (ICMP) is noted and the send tried once more.
async fn send(sock: &UdpSocket, server: SocketAddr, data: &[u8], health: &mut Health) {
    health.sent(data, std::time::Instant::now());
    for _ in 0..2 {
        match sock.send_to(data, server).await {
            Ok(_) => return,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                if let Some(text) = health.refused() {
                    notice(&text);
                }
            }
            Err(e) => {
                notice(&format!(
                    "cannot send {} bytes to {server}: {e}",
                    data.len()
                ));
                return;
            }
        }
    }
}

/// One datagram as one line, raw bytes, flushed at once.
fn print_line<W: Write>(out: &mut W, data: &[u8]) -> io::Result<()> {
    out.write_all(data)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Why a server address was refused.
#[derive(Debug)]
pub enum AddrError {
    Empty,
    MissingPort,
    MissingHost,
    BadPort(String),
    PortZero,
    Resolve(String, io::Error),
    NoAddress(String),
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const FORM: &str = "expected IP:PORT or HOST:PORT, e.g. 127.0.0.1:5000";
        match self {
            AddrError::Empty => write!(f, "empty address ({FORM})"),
            AddrError::MissingPort => write!(f, "no port ({FORM})"),
            AddrError::MissingHost => write!(f, "no host ({FORM})"),
            AddrError::BadPort(p) => write!(f, "invalid port {p:?}: ports are 1 to 65535"),
            AddrError::PortZero => write!(f, "port 0 is not a server port: ports are 1 to 65535"),
            AddrError::Resolve(h, e) => write!(f, "cannot resolve host {h:?}: {e}"),
            AddrError::NoAddress(h) => write!(f, "host {h:?} has no address"),
        }
    }
}

impl std::error::Error for AddrError {}

/// Parses and resolves the server address. Literal addresses are used as
/// they are (an unspecified IP like 0.0.0.0 means this host's loopback);
/// a host name takes its first IPv4 address, else its first address.
pub fn resolve_server(s: &str) -> Result<SocketAddr, AddrError> {
    if s.is_empty() {
        return Err(AddrError::Empty);
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err(AddrError::PortZero);
        }
        return Ok(sendable(a));
    }
    if s.parse::<IpAddr>().is_ok() {
        return Err(AddrError::MissingPort);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(AddrError::MissingPort);
    };
    if host.is_empty() {
        return Err(AddrError::MissingHost);
    }
    if port.is_empty() {
        return Err(AddrError::MissingPort);
    }
    let port: u16 = port
        .parse()
        .map_err(|_| AddrError::BadPort(port.to_string()))?;
    if port == 0 {
        return Err(AddrError::PortZero);
    }
    let host_only = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let addrs: Vec<SocketAddr> = (host_only, port)
        .to_socket_addrs()
        .map_err(|e| AddrError::Resolve(host.to_string(), e))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .map(sendable)
        .ok_or_else(|| AddrError::NoAddress(host.to_string()))
}

/// Replaces an unspecified IP by the loopback one, so that replies (which
/// come from a real address) match the address we send to.
fn sendable(mut a: SocketAddr) -> SocketAddr {
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            resolve_server("127.0.0.1:5000").unwrap(),
            "127.0.0.1:5000".parse().unwrap()
        );
        assert_eq!(
            resolve_server("[::1]:5000").unwrap(),
            "[::1]:5000".parse().unwrap()
        );
        assert_eq!(
            resolve_server("0.0.0.0:7").unwrap(),
            "127.0.0.1:7".parse().unwrap()
        );
        assert_eq!(resolve_server("localhost:5000").unwrap().port(), 5000);
        assert!(resolve_server("localhost:5000").unwrap().ip().is_loopback());
        assert!(matches!(resolve_server(""), Err(AddrError::Empty)));
        assert!(matches!(
            resolve_server("nonsense"),
            Err(AddrError::MissingPort)
        ));
        assert!(matches!(
            resolve_server("1.2.3.4"),
            Err(AddrError::MissingPort)
        ));
        assert!(matches!(resolve_server("::1"), Err(AddrError::MissingPort)));
        assert!(matches!(
            resolve_server("1.2.3.4:"),
            Err(AddrError::MissingPort)
        ));
        assert!(matches!(
            resolve_server(":5000"),
            Err(AddrError::MissingHost)
        ));
        assert!(matches!(
            resolve_server("1.2.3.4:0"),
            Err(AddrError::PortZero)
        ));
        assert!(matches!(
            resolve_server("localhost:0"),
            Err(AddrError::PortZero)
        ));
        assert!(matches!(
            resolve_server("1.2.3.4:99999"),
            Err(AddrError::BadPort(_))
        ));
        assert!(matches!(
            resolve_server("1.2.3.4:http"),
            Err(AddrError::BadPort(_))
        ));
        assert!(matches!(
            resolve_server("no such host.invalid:5000"),
            Err(AddrError::Resolve(..))
        ));
    }

    #[test]
    fn line_endings_and_quit() {
        assert_eq!(strip_line_ending(b"a\r\n".to_vec()), b"a");
        assert_eq!(strip_line_ending(b"a\n".to_vec()), b"a");
        assert_eq!(strip_line_ending(b"a".to_vec()), b"a");
        assert_eq!(strip_line_ending(b"a\n\n".to_vec()), b"a\n");
        assert_eq!(strip_line_ending(b"\r\n".to_vec()), b"");
        assert!(is_quit(b"/quit"));
        assert!(is_quit(b"/quit now"));
        assert!(!is_quit(b"/quitx"));
        assert!(!is_quit(b"/QUIT"));
        assert!(!is_quit(b" /quit"));
        assert!(!is_quit(b"quit"));
    }

    struct Fake {
        server: UdpSocket,
        client: UdpSocket,
        tx: mpsc::Sender<Input>,
        rx: mpsc::Receiver<Input>,
    }

    async fn fake() -> Fake {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = bind_for(server.local_addr().unwrap()).await.unwrap();
        let (tx, rx) = mpsc::channel(8);
        Fake {
            server,
            client,
            tx,
            rx,
        }
    }

    async fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut b = vec![0u8; 70000];
        let (n, from) = tokio::time::timeout(Duration::from_secs(20), s.recv_from(&mut b))
            .await
            .expect("datagram in time")
            .unwrap();
        (b[..n].to_vec(), from)
    }

    #[tokio::test]
    async fn lines_out_datagrams_in_linger_then_quit() {
        let mut f = fake().await;
        let srv = f.server.local_addr().unwrap();
        let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client_port = f.client.local_addr().unwrap().port();
        let client_addr: SocketAddr = ([127, 0, 0, 1], client_port).into();
        let linger = Duration::from_millis(200);
        let tx = f.tx.clone();
        let started = Instant::now();
        let peer = async {
            tx.send(Input::Line(b"/join 1".to_vec())).await.unwrap();
            let (d, from) = recv(&f.server).await;
            assert_eq!(d, b"/join 1");
            // Both are queued on the client's socket before the input ends.
            stranger.send_to(b"spoof", client_addr).await.unwrap();
            f.server.send_to(b"+OK \xff raw", from).await.unwrap();
            tx.send(Input::Eof).await.unwrap();
            let (d, _) = recv(&f.server).await;
            assert_eq!(d, b"/quit");
        };
        let mut out = Vec::new();
        let (r, ()) = tokio::join!(
            session(
                &f.client,
                srv,
                &mut f.rx,
                &mut out,
                linger,
                std::future::pending()
            ),
            peer
        );
        r.unwrap();
        assert!(
            started.elapsed() >= linger,
            "/quit came before the linger ended"
        );
        assert_eq!(out, b"+OK \xff raw\n");
    }

    #[tokio::test]
    async fn user_quit_ends_without_eof() {
        let mut f = fake().await;
        let srv = f.server.local_addr().unwrap();
        f.tx.send(Input::Line(b"/quit bye".to_vec())).await.unwrap();
        let mut out = Vec::new();
        session(
            &f.client,
            srv,
            &mut f.rx,
            &mut out,
            Duration::ZERO,
            std::future::pending(),
        )
        .await
        .unwrap();
        assert_eq!(recv(&f.server).await.0, b"/quit bye");
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn stop_sends_quit() {
        let mut f = fake().await;
        let srv = f.server.local_addr().unwrap();
        let mut out = Vec::new();
        session(&f.client, srv, &mut f.rx, &mut out, Duration::ZERO, async {
        })
        .await
        .unwrap();
        assert_eq!(recv(&f.server).await.0, b"/quit");
    }

    #[test]
    fn confirmation_requests_are_recognised_exactly() {
        let req =
            b"+OK Confirm your address to keep receiving messages: send /confirm 0123456789abcdef";
        assert_eq!(confirm_token(req), Some(&b"0123456789abcdef"[..]));
        assert_eq!(
            confirm_reply(b"0123456789abcdef"),
            b"/confirm 0123456789abcdef"
        );
        for bad in [
            &b"+OK Confirm your address to keep receiving messages: send /confirm 0123456789ABCDEF"[..],
            b"+OK Confirm your address to keep receiving messages: send /confirm 0123456789abcde",
            b"+OK Confirm your address to keep receiving messages: send /confirm 0123456789abcdef0",
            b"+OK Confirm your address to keep receiving messages: send /confirm 0123456789abcdeg",
            b"<Eve> +OK Confirm your address to keep receiving messages: send /confirm 0123456789abcdef",
        ] {
            assert_eq!(confirm_token(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert!(is_confirm_answer(b"+OK Address confirmed"));
        assert!(is_confirm_answer(b"-ERR Invalid confirmation token"));
        assert!(!is_confirm_answer(b"<x> +OK Address confirmed"));
    }

    #[test]
    fn health_notices_once_and_recovers() {
        let server: SocketAddr = "127.0.0.1:5999".parse().unwrap();
        let t0 = std::time::Instant::now();
        let mut h = Health::new(server);
        h.sent(b"hello", t0);
        assert_eq!(h.tick(t0 + REPLY_TIMEOUT * 2), None, "chat lines may wait");
        h.sent(b"/join 1", t0);
        assert_eq!(h.tick(t0 + REPLY_TIMEOUT / 2), None);
        let late = h.tick(t0 + REPLY_TIMEOUT).expect("a notice");
        assert!(
            late.contains("no reply from 127.0.0.1:5999 to \"/join 1\""),
            "{late}"
        );
        assert_eq!(h.tick(t0 + REPLY_TIMEOUT * 3), None, "said once");
        assert_eq!(h.refused(), None, "still the same outage");
        assert!(h.failed(false));
        assert_eq!(
            h.received().as_deref(),
            Some("127.0.0.1:5999 answers again")
        );
        assert!(!h.failed(true));
        assert!(h.refused().unwrap().contains("refused"));
        // /quit asks nothing: a session that only quits did not fail.
        let mut q = Health::new(server);
        q.sent(b"/quit", t0);
        assert!(!q.failed(true));
    }

    #[tokio::test]
    async fn confirmation_is_printed_and_answered_at_once() {
        let mut f = fake().await;
        let srv = f.server.local_addr().unwrap();
        let tx = f.tx.clone();
        let req =
            b"+OK Confirm your address to keep receiving messages: send /confirm 00ff00ff00ff00ff";
        let peer = async {
            tx.send(Input::Line(b"hello".to_vec())).await.unwrap();
            let (d, from) = recv(&f.server).await;
            assert_eq!(d, b"hello");
            f.server.send_to(req, from).await.unwrap();
            let (d, _) = recv(&f.server).await;
            assert_eq!(d, b"/confirm 00ff00ff00ff00ff");
            f.server
                .send_to(b"+OK Address confirmed", from)
                .await
                .unwrap();
            f.server.send_to(b"<x> hello", from).await.unwrap();
            tx.send(Input::Eof).await.unwrap();
            let (d, _) = recv(&f.server).await;
            assert_eq!(d, b"/quit");
        };
        let mut out = Vec::new();
        let (r, ()) = tokio::join!(
            session(
                &f.client,
                srv,
                &mut f.rx,
                &mut out,
                Duration::from_millis(300),
                std::future::pending()
            ),
            peer
        );
        let end = r.unwrap();
        assert!(end.health.answered);
        let mut want = req.to_vec();
        want.extend_from_slice(b"\n+OK Address confirmed\n<x> hello\n");
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&want)
        );
    }

    #[tokio::test]
    async fn refused_datagrams_are_noticed_and_fail_the_session() {
        // A port nobody listens on: bind, note the port, close.
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server: SocketAddr = ([127, 0, 0, 1], port).into();
        let client = bind_for(server).await.unwrap();
        client.connect(server).await.unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        tx.send(Input::Line(b"/join 1".to_vec())).await.unwrap();
        tx.send(Input::Eof).await.unwrap();
        let mut out = Vec::new();
        let end = session(
            &client,
            server,
            &mut rx,
            &mut out,
            Duration::from_millis(300),
            std::future::pending(),
        )
        .await
        .unwrap();
        assert!(out.is_empty());
        assert!(!end.health.answered);
        assert!(end.health.trouble, "the refusal was not seen");
        assert!(end.health.failed(true));
    }

    #[tokio::test]
    async fn closed_output_ends_quietly_with_quit() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut f = fake().await;
        let srv = f.server.local_addr().unwrap();
        let tx = f.tx.clone();
        let peer = async {
            tx.send(Input::Line(b"/join 1".to_vec())).await.unwrap();
            let (_, from) = recv(&f.server).await;
            f.server
                .send_to(b"+OK You are now in chat room #1", from)
                .await
                .unwrap();
            let (d, _) = recv(&f.server).await;
            assert_eq!(d, b"/quit");
        };
        let mut closed = Closed;
        let (r, ()) = tokio::join!(
            session(
                &f.client,
                srv,
                &mut f.rx,
                &mut closed,
                Duration::ZERO,
                std::future::pending()
            ),
            peer
        );
        r.expect("a closed pipe is a normal end");
    }
}
