//! Client sessions, sans-IO: room membership and nicknames.
//! [`Sessions::apply`] applies one parsed client datagram
//! ([`ClientCommand`]) and says what happened ([`Outcome`]): a reply, a post
//! for the ordering layer, a quit, or nothing.
//!
//! Sessions also carry what keeps a server from being turned against
//! others:
//!
//! * **Expiry.** A session that has sent nothing for [`SessionPolicy::idle_us`]
//!   is freed (it leaves its room). Expiry is checked lazily through a
//!   min-heap of deadlines: one entry per session, re-armed only when its
//!   deadline passes, so the cost is `O(log n)` per expiry check, never a scan
//!   per datagram. Recently expired addresses are remembered (bounded, FIFO)
//!   so that an expired client that talks again is told to `/join` again.
//! * **Amplification limit** (QUIC-style, before address validation). Per
//!   session, the bytes received from its address and sent to it are
//!   counted; until the address is confirmed, deliveries beyond
//!   `3 x received + allowance` are dropped ([`Sessions::charge`]). At half
//!   the allowance the session gets one notice with a stateless token (a
//!   keyed BLAKE3 hash of its address); `/confirm TOKEN` lifts the cap.
//!   Datagrams that look like server output (`+OK`, `-ERR`, `<`) earn no
//!   credit, so two servers delivering to each other cannot raise each
//!   other's caps.
//! * **No answers to server output.** Text that looks like a server's reply
//!   or delivery, from an address that is not in a room, gets no reply at all:
//!   that is how two servers (or two clusters) would ping-pong errors.

use crate::command::{ClientCommand, CommandError};
use bytes::Bytes;
use orderings::RoomId;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;

/// Default idle time after which a session expires (1 hour).
pub const DEFAULT_IDLE_S: u64 = 3600;
/// Default bytes an unconfirmed address may be sent beyond 3x what it sent.
pub const DEFAULT_UNCONFIRMED_ALLOWANCE: u64 = 256 * 1024;
/// How many recently expired (or ICMP-ended) addresses are remembered.
pub const RECENTLY_EXPIRED: usize = 8192;
/// The reply to `/confirm` with the right token.
pub const CONFIRMED_REPLY: &str = "+OK Address confirmed";
/// The notice text before the token.
pub const NOTICE_PREFIX: &str =
    "+OK Confirm your address to keep receiving messages: send /confirm ";

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

/// Expiry and address validation.
#[derive(Clone)]
pub struct SessionPolicy {
    /// A session idle this long (microseconds) expires; 0 = never.
    pub idle_us: u64,
    /// Bytes an unconfirmed address may be sent beyond 3x what it sent;
    /// 0 = no limit (and no notice).
    pub unconfirmed_allowance: u64,
    /// Key of the stateless confirmation tokens (per process, random).
    pub cookie_key: [u8; 32],
}

impl std::fmt::Debug for SessionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionPolicy")
            .field("idle_us", &self.idle_us)
            .field("unconfirmed_allowance", &self.unconfirmed_allowance)
            .finish_non_exhaustive()
    }
}

impl Default for SessionPolicy {
    fn default() -> Self {
        Self {
            idle_us: DEFAULT_IDLE_S * 1_000_000,
            unconfirmed_allowance: DEFAULT_UNCONFIRMED_ALLOWANCE,
            cookie_key: random_key(),
        }
    }
}

/// 32 random bytes from the kernel (`getrandom`); if that fails, a key
/// derived from the time, the pid and stack addresses (not secret against a
/// local attacker, still unpredictable from outside).
pub fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    // SAFETY: getrandom writes at most `key.len()` bytes into `key`.
    let n = unsafe { libc::getrandom(key.as_mut_ptr().cast(), key.len(), 0) };
    if n == key.len() as isize {
        return key;
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = format!("{t} {} {:p}", std::process::id(), &key);
    blake3::derive_key("chatroom confirm cookie fallback v1", seed.as_bytes())
}

/// Whether a datagram looks like what a server sends: a reply or a
/// delivery. Such datagrams from an address outside a room get no reply.
pub fn looks_like_server_output(data: &[u8]) -> bool {
    data.starts_with(b"+OK") || data.starts_with(b"-ERR") || data.starts_with(b"<")
}

#[derive(Debug)]
struct Session {
    number: u64,
    nick: Option<Vec<u8>>,
    room: Option<RoomId>,
    /// Position in `members[room]`.
    pos: usize,
    /// Last datagram from this address (µs since the server's epoch).
    last_seen: u64,
    /// Bytes received from the address that earn sending credit.
    received: u64,
    /// Bytes sent to the address (replies, deliveries, notices).
    sent: u64,
    confirmed: bool,
    noticed: bool,
}

