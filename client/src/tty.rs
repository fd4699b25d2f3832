//! The interactive client, when standard input and output are a terminal:
//! a banner, a prompt with the nick and the room, line editing and history
//! (rustyline), datagrams printed above the line being typed (rustyline's
//! external printer clears the prompt line, prints, and redraws it), nicks
//! in colours that stay the same per nick (none with `NO_COLOR`), `/help`,
//! and notices when the server seems to be missing.
//!
//! What is sent is what the pipe mode sends: each line typed is one
//! datagram. Only `/help` stays local. What the server sends is shown
//! with control characters made visible (a chat line cannot move the
//! cursor or change colours on this terminal).

use crate::{
    Health, REPLY_TIMEOUT, confirm_reply, confirm_token, is_command, is_confirm_answer, is_quit,
};
use rustyline::error::ReadlineError;
use rustyline::{Config, DefaultEditor, ExternalPrinter};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Why the interactive mode did not run.
#[derive(Debug)]
pub enum TtyError {
    /// rustyline cannot drive this terminal (e.g. `TERM=dumb`).
    Unsupported,
    Io(io::Error),
}

impl From<io::Error> for TtyError {
    fn from(e: io::Error) -> Self {
        TtyError::Io(e)
    }
}

/// How long the prompt waits for the answer to a command, so that it shows
/// the new nick or room.
const PROMPT_WAIT: Duration = Duration::from_millis(700);

/// Nick colours (ANSI SGR codes): readable on dark and light backgrounds.
const NICK_COLOURS: &[&str] = &[
    "31", "32", "33", "34", "35", "36", "91", "92", "93", "94", "95", "96",
];

/// What `/help` prints.
pub const HELP: &str = "\
commands (sent to the server):
  /join N      enter chat room N (one room at a time)
  /part        leave the room
  /nick NAME   set your nickname (default: your IP:PORT)
  /quit        leave (Ctrl+D and Ctrl+C too)
anything else is a chat message to your room.
local: /help (this text); Up/Down for history, Ctrl+R to search it,
Ctrl+A/Ctrl+E/Ctrl+W/Ctrl+U to edit the line.";

/// The colour of `nick`: a hash of its bytes (FNV-1a), so the same nick has
/// the same colour on every run and in every client.
pub fn nick_colour(nick: &[u8]) -> &'static str {
    let mut h: u32 = 0x811c_9dc5;
    for &b in nick {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    NICK_COLOURS[(h as usize) % NICK_COLOURS.len()]
}

