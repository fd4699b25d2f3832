//! The datagram codec and its authentication: the one format every
//! server-to-server datagram has, apart from the link state that fills it.
//!
//! A datagram is a header (magic, version, flags, both incarnations, the
//! cumulative ack, the delivery count, gaps) and a list of frames; it is
//! byte-stuffed for the wire, with a keyed BLAKE3 tag appended when the
//! cluster has a secret.

use crate::wire::{Reader, WireError, Writer, stuff_into, unstuff};

/// First byte of every server-to-server datagram.
pub const MAGIC: u8 = 0xC5;
/// Wire version; bumped on any incompatible change.
pub const VERSION: u8 = 3;
/// Length of the authentication tag when a cluster secret is set.
pub const MAC_LEN: usize = 16;

const FLAG_MAC: u8 = 0x01;
/// "Tell me your delivery count now": the sender's admission window is
/// full because of us (a report may have been lost).
const FLAG_REPORT: u8 = 0x02;
/// "Your incarnation (the one this datagram names) is out of my view": the
/// receiver must come back as a new incarnation.
const FLAG_EXCLUDED: u8 = 0x08;

/// Decoded header and control part of a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// The sender's incarnation.
    pub src_incarnation: u64,
    /// The receiver's incarnation as the sender knows it (0: unknown).
    pub dst_incarnation: u64,
    /// All frames up to and including this sequence number were received.
    pub ack: u64,
    /// How many messages of the receiver's current incarnation the sender
    /// has delivered (the receiver's admission window is built on it).
    pub delivered: u64,
    /// The sender asks for an immediate delivery report.
    pub report_wanted: bool,
    /// The sender excluded `dst_incarnation` from its view.
    pub excluded: bool,
    /// Ranges `(first, count)` above `ack` that the receiver is missing.
    pub gaps: Vec<(u64, u64)>,
    /// `(sequence number, strategy payload)` per frame.
    pub frames: Vec<(u64, &'a [u8])>,
}

impl<'a> Datagram<'a> {
    /// Encodes without stuffing (the MAC, if any, covers these bytes).
    pub fn encode_raw(&self, authenticated: bool) -> Vec<u8> {
        let mut w =
            Writer::with_capacity(64 + self.frames.iter().map(|f| f.1.len() + 6).sum::<usize>());
        w.u8(MAGIC)
            .u8(VERSION)
            .u8(if authenticated { FLAG_MAC } else { 0 }
                | if self.report_wanted { FLAG_REPORT } else { 0 }
                | if self.excluded { FLAG_EXCLUDED } else { 0 });
        w.varint(self.src_incarnation)
            .varint(self.dst_incarnation)
            .varint(self.ack)
            .varint(self.delivered);
        w.varint(self.gaps.len() as u64);
        for &(first, count) in &self.gaps {
            w.varint(first).varint(count);
        }
        w.varint(self.frames.len() as u64);
        for &(seq, payload) in &self.frames {
            w.varint(seq).bytes(payload);
        }
        w.finish()
    }

    /// Decodes raw (unstuffed) bytes, MAC already removed. Returns the
    /// datagram and whether its flags say it carries a MAC.
    pub fn decode_raw(buf: &'a [u8]) -> Result<(Datagram<'a>, bool), WireError> {
        let mut r = Reader::new(buf);
        if r.u8()? != MAGIC {
            return Err(WireError::BadMagic);
        }
        let v = r.u8()?;
        if v != VERSION {
            return Err(WireError::Version(v));
        }
        let flags = r.u8()?;
        if flags & !(FLAG_MAC | FLAG_REPORT | FLAG_EXCLUDED) != 0 {
            return Err(WireError::OutOfRange("flags"));
        }
        let src_incarnation = r.varint()?;
        let dst_incarnation = r.varint()?;
        let ack = r.varint()?;
        let delivered = r.varint()?;
        let ngaps = r.varint()?;
        if ngaps > 64 {
            return Err(WireError::OutOfRange("gap count"));
        }
        let mut gaps = Vec::with_capacity(ngaps as usize);
        for _ in 0..ngaps {
            gaps.push((r.varint()?, r.varint()?));
        }
        let nframes = r.varint()?;
        if nframes > r.remaining() as u64 {
            return Err(WireError::Truncated);
        }
        let mut frames = Vec::with_capacity(nframes as usize);
        for _ in 0..nframes {
            let seq = r.varint()?;
            frames.push((seq, r.bytes()?));
        }
        r.finish()?;
        Ok((
            Datagram {
                src_incarnation,
                dst_incarnation,
                ack,
                delivered,
                report_wanted: flags & FLAG_REPORT != 0,
                excluded: flags & FLAG_EXCLUDED != 0,
                gaps,
                frames,
            },
            flags & FLAG_MAC != 0,
        ))
    }
}

/// Computes the tag of `raw` under `key`.
pub(super) fn mac(key: &[u8; 32], raw: &[u8]) -> [u8; MAC_LEN] {
    let full = blake3::keyed_hash(key, raw);
    let mut tag = [0u8; MAC_LEN];
    tag.copy_from_slice(&full.as_bytes()[..MAC_LEN]);
    tag
}

/// Stuffs a raw datagram, appending its MAC when a key is given.
pub fn seal_datagram(raw: &[u8], key: Option<&[u8; 32]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + MAC_LEN + 16);
    stuff_into(raw, &mut out);
    if let Some(k) = key {
        stuff_into(&mac(k, raw), &mut out);
    }
    out
}

/// Unstuffs a datagram and checks its MAC. With a key, a datagram without
/// a valid tag is refused; without a key, a datagram that carries one is
/// refused too (the two servers disagree on the secret).
pub fn open_datagram(wire: &[u8], key: Option<&[u8; 32]>) -> Result<Vec<u8>, WireError> {
    let mut raw = unstuff(wire)?;
    if raw.len() < 3 || raw[0] != MAGIC {
        return Err(WireError::BadMagic);
    }
    let flagged = raw[2] & FLAG_MAC != 0;
    match key {
        Some(k) => {
            if !flagged || raw.len() < 3 + MAC_LEN {
                return Err(WireError::BadMac);
            }
            let body_len = raw.len() - MAC_LEN;
            let expected = mac(k, &raw[..body_len]);
            // Constant-time comparison via blake3's Hash equality is not
            // available for truncated tags; fold the difference instead.
            let diff = expected
                .iter()
                .zip(&raw[body_len..])
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff != 0 {
                return Err(WireError::BadMac);
            }
            raw.truncate(body_len);
            Ok(raw)
        }
        None if flagged => Err(WireError::BadMac),
        None => Ok(raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_rejects_tampering() {
        let key = [7u8; 32];
        let d = Datagram {
            src_incarnation: 1,
            dst_incarnation: 2,
            ack: 3,
            delivered: 4,
            report_wanted: true,
            excluded: false,
            gaps: vec![],
            frames: vec![(1, b"hello\0world")],
        };
        let raw = d.encode_raw(true);
        let wire = seal_datagram(&raw, Some(&key));
        assert!(!wire.contains(&0));
        assert_eq!(open_datagram(&wire, Some(&key)).unwrap(), raw);
        let mut bad = wire.clone();
        let n = bad.len();
        bad[n / 2] ^= 0x40;
        assert!(open_datagram(&bad, Some(&key)).is_err());
        assert_eq!(
            open_datagram(&wire, Some(&[8u8; 32])),
            Err(WireError::BadMac)
        );
        assert_eq!(
            open_datagram(&seal_datagram(&d.encode_raw(false), None), Some(&key)),
            Err(WireError::BadMac)
        );
    }
}
