//! Client sessions, sans-IO: the spec's commands, room membership and
//! nicknames. [`Sessions::handle`] turns one client datagram into at most one
//! reply and at most one post for the ordering layer.

use bytes::Bytes;
use orderings::RoomId;
use std::collections::HashMap;
use std::net::SocketAddr;

/// The spec's limit on a client datagram.
pub const MAX_LINE: usize = 1000;
/// Longest nickname accepted, in bytes.
pub const MAX_NICK: usize = 32;

/// Limits that keep a server alive under hostile or careless clients.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    pub rooms: u32,
    pub max_clients: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            rooms: crate::config::DEFAULT_ROOMS,
            max_clients: 4096,
        }
    }
}

#[derive(Debug)]
struct Session {
    number: u64,
    nick: Option<Vec<u8>>,
    room: Option<RoomId>,
}

/// What a client datagram asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The reply to send back to the client, if any.
    pub reply: Option<Vec<u8>>,
    /// A chat message to order and deliver: `(room, "<nick> text")`.
    pub post: Option<(RoomId, Bytes)>,
    /// The session's number (for `-v`), when the datagram came from one.
    pub client: Option<u64>,
}

impl Outcome {
    fn reply(client: Option<u64>, text: impl Into<Vec<u8>>) -> Self {
        Self {
            reply: Some(text.into()),
            post: None,
            client,
        }
    }
}

/// All clients of one server.
#[derive(Debug, Default)]
pub struct Sessions {
    limits: SessionLimits,
    clients: HashMap<SocketAddr, Session>,
    members: HashMap<RoomId, Vec<SocketAddr>>,
    next_number: u64,
}

impl Sessions {
    pub fn new(limits: SessionLimits) -> Self {
        Self {
            limits,
            clients: HashMap::new(),
            members: HashMap::new(),
            next_number: 1,
        }
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The room `from` is in, if it is a client in one.
    pub fn room_of(&self, from: SocketAddr) -> Option<RoomId> {
        self.clients.get(&from).and_then(|s| s.room)
    }

    /// The local members of `room`.
    pub fn members(&self, room: RoomId) -> &[SocketAddr] {
        self.members.get(&room).map(Vec::as_slice).unwrap_or(&[])
    }

    fn session(&mut self, from: SocketAddr) -> Result<&mut Session, Vec<u8>> {
        if !self.clients.contains_key(&from) && self.clients.len() >= self.limits.max_clients {
            return Err(format!(
                "-ERR Server is full ({} clients); try another server",
                self.limits.max_clients
            )
            .into_bytes());
        }
        let next = &mut self.next_number;
        Ok(self.clients.entry(from).or_insert_with(|| {
            let number = *next;
            *next += 1;
            Session {
                number,
                nick: None,
                room: None,
            }
        }))
    }

    /// Handles one datagram from the client at `from`.
    pub fn handle(&mut self, from: SocketAddr, data: &[u8]) -> Outcome {
        let known = self.clients.get(&from).map(|s| s.number);
        if data.len() > MAX_LINE {
            return Outcome::reply(
                known,
                format!(
                    "-ERR Message too long ({} bytes; at most {MAX_LINE})",
                    data.len()
                ),
            );
        }
        if data.first() != Some(&b'/') {
            return self.chat(from, data);
        }
        // Commands tolerate a trailing newline (netcat users).
        let line = trim_newline(data);
        let (cmd, arg) = match line.iter().position(|&b| b == b' ') {
            Some(i) => (&line[..i], trim_spaces(&line[i + 1..])),
            None => (line, &line[line.len()..]),
        };
        match cmd {
            b"/join" => self.join(from, arg),
            b"/part" => self.part(from, arg),
            b"/nick" => self.nick(from, arg),
            b"/quit" => {
                self.forget(from);
                Outcome {
                    client: known,
                    ..Outcome::default()
                }
            }
            _ => Outcome::reply(
                known,
                format!("-ERR Unknown command '{}'", String::from_utf8_lossy(cmd)),
            ),
        }
    }

    fn chat(&mut self, from: SocketAddr, text: &[u8]) -> Outcome {
        let Some(s) = self.clients.get(&from) else {
            return Outcome::reply(
                None,
                "-ERR You are not in a chat room (join one with /join N)",
            );
        };
        let Some(room) = s.room else {
            return Outcome::reply(
                Some(s.number),
                "-ERR You are not in a chat room (join one with /join N)",
            );
        };
        let mut line = Vec::with_capacity(text.len() + 32);
        line.push(b'<');
        match &s.nick {
            Some(n) => line.extend_from_slice(n),
            None => line.extend_from_slice(from.to_string().as_bytes()),
        }
        line.extend_from_slice(b"> ");
        line.extend_from_slice(text);
        Outcome {
            reply: None,
            post: Some((room, Bytes::from(line))),
            client: Some(s.number),
        }
    }

    fn join(&mut self, from: SocketAddr, arg: &[u8]) -> Outcome {
        let rooms = self.limits.rooms;
        let known = self.clients.get(&from).map(|s| s.number);
        if arg.is_empty() {
            return Outcome::reply(
                known,
                format!("-ERR Usage: /join <room> (rooms are 1 to {rooms})"),
            );
        }
        let room = match std::str::from_utf8(arg)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            Some(r) if r >= 1 && r <= u64::from(rooms) => r as RoomId,
            _ => {
                return Outcome::reply(
                    known,
                    format!(
                        "-ERR Invalid room '{}': rooms are numbered 1 to {rooms}",
                        String::from_utf8_lossy(arg)
                    ),
                );
            }
        };
        let s = match self.session(from) {
            Ok(s) => s,
            Err(e) => return Outcome::reply(known, e),
        };
        let number = s.number;
        if let Some(cur) = s.room {
            return Outcome::reply(Some(number), format!("-ERR You are already in room #{cur}"));
        }
        s.room = Some(room);
        self.members.entry(room).or_default().push(from);
        Outcome::reply(
            Some(number),
            format!("+OK You are now in chat room #{room}"),
        )
    }