/// What applying one client datagram did. `client` is the number of the
/// session the datagram came from or opened (for `-v`), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send `reply` (`+OK ...` or `-ERR ...`) back to the client.
    Reply { client: Option<u64>, reply: Bytes },
    /// Order `line` (`<nick> text`) in `room` and deliver it; no reply.
    Post {
        client: u64,
        room: RoomId,
        line: Bytes,
    },
    /// `/quit`: the session is gone; no reply.
    Quit { client: Option<u64> },
    /// No reply: the datagram looked like server output and came from
    /// outside a room.
    Silenced { client: Option<u64> },
}

impl Outcome {
    fn error(client: Option<u64>, e: &impl std::fmt::Display) -> Self {
        Self::Reply {
            client,
            reply: Bytes::from(format!("-ERR {e}")),
        }
    }

    /// The reply, if this outcome is one.
    pub fn reply(&self) -> Option<&[u8]> {
        match self {
            Self::Reply { reply, .. } => Some(reply),
            _ => None,
        }
    }

    /// The room and line to post, if this outcome is a post.
    pub fn post(&self) -> Option<(RoomId, &Bytes)> {
        match self {
            Self::Post { room, line, .. } => Some((*room, line)),
            _ => None,
        }
    }

    /// The session's number, when the datagram came from one.
    pub fn client(&self) -> Option<u64> {
        match *self {
            Self::Post { client, .. } => Some(client),
            Self::Reply { client, .. } | Self::Quit { client } | Self::Silenced { client } => {
                client
            }
        }
    }
}

/// Why a well-formed command or chat line was refused by the session
/// layer; its `Display` is the text of the `-ERR` reply after `-ERR `.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("Server is full ({max_clients} clients); try another server")]
    ServerFull { max_clients: usize },
    #[error("You are already in room #{0}")]
    AlreadyInRoom(RoomId),
    #[error("You are not in a chat room")]
    NotInRoom,
    #[error("You are not in a chat room (join one with /join N)")]
    ChatOutsideRoom,
    #[error("Your session expired; join a room again with /join N")]
    Expired,
    #[error("Invalid confirmation token")]
    BadToken,
}

/// What [`Sessions::charge`] decided about one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charge {
    /// Send it.
    Send,
    /// Send this notice first, then the datagram.
    SendWithNotice(Bytes),
    /// Over the amplification cap: drop it.
    Drop,
}

/// Counters of the session layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub expired: u64,
    pub unreachable: u64,
    pub confirmed: u64,
    pub bad_confirmations: u64,
    pub notices: u64,
    /// Deliveries dropped by the amplification cap.
    pub over_allowance: u64,
    /// Datagrams not answered because they looked like server output.
    pub silenced: u64,
}

/// All clients of one server.
#[derive(Debug, Default)]
pub struct Sessions {
    limits: SessionLimits,
    policy: SessionPolicy,
    clients: crate::FastMap<SocketAddr, Session>,
    members: crate::FastMap<RoomId, Vec<SocketAddr>>,
    next_number: u64,
    /// Expiry deadlines: (deadline µs, session number, address).
    deadlines: BinaryHeap<Reverse<(u64, u64, SocketAddr)>>,
    /// Recently expired addresses (value: generation in `expired_order`).
    expired: crate::FastMap<SocketAddr, u64>,
    expired_order: VecDeque<(SocketAddr, u64)>,
    expired_gen: u64,
    /// The latest time passed in (µs).
    now: u64,
    stats: SessionStats,
}

impl Sessions {
    pub fn new(limits: SessionLimits) -> Self {
        Self::with_policy(limits, SessionPolicy::default())
    }