/// Text safe to show on a terminal: invalid UTF-8 replaced, control
/// characters shown in caret notation (`^[`), tabs kept.
pub fn visible(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\t' => out.push(c),
            c if (c as u32) < 0x20 => {
                out.push('^');
                out.push(char::from(c as u8 + 64));
            }
            '\u{7f}' => out.push_str("^?"),
            c if ('\u{80}'..='\u{9f}').contains(&c) => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// One datagram as a screen line (without the line end).
pub fn render(data: &[u8], colour: bool) -> String {
    let paint = |code: &str, s: &str| {
        if colour {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    if let Some(rest) = data.strip_prefix(b"<")
        && let Some(end) = rest.windows(2).position(|w| w == b"> ")
    {
        let nick = &rest[..end];
        let text = &rest[end + 2..];
        return format!(
            "<{}> {}",
            paint(nick_colour(nick), &visible(nick)),
            visible(text)
        );
    }
    if let Some(rest) = data.strip_prefix(b"+OK") {
        return format!("{}{}", paint("32", "+OK"), visible(rest));
    }
    if let Some(rest) = data.strip_prefix(b"-ERR") {
        return format!("{}{}", paint("31", "-ERR"), visible(rest));
    }
    visible(data)
}

/// A line of the client's own (notices, help), dimmed when in colour.
pub fn own_line(text: &str, colour: bool) -> String {
    if colour {
        format!("\x1b[2m* {text}\x1b[0m")
    } else {
        format!("* {text}")
    }
}

/// The session as the prompt shows it, learnt from the server's replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub nick: String,
    pub room: Option<u32>,
}

impl View {
    /// Updates from one datagram of the server (the replies of the
    /// protocol's fixed texts; anything else changes nothing).
    pub fn learn(&mut self, data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let room_at_end =
            |prefix: &str| -> Option<u32> { text.strip_prefix(prefix)?.trim().parse().ok() };
        if let Some(n) = room_at_end("+OK You are now in chat room #") {
            self.room = Some(n);
        } else if let Some(n) = room_at_end("-ERR You are already in room #") {
            self.room = Some(n);
        } else if text.starts_with("+OK You have left chat room")
            || text.starts_with("-ERR You are not in a chat room")
        {
            self.room = None;
        } else if let Some(rest) = text.strip_prefix("+OK Nickname set to '")
            && let Some(nick) = rest.strip_suffix('\'')
        {
            self.nick = nick.to_string();
        }
    }

    pub fn prompt(&self) -> String {
        match self.room {
            Some(r) => format!("{} #{r}> ", visible(self.nick.as_bytes())),
            None => format!("{} (no room)> ", visible(self.nick.as_bytes())),
        }
    }
}

/// Everything the receiving thread and the prompt share.
struct Shared {
    view: Mutex<View>,
    health: Mutex<Health>,
    /// Datagrams received so far (the prompt waits for it to move).
    received: Mutex<u64>,
    moved: Condvar,
    printer: Mutex<Box<dyn ExternalPrinter + Send>>,
    colour: bool,
    stop: AtomicBool,
}

impl Shared {
    fn print(&self, line: String) {
        let mut p = self.printer.lock().unwrap_or_else(|e| e.into_inner());
        let _ = p.print(line + "\n");
    }

    fn say(&self, text: &str) {
        self.print(own_line(text, self.colour));
    }
}

/// Whether colours are wanted: a terminal and no (or an empty) `NO_COLOR`.
pub fn want_colour() -> bool {
    use std::io::IsTerminal;
    io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Runs the interactive client until `/quit`, Ctrl+D, Ctrl+C or a signal.
pub fn run(server: SocketAddr) -> Result<ExitCode, TtyError> {
    let mut editor = DefaultEditor::with_config(
        Config::builder()
            .auto_add_history(true)
            // Everything this client prints ends with a new line, so the
            // prompt always starts a row; the check would eat type-ahead.
            .check_cursor_position(false)
            .max_history_size(1000)
            .map_err(|e| io::Error::other(e.to_string()))?
            .build(),
    )
    .map_err(|e| io::Error::other(format!("cannot set up the terminal: {e}")))?;
    let printer = match editor.create_external_printer() {
        Ok(p) => p,
        Err(_) => return Err(TtyError::Unsupported),
    };
    let sock = crate::bind_std(server)?;
    sock.connect(server)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot reach {server}: {e}")))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let sock = Arc::new(sock);
    let me = sock
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "you".to_string());
    let colour = want_colour();
    let sh = Arc::new(Shared {
        view: Mutex::new(View {
            nick: me,
            room: None,
        }),
        health: Mutex::new(Health::new(server)),
        received: Mutex::new(0),
        moved: Condvar::new(),
        printer: Mutex::new(Box::new(printer)),
        colour,
        stop: AtomicBool::new(false),
    });
    spawn_signal_watch(sock.clone())?;
    {
        let sh = sh.clone();
        let sock = sock.clone();
        std::thread::Builder::new()
            .name("receive".into())
            .spawn(move || receive_loop(&sock, &sh))?;
    }
    let bold = |s: &str| {
        if colour {
            format!("\x1b[1m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    sh.print(format!(
        "{} {server} (UDP)\n/join N enters room N, /nick NAME sets your name, /help lists the commands,\n/quit or Ctrl+D leaves.",
        bold("chatclient: chat server")
    ));

    let end = loop {
        let prompt = sh.view.lock().map(|v| v.prompt()).unwrap_or_default();
        match editor.readline(&prompt) {
            Ok(line) => {
                let bytes = line.as_bytes();
                if line.trim() == "/help" {
                    for l in HELP.lines() {
                        sh.say(l);
                    }
                    continue;
                }
                let seen = *sh.received.lock().unwrap_or_else(|e| e.into_inner());
                send(&sock, bytes, &sh);
                if is_quit(bytes) {
                    break "quit";
                }
                if is_command(bytes) {
                    // Let the answer arrive so that the prompt shows it.
                    let g = sh.received.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = sh.moved.wait_timeout_while(g, PROMPT_WAIT, |n| *n == seen);
                }
            }
            Err(ReadlineError::Interrupted) | Err(ReadlineError::Eof) => {
                send(&sock, b"/quit", &sh);
                break "quit";
            }
            Err(e) => {
                send(&sock, b"/quit", &sh);
                crate::notice(&format!("terminal error: {e}"));
                break "error";
            }
        }
    };
    sh.stop.store(true, Ordering::SeqCst);
    let failed = sh.health.lock().map(|h| h.failed(false)).unwrap_or(false);
    Ok(if end == "error" || failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn send(sock: &UdpSocket, data: &[u8], sh: &Shared) {
    if let Ok(mut h) = sh.health.lock() {
        h.sent(data, Instant::now());
    }
    for _ in 0..2 {
        match sock.send(data) {
            Ok(_) => return,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                let text = sh.health.lock().ok().and_then(|mut h| h.refused());
                if let Some(t) = text {
                    sh.say(&t);
                }
            }
            Err(e) => {
                sh.say(&format!("cannot send {} bytes: {e}", data.len()));
                return;
            }
        }
    }
}

fn receive_loop(sock: &UdpSocket, sh: &Shared) {
    let mut buf = vec![0u8; 65536];
    // Runs of deliveries come whole (see `gro`); without it, one by one.
    crate::gro::enable(sock);
    while !sh.stop.load(Ordering::SeqCst) {
        // Connected: only the server's datagrams arrive.
        match crate::gro::recv(sock, &mut buf) {
            Ok(run) => {
                for data in crate::gro::split(&buf[..run.len], run.segment) {
                    show(sock, data, sh);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                let text = sh.health.lock().ok().and_then(|mut h| h.refused());
                if let Some(t) = text {
                    sh.say(&t);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                sh.say(&format!("receive failed: {e}"));
                std::thread::sleep(REPLY_TIMEOUT / 30);
            }
        }
        let late = sh
            .health
            .lock()
            .ok()
            .and_then(|mut h| h.tick(Instant::now()));
        if let Some(t) = late {
            sh.say(&t);
        }
    }
}

/// Shows one datagram from the server (or answers it).
fn show(sock: &UdpSocket, data: &[u8], sh: &Shared) {
    let back = sh.health.lock().ok().and_then(|mut h| h.received());
    if let Some(t) = back {
        sh.say(&t);
    }
    if let Ok(mut v) = sh.view.lock() {
        v.learn(data);
    }
    if let Some(token) = confirm_token(data) {
        send(sock, &confirm_reply(token), sh);
        sh.say("the server asked this client to confirm its address: confirmed");
    } else if is_confirm_answer(data) {
        sh.say(&visible(data));
    } else {
        sh.print(render(data, sh.colour));
    }
    let mut g = sh.received.lock().unwrap_or_else(|e| e.into_inner());
    *g += 1;
    sh.moved.notify_all();
}

/// SIGTERM, SIGHUP (the terminal closed) and a SIGINT outside the line
/// editor end the session as `/quit` does: the terminal's settings from
/// before the editor are put back, `/quit` is sent, and the process exits.
fn spawn_signal_watch(sock: Arc<UdpSocket>) -> io::Result<()> {
    let saved = nix::sys::termios::tcgetattr(io::stdin()).ok();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stop = {
        let _guard = rt.enter();
        crate::stop_signal()?
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(stop);
            let _ = sock.send(b"/quit");
            if let Some(t) = saved {
                let _ = nix::sys::termios::tcsetattr(
                    io::stdin(),
                    nix::sys::termios::SetArg::TCSANOW,
                    &t,
                );
            }
            let _ = io::Write::write_all(&mut io::stdout(), b"\r\n");
            std::process::exit(0);
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_are_stable_and_spread() {
        assert_eq!(nick_colour(b"Alice"), nick_colour(b"Alice"));
        let distinct: std::collections::HashSet<_> =
            ["Alice", "Bob", "Carol", "Dave", "Eve", "Mallory"]
                .iter()
                .map(|n| nick_colour(n.as_bytes()))
                .collect();
        assert!(distinct.len() >= 3, "{distinct:?}");
    }

    #[test]
    fn rendering() {
        assert_eq!(render(b"<Bob> hi", false), "<Bob> hi");
        let c = render(b"<Bob> hi", true);
        assert_eq!(c, format!("<\x1b[{}mBob\x1b[0m> hi", nick_colour(b"Bob")));
        assert_eq!(render(b"+OK fine", true), "\x1b[32m+OK\x1b[0m fine");
        assert_eq!(render(b"-ERR no", false), "-ERR no");
        // A chat line cannot drive the terminal.
        assert_eq!(render(b"<x> \x1b[2J\x07bell\r", false), "<x> ^[[2J^Gbell^M");
        assert_eq!(render(b"<x> \xff", false), "<x> \u{fffd}");
        assert_eq!(own_line("note", false), "* note");
    }

    #[test]
    fn view_follows_replies() {
        let mut v = View {
            nick: "127.0.0.1:4000".into(),
            room: None,
        };
        assert_eq!(v.prompt(), "127.0.0.1:4000 (no room)> ");
        v.learn(b"+OK You are now in chat room #3");
        assert_eq!(v.room, Some(3));
        v.learn(b"+OK Nickname set to 'Bob'");
        assert_eq!(v.prompt(), "Bob #3> ");
        v.learn(b"<Eve> +OK Nickname set to 'Eve'");
        assert_eq!(v.nick, "Bob");
        v.learn(b"+OK You have left chat room #3");
        assert_eq!(v.room, None);
        v.learn(b"-ERR You are already in room #7");
        assert_eq!(v.room, Some(7));
        v.learn(b"-ERR You are not in a chat room (join one with /join N)");
        assert_eq!(v.room, None);
    }
}
