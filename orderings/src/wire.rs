//! Byte-level encoding shared by every server-to-server packet.
//!
//! Fields are LEB128 varints and length-prefixed byte strings, so chat text is
//! never split on a separator. A whole datagram is finally byte-stuffed so it
//! contains no NUL byte (the spec's reference proxy treats packets as C
//! strings): `0x00` becomes `0xFE 0x01` and `0xFE` becomes `0xFE 0x02`.

use bytes::Bytes;

/// Why a packet could not be decoded. Every decoder returns this instead of
/// panicking, so a garbage datagram is dropped and counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The packet ends inside a field.
    #[error("packet truncated")]
    Truncated,
    /// A varint does not fit in 64 bits.
    #[error("varint too long")]
    VarintOverflow,
    /// A NUL byte, or an escape byte not followed by 1 or 2.
    #[error("bad escape sequence")]
    BadEscape,
    /// The first byte is not the datagram magic.
    #[error("not a server packet (bad magic)")]
    BadMagic,
    /// A datagram of another wire version.
    #[error("unsupported wire version {0}")]
    Version(u8),
    /// A kind byte the decoder does not know.
    #[error("unknown packet kind {0}")]
    UnknownKind(u8),
    /// The named field holds a value no honest sender writes.
    #[error("value out of range: {0}")]
    OutOfRange(&'static str),
    /// Bytes after the last field.
    #[error("trailing bytes after packet")]
    Trailing,
    /// The MAC is missing, wrong, or present without a cluster secret.
    #[error("authentication failed")]
    BadMac,
}

const ESC: u8 = 0xFE;

/// Appends `src` to `dst` with NUL bytes stuffed away.
pub fn stuff_into(src: &[u8], dst: &mut Vec<u8>) {
    dst.reserve(src.len() + 8);
    // Copy the runs between special bytes whole (a chat line is mostly one
    // run): byte by byte, stuffing was an eighth of a server's work.
    let mut rest = src;
    while let Some(i) = memchr::memchr2(0x00, ESC, rest) {
        dst.extend_from_slice(&rest[..i]);
        dst.extend_from_slice(if rest[i] == 0 {
            &[ESC, 0x01]
        } else {
            &[ESC, 0x02]
        });
        rest = &rest[i + 1..];
    }
    dst.extend_from_slice(rest);
}

/// Size of `src` once stuffed.
pub(crate) fn stuffed_len(src: &[u8]) -> usize {
    src.len() + memchr::memchr2_iter(0x00, ESC, src).count()
}

/// Reverses [`stuff_into`].
pub fn unstuff(src: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(src.len());
    let mut rest = src;
    while let Some(i) = memchr::memchr2(0x00, ESC, rest) {
        out.extend_from_slice(&rest[..i]);
        match (rest[i], rest.get(i + 1)) {
            (ESC, Some(0x01)) => out.push(0x00),
            (ESC, Some(0x02)) => out.push(ESC),
            _ => return Err(WireError::BadEscape),
        }
        rest = &rest[i + 2..];
    }
    out.extend_from_slice(rest);
    Ok(out)
}

/// Appends fields to a buffer.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }
    /// An empty buffer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }
    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    /// A LEB128 varint.
    pub fn varint(&mut self, mut v: u64) -> &mut Self {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(byte);
                return self;
            }
            self.buf.push(byte | 0x80);
        }
    }
    /// A length-prefixed byte string.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
        self
    }
    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// Nothing written yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// The bytes written.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
    /// The bytes written, as a payload.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from(self.buf)
    }
}

/// Reads fields from a buffer; every read is bounds-checked.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
    /// One byte.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        let (&b, rest) = self.buf.split_first().ok_or(WireError::Truncated)?;
        self.buf = rest;
        Ok(b)
    }
    /// A LEB128 varint of at most 64 bits.
    pub fn varint(&mut self) -> Result<u64, WireError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err(WireError::VarintOverflow);
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError::VarintOverflow)
    }
    /// A varint that must fit in a `u32`; `what` names the field in the error.
    pub fn varint_u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        u32::try_from(self.varint()?).map_err(|_| WireError::OutOfRange(what))
    }
    /// A varint that must fit in a `u16`; `what` names the field in the error.
    pub fn varint_u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        u16::try_from(self.varint()?).map_err(|_| WireError::OutOfRange(what))
    }
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    /// A length-prefixed byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| WireError::Truncated)?;
        self.take(n)
    }
    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    /// Everything not read yet; the reader is then empty.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    /// Ok if everything was read, else [`WireError::Trailing`].
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn stuffing_round_trips_and_has_no_nul(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut s = Vec::new();
            stuff_into(&data, &mut s);
            prop_assert!(!s.contains(&0));
            prop_assert_eq!(s.len(), stuffed_len(&data));
            prop_assert_eq!(unstuff(&s).unwrap(), data);
        }

        #[test]
        fn unstuff_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = unstuff(&data);
        }

        #[test]
        fn varints_round_trip(v in any::<u64>(), b in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut w = Writer::new();
            w.varint(v).bytes(&b);
            let buf = w.finish();
            let mut r = Reader::new(&buf);
            prop_assert_eq!(r.varint().unwrap(), v);
            prop_assert_eq!(r.bytes().unwrap(), &b[..]);
            prop_assert!(r.finish().is_ok());
        }

        #[test]
        fn reader_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&data);
            let _ = r.varint();
            let _ = r.bytes();
            let _ = r.u8();
        }
    }
}