    fn part(&mut self, from: SocketAddr, arg: &[u8]) -> Outcome {
        let known = self.clients.get(&from).map(|s| s.number);
        if !arg.is_empty() {
            return Outcome::reply(known, "-ERR Usage: /part (no arguments)");
        }
        let Some(s) = self.clients.get_mut(&from) else {
            return Outcome::reply(None, "-ERR You are not in a chat room");
        };
        let Some(room) = s.room.take() else {
            return Outcome::reply(known, "-ERR You are not in a chat room");
        };
        self.leave(room, from);
        Outcome::reply(known, format!("+OK You have left chat room #{room}"))
    }

    fn nick(&mut self, from: SocketAddr, arg: &[u8]) -> Outcome {
        let known = self.clients.get(&from).map(|s| s.number);
        if arg.is_empty() {
            return Outcome::reply(known, "-ERR Usage: /nick <name>");
        }
        if arg.len() > MAX_NICK
            || arg
                .iter()
                .any(|&b| b < 0x20 || b == 0x7f || b == b'<' || b == b'>')
        {
            return Outcome::reply(
                known,
                format!(
                    "-ERR Invalid nickname: use 1 to {MAX_NICK} bytes without control characters, '<' or '>'"
                ),
            );
        }
        let s = match self.session(from) {
            Ok(s) => s,
            Err(e) => return Outcome::reply(known, e),
        };
        s.nick = Some(arg.to_vec());
        let mut reply = b"+OK Nickname set to '".to_vec();
        reply.extend_from_slice(arg);
        reply.push(b'\'');
        Outcome::reply(Some(s.number), reply)
    }

    fn leave(&mut self, room: RoomId, who: SocketAddr) {
        if let Some(m) = self.members.get_mut(&room) {
            m.retain(|a| *a != who);
            if m.is_empty() {
                self.members.remove(&room);
            }
        }
    }

    /// Forgets a client (it quit).
    pub fn forget(&mut self, from: SocketAddr) {
        if let Some(s) = self.clients.remove(&from)
            && let Some(room) = s.room
        {
            self.leave(room, from);
        }
    }
}

fn trim_newline(mut b: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r'] = b {
        b = rest;
    }
    b
}