    pub fn with_policy(limits: SessionLimits, policy: SessionPolicy) -> Self {
        Self {
            limits,
            policy,
            next_number: 1,
            ..Self::default()
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

    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Whether `addr` has a session.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.clients.contains_key(&addr)
    }

    /// The local members of `room`.
    pub fn members(&self, room: RoomId) -> &[SocketAddr] {
        self.members.get(&room).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The confirmation token of `addr`: 16 lowercase hex digits of a keyed
    /// BLAKE3 hash of the address (a stateless cookie).
    pub fn token(&self, addr: SocketAddr) -> String {
        token_for(&self.policy.cookie_key, addr)
    }

    /// Sets the time (µs, monotonic) without handling a datagram.
    pub fn advance(&mut self, now: u64) {
        self.now = self.now.max(now);
    }

    /// Charges a delivery of `len` bytes to every member of `room` (see
    /// [`Sessions::charge`]) and calls `send(member, notice)` for each one
    /// within its cap (with the one-time notice to send first, when due).
    /// Returns how many members were skipped over their cap.
    pub fn deliver(
        &mut self,
        room: RoomId,
        len: usize,
        mut send: impl FnMut(SocketAddr, Option<Bytes>),
    ) -> usize {
        let Some(members) = self.members.get(&room) else {
            return 0;
        };
        let mut dropped = 0;
        for &m in members {
            match charge(&mut self.clients, &self.policy, &mut self.stats, m, len) {
                Charge::Send => send(m, None),
                Charge::SendWithNotice(notice) => send(m, Some(notice)),
                Charge::Drop => dropped += 1,
            }
        }
        dropped
    }

    /// The session of `from`, opened if it has none and the server is not
    /// full.
    fn session(&mut self, from: SocketAddr) -> Result<&mut Session, SessionError> {
        if !self.clients.contains_key(&from) {
            if self.clients.len() >= self.limits.max_clients {
                return Err(SessionError::ServerFull {
                    max_clients: self.limits.max_clients,
                });
            }
            // Compact before arming: compaction keeps only the deadlines of
            // sessions already in `clients`.
            self.compact_deadlines();
            self.expired.remove(&from);
            if self.policy.idle_us > 0 {
                let at = self.now.saturating_add(self.policy.idle_us);
                self.deadlines.push(Reverse((at, self.next_number, from)));
            }
        }
        let (next_number, now) = (&mut self.next_number, self.now);
        Ok(self.clients.entry(from).or_insert_with(|| {
            let number = *next_number;
            *next_number += 1;
            Session {
                number,
                nick: None,
                room: None,
                pos: 0,
                last_seen: now,
                received: 0,
                sent: 0,
                confirmed: false,
                noticed: false,
            }
        }))
    }

    /// Drops stale heap entries when they outnumber live sessions (sessions
    /// that come and go leave one each until its deadline).
    fn compact_deadlines(&mut self) {
        if self.deadlines.len() > 2 * self.clients.len() + 1024 {
            let live: Vec<_> = self
                .clients
                .iter()
                .map(|(a, s)| {
                    Reverse((
                        s.last_seen.saturating_add(self.policy.idle_us),
                        s.number,
                        *a,
                    ))
                })
                .collect();
            self.deadlines = BinaryHeap::from(live);
        }
    }

    /// Parses and applies one datagram from the client at `from` (at the
    /// last time given to [`Sessions::advance`] or [`Sessions::apply`]).
    pub fn handle(&mut self, from: SocketAddr, data: &[u8]) -> Outcome {
        self.handle_at(self.now, from, data)
    }

    /// Parses and applies one datagram from `from` at `now` (µs, monotonic).
    pub fn handle_at(&mut self, now: u64, from: SocketAddr, data: &[u8]) -> Outcome {
        let command = ClientCommand::parse(data, self.limits.rooms);
        self.apply(now, from, data, command)
    }

    /// The number of rooms (a valid `/join` names `1..=rooms`).
    pub fn rooms(&self) -> u32 {
        self.limits.rooms
    }

    /// Applies `command`, parsed from `datagram` sent by `from` at `now`
    /// (µs, monotonic), and notes the datagram (see [`Sessions::touch`]).
    pub fn apply(
        &mut self,
        now: u64,
        from: SocketAddr,
        datagram: &[u8],
        command: Result<ClientCommand<'_>, CommandError<'_>>,
    ) -> Outcome {
        self.now = self.now.max(now);
        let known = self.clients.get(&from).map(|s| s.number);
        // A refusal goes to the session as it was: the address had one
        // exactly when it was known.
        let outcome = match command {
            Ok(command) => self
                .run(from, known, command)
                .unwrap_or_else(|e| Outcome::error(known, &e)),
            Err(e) => Outcome::error(known, &e),
        };
        if let Outcome::Silenced { .. } = outcome {
            self.stats.silenced += 1;
        }
        self.touch(from, datagram.len(), datagram);
        outcome
    }

    /// Notes a datagram of `len` bytes from `from` (keeps its session alive
    /// and earns sending credit unless it looks like server output). Called
    /// by [`Sessions::apply`]; the server calls it for datagrams it
    /// answers itself (too long ones).
    pub fn touch(&mut self, from: SocketAddr, len: usize, data: &[u8]) {
        let now = self.now;
        if let Some(s) = self.clients.get_mut(&from) {
            s.last_seen = now;
            if !looks_like_server_output(data) {
                s.received = s.received.saturating_add(len as u64);
            }
        }
    }

    fn run(
        &mut self,
        from: SocketAddr,
        known: Option<u64>,
        command: ClientCommand<'_>,
    ) -> Result<Outcome, SessionError> {
        match command {
            ClientCommand::Chat(text) => self.chat(from, text),
            ClientCommand::Join(room) => self.join(from, room),
            ClientCommand::Part => self.part(from),
            ClientCommand::Nick(nick) => self.nick(from, nick),
            ClientCommand::Confirm(token) => self.confirm(from, token),
            ClientCommand::Quit => {
                self.forget(from);
                Ok(Outcome::Quit { client: known })
            }
        }
    }

    fn chat(&mut self, from: SocketAddr, text: &[u8]) -> Result<Outcome, SessionError> {
        let session = self.clients.get(&from);
        let in_room = session.and_then(|s| s.room).is_some();
        if !in_room && looks_like_server_output(text) {
            return Ok(Outcome::Silenced {
                client: session.map(|s| s.number),
            });
        }
        let Some(s) = session else {
            return Err(if self.expired.contains_key(&from) {
                SessionError::Expired
            } else {
                SessionError::ChatOutsideRoom
            });
        };
        let room = s.room.ok_or(SessionError::ChatOutsideRoom)?;
        let mut line = Vec::with_capacity(text.len() + 32);
        line.push(b'<');
        match &s.nick {
            Some(n) => line.extend_from_slice(n),
            None => {
                use std::io::Write;
                // Writing into a Vec cannot fail.
                let _ = write!(line, "{from}");
            }
        }
        line.extend_from_slice(b"> ");
        line.extend_from_slice(text);
        Ok(Outcome::Post {
            client: s.number,
            room,
            line: Bytes::from(line),
        })
    }

    fn join(&mut self, from: SocketAddr, room: RoomId) -> Result<Outcome, SessionError> {
        let s = self.session(from)?;
        let number = s.number;
        if let Some(current) = s.room {
            return Err(SessionError::AlreadyInRoom(current));
        }
        s.room = Some(room);
        let members = self.members.entry(room).or_default();
        let pos = members.len();
        members.push(from);
        if let Some(s) = self.clients.get_mut(&from) {
            s.pos = pos;
        }
        Ok(Outcome::Reply {
            client: Some(number),
            reply: Bytes::from(format!("+OK You are now in chat room #{room}")),
        })
    }

    fn part(&mut self, from: SocketAddr) -> Result<Outcome, SessionError> {
        let s = self.clients.get_mut(&from).ok_or(SessionError::NotInRoom)?;
        let room = s.room.take().ok_or(SessionError::NotInRoom)?;
        let (number, pos) = (s.number, s.pos);
        self.leave(room, pos, from);
        Ok(Outcome::Reply {
            client: Some(number),
            reply: Bytes::from(format!("+OK You have left chat room #{room}")),
        })
    }

    fn nick(&mut self, from: SocketAddr, nick: &[u8]) -> Result<Outcome, SessionError> {
        let s = self.session(from)?;
        s.nick = Some(nick.to_vec());
        let mut reply = b"+OK Nickname set to '".to_vec();
        reply.extend_from_slice(nick);
        reply.push(b'\'');
        Ok(Outcome::Reply {
            client: Some(s.number),
            reply: Bytes::from(reply),
        })
    }

    fn confirm(&mut self, from: SocketAddr, token: &[u8]) -> Result<Outcome, SessionError> {
        let want = self.token(from);
        if token.is_empty()
            && let Some(s) = self.clients.get_mut(&from)
            && !s.confirmed
            && !s.noticed
        {
            // A client about to receive much more than it sends asks for
            // its token up front, before the cap could bite. The token goes
            // to the address, so only a client that receives there can use
            // it; once per session (the notice's single datagram), so a
            // forged source gains nothing by asking again.
            s.noticed = true;
            self.stats.notices += 1;
            return Ok(Outcome::Reply {
                client: Some(s.number),
                reply: Bytes::from(format!("{NOTICE_PREFIX}{want}")),
            });
        }
        // Constant time over the 16 bytes.
        let ok = token.len() == want.len()
            && token
                .iter()
                .zip(want.as_bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !ok {
            self.stats.bad_confirmations += 1;
            return Err(SessionError::BadToken);
        }
        let s = self.session(from)?;
        let number = s.number;
        if !s.confirmed {
            s.confirmed = true;
            self.stats.confirmed += 1;
        }
        Ok(Outcome::Reply {
            client: Some(number),
            reply: Bytes::from_static(CONFIRMED_REPLY.as_bytes()),
        })
    }

    /// Removes `who` (at `pos`) from `room`'s members in O(1).
    fn leave(&mut self, room: RoomId, pos: usize, who: SocketAddr) {
        if let Some(m) = self.members.get_mut(&room) {
            let at = if m.get(pos) == Some(&who) {
                Some(pos)
            } else {
                m.iter().position(|a| *a == who)
            };
            if let Some(at) = at {
                m.swap_remove(at);
                if let Some(&moved) = m.get(at)
                    && let Some(s) = self.clients.get_mut(&moved)
                {
                    s.pos = at;
                }
            }
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
            self.leave(room, s.pos, from);
        }
    }

    fn remember_expired(&mut self, addr: SocketAddr) {
        self.expired_gen += 1;
        self.expired.insert(addr, self.expired_gen);
        self.expired_order.push_back((addr, self.expired_gen));
        while self.expired_order.len() > RECENTLY_EXPIRED {
            if let Some((a, g)) = self.expired_order.pop_front()
                && self.expired.get(&a) == Some(&g)
            {
                self.expired.remove(&a);
            }
        }
    }

    /// Ends the session of an address that answered with ICMP unreachable.
    /// Returns whether there was one.
    pub fn unreachable(&mut self, addr: SocketAddr) -> bool {
        if self.clients.contains_key(&addr) {
            self.forget(addr);
            self.remember_expired(addr);
            self.stats.unreachable += 1;
            true
        } else {
            false
        }
    }

    /// When the next session may expire (µs), if any.
    pub fn next_expiry(&self) -> Option<u64> {
        self.deadlines.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Frees every session idle for the idle time at `now`; returns how
    /// many expired.
    pub fn expire(&mut self, now: u64) -> usize {
        self.now = self.now.max(now);
        let idle = self.policy.idle_us;
        let mut n = 0;
        while let Some(&Reverse((at, number, addr))) = self.deadlines.peek() {
            if at > self.now {
                break;
            }
            self.deadlines.pop();
            let Some(s) = self.clients.get(&addr) else {
                continue;
            };
            if s.number != number {
                continue;
            }
            let due = s.last_seen.saturating_add(idle);
            if due <= self.now {
                self.forget(addr);
                self.remember_expired(addr);
                self.stats.expired += 1;
                n += 1;
            } else {
                self.deadlines.push(Reverse((due, number, addr)));
            }
        }
        n
    }

    /// Accounts a reply of `len` bytes to `to` (replies are always sent:
    /// one per datagram received, and error replies are rate-limited).
    pub fn charge_reply(&mut self, to: SocketAddr, len: usize) {
        if let Some(s) = self.clients.get_mut(&to) {
            s.sent = s.sent.saturating_add(len as u64);
        }
    }

    /// Decides whether a delivery of `len` bytes to `to` may be sent under
    /// the amplification cap, and accounts it.
    pub fn charge(&mut self, to: SocketAddr, len: usize) -> Charge {
        charge(&mut self.clients, &self.policy, &mut self.stats, to, len)
    }
}

/// The amplification rule: until confirmed, at most `3 x received +
/// allowance` bytes go to a session; the notice (with the address's token)
/// once at half the allowance. Addresses without a session are not capped
/// (the server sends them only replies, one per datagram received).
fn charge(
    clients: &mut crate::FastMap<SocketAddr, Session>,
    policy: &SessionPolicy,
    stats: &mut SessionStats,
    to: SocketAddr,
    len: usize,
) -> Charge {
    let Some(s) = clients.get_mut(&to) else {
        return Charge::Send;
    };
    let len = len as u64;
    let allowance = policy.unconfirmed_allowance;
    if s.confirmed || allowance == 0 {
        s.sent = s.sent.saturating_add(len);
        return Charge::Send;
    }
    let credit = s.received.saturating_mul(3);
    if s.sent.saturating_add(len) > credit.saturating_add(allowance) {
        stats.over_allowance += 1;
        return Charge::Drop;
    }
    s.sent += len;
    if s.noticed || s.sent < credit.saturating_add(allowance / 2) {
        return Charge::Send;
    }
    s.noticed = true;
    let notice = Bytes::from(format!(
        "{NOTICE_PREFIX}{}",
        token_for(&policy.cookie_key, to)
    ));
    s.sent = s.sent.saturating_add(notice.len() as u64);
    stats.notices += 1;
    Charge::SendWithNotice(notice)
}

/// 16 lowercase hex digits of a keyed BLAKE3 hash of the address.
fn token_for(key: &[u8; 32], addr: SocketAddr) -> String {
    let h = blake3::keyed_hash(key, format!("chatroom confirm v1 {addr}").as_bytes());
    h.as_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::MAX_LINE;

    const EXPIRED_REPLY: &str = "-ERR Your session expired; join a room again with /join N";
    const BAD_TOKEN_REPLY: &str = "-ERR Invalid confirmation token";

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn reply(s: &mut Sessions, from: SocketAddr, line: &str) -> String {
        String::from_utf8(
            s.handle(from, line.as_bytes())
                .reply()
                .unwrap_or_default()
                .to_vec(),
        )
        .unwrap()
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
        assert_eq!(o.reply(), None);
        assert_eq!(
            o.post(),
            Some((3, &Bytes::from_static(b"<127.0.0.1:57326> Hello everyone!")))
        );
        assert_eq!(reply(&mut s, a, "/nick Bob"), "+OK Nickname set to 'Bob'");
        assert_eq!(
            s.handle(a, b"x").post().unwrap().1,
            &Bytes::from_static(b"<Bob> x")
        );
        assert_eq!(
            reply(&mut s, a, "/join 5"),
            "-ERR You are already in room #3"
        );
        assert_eq!(s.members(3), &[a]);
        assert_eq!(reply(&mut s, a, "/part"), "+OK You have left chat room #3");
        assert!(s.members(3).is_empty());
        assert_eq!(reply(&mut s, a, "/part"), "-ERR You are not in a chat room");
        assert_eq!(s.handle(a, b"/quit"), Outcome::Quit { client: Some(1) });
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
            String::from_utf8(s.handle(a, &long).reply().unwrap().to_vec())
                .unwrap()
                .starts_with("-ERR Message too long (1001 bytes")
        );
        let max = vec![b'y'; MAX_LINE];
        assert_eq!(
            s.handle(a, &max).post().unwrap().1.len(),
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
            &s.handle(a, text).post().unwrap().1[..],
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
        assert_eq!(
            reply(&mut s, addr(2), "/join 1"),
            "-ERR Server is full (1 clients); try another server"
        );
        assert!(reply(&mut s, addr(2), "/nick x").starts_with("-ERR Server is full"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn quit_from_stranger_is_silent_and_creates_nothing() {
        let mut s = Sessions::new(SessionLimits::default());
        assert_eq!(s.handle(addr(9), b"/quit").reply(), None);
        assert!(s.handle(addr(9), b"hello").reply().is_some());
        assert!(s.is_empty());
    }

    fn policy(idle_s: u64, allowance: u64) -> SessionPolicy {
        SessionPolicy {
            idle_us: idle_s * 1_000_000,
            unconfirmed_allowance: allowance,
            cookie_key: [7; 32],
        }
    }

    const S: u64 = 1_000_000;

    #[test]
    fn idle_sessions_expire_and_are_told_to_join_again() {
        let mut s = Sessions::with_policy(SessionLimits::default(), policy(10, 0));
        let (a, b) = (addr(1), addr(2));
        s.handle_at(0, a, b"/join 1");
        s.handle_at(0, b, b"/join 1");
        assert_eq!(s.next_expiry(), Some(10 * S));
        // b keeps talking; a does not.
        s.handle_at(6 * S, b, b"hi");
        assert_eq!(s.expire(9 * S), 0);
        assert_eq!(s.expire(10 * S), 1);
        assert_eq!(s.members(1), &[b]);
        assert_eq!(s.len(), 1);
        // b's entry was re-armed at its last activity + idle.
        assert_eq!(s.next_expiry(), Some(16 * S));
        assert_eq!(s.expire(16 * S), 1);
        assert!(s.is_empty() && s.members(1).is_empty());
        assert_eq!(s.stats().expired, 2);
        let o = s.handle_at(17 * S, a, b"hello again");
        assert_eq!(o.reply(), Some(EXPIRED_REPLY.as_bytes()));
        assert!(o.post().is_none());
        // Joining again works, and is a fresh session.
        assert_eq!(
            s.handle_at(17 * S, a, b"/join 2").reply(),
            Some(&b"+OK You are now in chat room #2"[..])
        );
        assert!(s.handle_at(17 * S, a, b"x").post().is_some());
        // A stranger is told the usual thing.
        assert_eq!(
            s.handle_at(17 * S, addr(3), b"x").reply(),
            Some(&b"-ERR You are not in a chat room (join one with /join N)"[..])
        );
    }

    #[test]
    fn a_reused_port_inherits_nothing() {
        let mut s = Sessions::with_policy(SessionLimits::default(), policy(10, 0));
        let a = addr(5);
        s.handle_at(0, a, b"/nick old");
        s.handle_at(0, a, b"/join 3");
        assert!(s.unreachable(a));
        assert!(!s.unreachable(a));
        assert!(s.members(3).is_empty());
        // The new owner of the port is not in room 3 and has no nickname.
        assert_eq!(
            s.handle_at(1, a, b"x").reply(),
            Some(EXPIRED_REPLY.as_bytes())
        );
        s.handle_at(1, a, b"/join 3");
        let o = s.handle_at(1, a, b"x");
        let (_, line) = o.post().unwrap();
        assert_eq!(&line[..], b"<127.0.0.1:5> x");
        assert_eq!(s.stats().unreachable, 1);
    }

    #[test]
    fn expiry_heap_stays_bounded_under_churn() {
        let mut s = Sessions::with_policy(SessionLimits::default(), policy(3600, 0));
        for i in 0..100_000u64 {
            let a = addr((i % 7) as u16 + 1);
            s.handle_at(i, a, b"/join 1");
            s.handle_at(i, a, b"/quit");
        }
        assert!(
            s.deadlines.len() <= 2 * s.len() + 1025,
            "{}",
            s.deadlines.len()
        );
        assert!(s.expired.len() <= RECENTLY_EXPIRED);
    }

    #[test]
    fn sessions_opened_while_the_heap_is_compacted_still_expire() {
        // Sessions that come and go leave stale deadlines; around 1024 of
        // them, opening a session compacts the heap.
        for churn in 1020..1030 {
            let mut s = Sessions::with_policy(SessionLimits::default(), policy(10, 0));
            for _ in 0..churn {
                s.handle_at(0, addr(1), b"/join 1");
                s.handle_at(0, addr(1), b"/quit");
            }
            s.handle_at(0, addr(2), b"/join 1");
            assert_eq!(s.expire(10 * S), 1, "after {churn} sessions");
            assert!(s.is_empty());
        }
    }

    #[test]
    fn recently_expired_is_bounded() {
        let mut s = Sessions::with_policy(
            SessionLimits {
                rooms: 1,
                max_clients: 100_000,
            },
            policy(1, 0),
        );
        for p in 1..=(RECENTLY_EXPIRED as u16 + 100) {
            s.handle_at(0, addr(p), b"/join 1");
        }
        s.expire(2 * S);
        assert!(s.is_empty());
        assert_eq!(s.expired.len(), RECENTLY_EXPIRED);
        assert!(s.expired_order.len() <= RECENTLY_EXPIRED);
        // The oldest were forgotten, the newest are remembered.
        assert!(
            s.handle_at(3 * S, addr(1), b"x")
                .reply()
                .unwrap()
                .starts_with(b"-ERR You are not")
        );
        assert_eq!(
            s.handle_at(3 * S, addr(RECENTLY_EXPIRED as u16 + 100), b"x")
                .reply(),
            Some(EXPIRED_REPLY.as_bytes())
        );
    }

    #[test]
    fn members_leave_in_any_order() {
        let mut s = Sessions::with_policy(SessionLimits::default(), policy(0, 0));
        for p in 1..=50 {
            s.handle(addr(p), b"/join 1");
        }
        for p in (1..=50).filter(|p| p % 3 == 0) {
            s.handle(addr(p), b"/part");
        }
        for p in (1..=50).filter(|p| p % 3 == 1) {
            s.unreachable(addr(p));
        }
        let mut got: Vec<u16> = s.members(1).iter().map(|a| a.port()).collect();
        got.sort();
        let want: Vec<u16> = (1..=50).filter(|p| p % 3 == 2).collect();
        assert_eq!(got, want);
        for p in want {
            s.forget(addr(p));
        }
        assert!(s.members(1).is_empty());
        // idle 0 = never expire
        assert_eq!(s.next_expiry(), None);
    }

    #[test]
    fn server_output_from_outside_a_room_gets_no_reply() {
        let mut s = Sessions::new(SessionLimits::default());
        let a = addr(1);
        for d in [
            &b"-ERR Unknown command '/bogus'"[..],
            b"+OK You are now in chat room #2",
            b"<x> hi",
        ] {
            let o = s.handle(a, d);
            assert_eq!(o.reply(), None, "{d:?}");
            assert!(matches!(o, Outcome::Silenced { client: None }));
            // Also from a session outside a room.
            s.handle(a, b"/nick n");
            assert_eq!(s.handle(a, d).reply(), None);
            s.forget(a);
        }
        assert_eq!(s.stats().silenced, 6);
        // In a room it is chat, byte for byte.
        s.handle(a, b"/join 1");
        assert_eq!(
            &s.handle(a, b"-ERR lol").post().unwrap().1[..],
            b"<127.0.0.1:1> -ERR lol"
        );
        // Commands are still answered.
        assert!(s.handle(addr(2), b"/bogus").reply().is_some());
    }

    /// A client may ask for its token before the cap is near: once per
    /// session, and only with a session (no datagram for a bare address).
    #[test]
    fn a_client_can_ask_for_its_token_up_front() {
        let mut s = Sessions::with_policy(SessionLimits::default(), policy(0, 1000));
        let a = addr(9);
        assert_eq!(
            s.handle(a, b"/confirm").reply(),
            Some(BAD_TOKEN_REPLY.as_bytes()),
            "no session: nothing but the usual refusal"
        );
        s.handle(a, b"/join 1");
        let token = s.token(a);
        let notice = format!("{NOTICE_PREFIX}{token}");
        assert_eq!(s.handle(a, b"/confirm").reply(), Some(notice.as_bytes()));
        assert_eq!(
            s.handle(a, b"/confirm").reply(),
            Some(BAD_TOKEN_REPLY.as_bytes()),
            "once per session"
        );
        assert_eq!(
            s.handle(a, format!("/confirm {token}").as_bytes()).reply(),
            Some(CONFIRMED_REPLY.as_bytes())
        );
        // Confirmed: nothing is capped any more, and no notice comes.
        for _ in 0..100 {
            assert_eq!(s.charge(a, 1000), Charge::Send);
        }
    }

    #[test]
    fn amplification_cap_notice_and_confirmation() {
        let allowance = 1000;
        let mut s = Sessions::with_policy(SessionLimits::default(), policy(0, allowance));
        let a = addr(9);
        s.handle(a, b"/join 1"); // 7 bytes: credit 21
        let token = s.token(a);
        assert_eq!(token.len(), 16);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_ne!(token, s.token(addr(10)));
        // 3 x 7 + 1000 = 1021 bytes may go out; a notice at 21 + 500.
        let mut sent = 0;
        let mut notices = Vec::new();
        let mut dropped = 0;
        for _ in 0..30 {
            match s.charge(a, 100) {
                Charge::Send => sent += 100,
                Charge::SendWithNotice(n) => {
                    sent += 100;
                    notices.push(n);
                }
                Charge::Drop => dropped += 1,
            }
        }
        assert_eq!(notices.len(), 1);
        assert_eq!(
            notices[0],
            Bytes::from(format!(
                "+OK Confirm your address to keep receiving messages: send /confirm {token}"
            ))
        );
        let notice_len = notices[0].len();
        assert!(sent + notice_len <= 1021, "{sent} + {notice_len}");
        assert!(sent >= 1021 - notice_len - 100);
        assert_eq!(dropped, 30 - sent / 100);
        assert_eq!(s.stats().over_allowance, dropped as u64);
        // What the client sends earns 3x credit ...
        s.handle(a, &[b'y'; 100]);
        assert_eq!(s.charge(a, 290), Charge::Send);
        assert_eq!(s.charge(a, 100), Charge::Drop);
        // ... but server-like output earns nothing.
        s.handle(a, &[b'<'; 100]);
        assert_eq!(s.charge(a, 100), Charge::Drop);
        // A wrong token.
        assert_eq!(
            s.handle(a, b"/confirm 0000000000000000").reply(),
            Some(BAD_TOKEN_REPLY.as_bytes())
        );
        assert_eq!(
            s.handle(a, format!("/confirm {}", token.to_uppercase()).as_bytes())
                .reply(),
            Some(BAD_TOKEN_REPLY.as_bytes())
        );
        assert_eq!(
            s.handle(a, b"/confirm").reply(),
            Some(BAD_TOKEN_REPLY.as_bytes())
        );
        // Another address's token does not work here.
        let other = s.token(addr(10));
        assert_eq!(
            s.handle(a, format!("/confirm {other}").as_bytes()).reply(),
            Some(BAD_TOKEN_REPLY.as_bytes())
        );
        assert_eq!(
            s.handle(a, format!("/confirm {token}").as_bytes()).reply(),
            Some(CONFIRMED_REPLY.as_bytes())
        );
        for _ in 0..100 {
            assert_eq!(s.charge(a, 1000), Charge::Send);
        }
        assert_eq!(s.stats().confirmed, 1);
        assert_eq!(s.stats().bad_confirmations, 4);
        // Allowance 0: no cap, no notice.
        let mut s = Sessions::with_policy(SessionLimits::default(), policy(0, 0));
        s.handle(a, b"/join 1");
        for _ in 0..1000 {
            assert_eq!(s.charge(a, 1000), Charge::Send);
        }
    }
}
