//! Client datagrams parsed into typed commands, sans-IO and without state:
//! [`ClientCommand::parse`] checks everything that depends on the datagram
//! alone (length, command name, arguments) and returns the command or the
//! [`CommandError`] that is its `-ERR` reply. [`crate::session::Sessions`]
//! applies the command.

use bytes::Bytes;
use orderings::RoomId;

/// The spec's limit on a client datagram.
pub const MAX_LINE: usize = 1000;
/// Longest nickname accepted, in bytes.
pub const MAX_NICK: usize = 32;

/// What a client datagram asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCommand<'a> {
    /// Chat text for the client's room: the whole datagram, byte for byte.
    Chat(&'a [u8]),
    /// `/join N`, with `N` within the server's rooms.
    Join(RoomId),
    /// `/part`.
    Part,
    /// `/nick NAME`, with a valid name.
    Nick(&'a [u8]),
    /// `/confirm TOKEN`, the token as sent (checked against the address's).
    Confirm(&'a [u8]),
    /// `/quit` (any argument is ignored).
    Quit,
}

/// Why a datagram is not a command; its `Display` is the text of the
/// `-ERR` reply after `-ERR `.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError<'a> {
    #[error("Message too long ({0} bytes; at most {MAX_LINE})")]
    TooLong(usize),
    #[error("Usage: /join <room> (rooms are 1 to {rooms})")]
    JoinUsage { rooms: u32 },
    #[error("Invalid room '{}': rooms are numbered 1 to {rooms}", String::from_utf8_lossy(.arg))]
    InvalidRoom { arg: &'a [u8], rooms: u32 },
    #[error("Usage: /part (no arguments)")]
    PartUsage,
    #[error("Usage: /nick <name>")]
    NickUsage,
    #[error("Invalid nickname: use 1 to {MAX_NICK} bytes without control characters, '<' or '>'")]
    InvalidNick,
    #[error("Unknown command '{}'", String::from_utf8_lossy(.name))]
    Unknown { name: &'a [u8] },
}

impl CommandError<'_> {
    /// The `-ERR` reply.
    pub fn reply(&self) -> Bytes {
        Bytes::from(format!("-ERR {self}"))
    }
}

impl<'a> ClientCommand<'a> {
    /// Parses one client datagram for a server with rooms `1..=rooms`.
    /// A datagram that does not start with `/` is chat text; commands
    /// tolerate a trailing newline (netcat users) and spaces around the
    /// argument.
    pub fn parse(data: &'a [u8], rooms: u32) -> Result<Self, CommandError<'a>> {
        if data.len() > MAX_LINE {
            return Err(CommandError::TooLong(data.len()));
        }
        if data.first() != Some(&b'/') {
            return Ok(Self::Chat(data));
        }
        let line = trim_newline(data);
        let (name, arg) = match line.iter().position(|&b| b == b' ') {
            Some(i) => (&line[..i], trim_spaces(&line[i + 1..])),
            None => (line, &line[line.len()..]),
        };
        match name {
            b"/join" => parse_room(arg, rooms).map(Self::Join),
            b"/part" if arg.is_empty() => Ok(Self::Part),
            b"/part" => Err(CommandError::PartUsage),
            b"/nick" => parse_nick(arg).map(Self::Nick),
            b"/confirm" => Ok(Self::Confirm(arg)),
            b"/quit" => Ok(Self::Quit),
            _ => Err(CommandError::Unknown { name }),
        }
    }
}

fn parse_room(arg: &[u8], rooms: u32) -> Result<RoomId, CommandError<'_>> {
    if arg.is_empty() {
        return Err(CommandError::JoinUsage { rooms });
    }
    match std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        Some(r) if r >= 1 && r <= u64::from(rooms) => Ok(r as RoomId),
        _ => Err(CommandError::InvalidRoom { arg, rooms }),
    }
}

fn parse_nick(arg: &[u8]) -> Result<&[u8], CommandError<'_>> {
    if arg.is_empty() {
        return Err(CommandError::NickUsage);
    }
    // `<` and `>` would let a nickname forge the `<NICK> ` prefix.
    if arg.len() > MAX_NICK
        || arg
            .iter()
            .any(|&b| b < 0x20 || b == 0x7f || b == b'<' || b == b'>')
    {
        return Err(CommandError::InvalidNick);
    }
    Ok(arg)
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

    fn err(data: &str) -> String {
        match ClientCommand::parse(data.as_bytes(), 10) {
            Err(e) => String::from_utf8(e.reply().to_vec()).unwrap(),
            Ok(c) => panic!("{data:?} parsed as {c:?}"),
        }
    }

    #[test]
    fn commands_and_chat() {
        let parse = |d: &'static str| ClientCommand::parse(d.as_bytes(), 10);
        assert_eq!(parse("/join 3"), Ok(ClientCommand::Join(3)));
        assert_eq!(parse("/join  10 \r\n"), Ok(ClientCommand::Join(10)));
        assert_eq!(parse("/part\n"), Ok(ClientCommand::Part));
        assert_eq!(parse("/nick Bob"), Ok(ClientCommand::Nick(b"Bob")));
        assert_eq!(parse("/confirm"), Ok(ClientCommand::Confirm(b"")));
        assert_eq!(parse("/confirm ab12"), Ok(ClientCommand::Confirm(b"ab12")));
        assert_eq!(parse("/quit now"), Ok(ClientCommand::Quit));
        assert_eq!(
            parse("hi /join 1\n"),
            Ok(ClientCommand::Chat(b"hi /join 1\n"))
        );
        assert_eq!(parse(""), Ok(ClientCommand::Chat(b"")));
    }

    #[test]
    fn errors_are_the_exact_replies() {
        assert_eq!(err("/join"), "-ERR Usage: /join <room> (rooms are 1 to 10)");
        assert_eq!(
            err("/join 11"),
            "-ERR Invalid room '11': rooms are numbered 1 to 10"
        );
        assert_eq!(
            err("/join \u{e9}"),
            "-ERR Invalid room '\u{e9}': rooms are numbered 1 to 10"
        );
        assert_eq!(err("/part 1"), "-ERR Usage: /part (no arguments)");
        assert_eq!(err("/nick "), "-ERR Usage: /nick <name>");
        assert_eq!(
            err("/nick a>b"),
            "-ERR Invalid nickname: use 1 to 32 bytes without control characters, '<' or '>'"
        );
        assert_eq!(err("/JOIN 1"), "-ERR Unknown command '/JOIN'");
        assert_eq!(
            err(&"x".repeat(MAX_LINE + 1)),
            "-ERR Message too long (1001 bytes; at most 1000)"
        );
    }
}