fn trim_spaces(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn reply(s: &mut Sessions, from: SocketAddr, line: &str) -> String {
        String::from_utf8(s.handle(from, line.as_bytes()).reply.unwrap_or_default()).unwrap()
    }

    #[test]
    fn spec_session() {
        let mut s = Sessions::new(SessionLimits::default());
        let a = addr(57326);
        assert_eq!(
            reply(&mut s, a, "Hi"),
            "-ERR You are not in a chat room (join one with /join N)"
        );
        assert_eq!(
            reply(&mut s, a, "/join 3"),
            "+OK You are now in chat room #3"
        );
        let o = s.handle(a, b"Hello everyone!");
        assert_eq!(o.reply, None);
        assert_eq!(
            o.post,
            Some((3, Bytes::from_static(b"<127.0.0.1:57326> Hello everyone!")))
        );
        assert_eq!(reply(&mut s, a, "/nick Bob"), "+OK Nickname set to 'Bob'");
        assert_eq!(
            s.handle(a, b"x").post.unwrap().1,
            Bytes::from_static(b"<Bob> x")
        );
        assert_eq!(
            reply(&mut s, a, "/join 5"),
            "-ERR You are already in room #3"
        );
        assert_eq!(s.members(3), &[a]);
        assert_eq!(reply(&mut s, a, "/part"), "+OK You have left chat room #3");
        assert!(s.members(3).is_empty());
        assert_eq!(reply(&mut s, a, "/part"), "-ERR You are not in a chat room");
        assert_eq!(
            s.handle(a, b"/quit"),
            Outcome {
                client: Some(1),
                ..Outcome::default()
            }
        );
        assert!(s.is_empty());
    }

    #[test]
    fn bad_rooms_and_commands() {
        let mut s = Sessions::new(SessionLimits::default());
        let a = addr(1);
        for bad in [
            "/join 0",
            "/join 11",
            "/join abc",
            "/join -1",
            "/join 99999999999999999999999",
        ] {
            assert!(
                reply(&mut s, a, bad).starts_with("-ERR Invalid room"),
                "{bad}"
            );
        }
        assert!(reply(&mut s, a, "/join").starts_with("-ERR Usage"));
        assert!(reply(&mut s, a, "/nick").starts_with("-ERR Usage"));
        assert_eq!(reply(&mut s, a, "/dance"), "-ERR Unknown command '/dance'");
        assert_eq!(reply(&mut s, a, "/JOIN 1"), "-ERR Unknown command '/JOIN'");
        assert_eq!(
            reply(&mut s, a, "/join 10\n"),
            "+OK You are now in chat room #10"
        );
        assert!(reply(&mut s, a, "/nick a<b").starts_with("-ERR Invalid nickname"));
        assert!(reply(&mut s, a, "/nick a\tb").starts_with("-ERR Invalid nickname"));
        assert!(
            reply(&mut s, a, &format!("/nick {}", "x".repeat(33)))
                .starts_with("-ERR Invalid nickname")
        );
        let long = vec![b'x'; MAX_LINE + 1];
        assert!(
            String::from_utf8(s.handle(a, &long).reply.unwrap())
                .unwrap()
                .starts_with("-ERR Message too long (1001 bytes")
        );
        let max = vec![b'y'; MAX_LINE];
        assert_eq!(
            s.handle(a, &max).post.unwrap().1.len(),
            MAX_LINE + "<127.0.0.1:1> ".len()
        );
    }

    #[test]
    fn text_is_byte_exact() {
        let mut s = Sessions::new(SessionLimits::default());
        let a = addr(2);
        s.handle(a, b"/join 1");
        let text: &[u8] = b"a,b|c<d>\"e\" \xff\x00 \xc3\xa9";
        assert_eq!(
            &s.handle(a, text).post.unwrap().1[..],
            [b"<127.0.0.1:2> ".as_slice(), text].concat().as_slice()
        );
    }

    #[test]
    fn full_server_refuses_new_clients() {
        let mut s = Sessions::new(SessionLimits {
            rooms: 10,
            max_clients: 1,
        });
        assert!(reply(&mut s, addr(1), "/join 1").starts_with("+OK"));
        assert!(reply(&mut s, addr(2), "/join 1").starts_with("-ERR Server is full"));
        assert!(reply(&mut s, addr(2), "/nick x").starts_with("-ERR Server is full"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn quit_from_stranger_is_silent_and_creates_nothing() {
        let mut s = Sessions::new(SessionLimits::default());
        assert_eq!(s.handle(addr(9), b"/quit").reply, None);
        assert!(s.handle(addr(9), b"hello").reply.is_some());
        assert!(s.is_empty());
    }
}
