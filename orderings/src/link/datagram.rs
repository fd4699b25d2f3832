//! The datagram codec and its authentication: the one format every
//! server-to-server datagram has, apart from the link state that fills it.
//!
//! A datagram is a header (magic, version, flags, the sender's server index
//! when [`FLAG_SENDER`] is set, both incarnations, the cumulative ack, the
//! delivery count, gaps) and a list of frames; it is byte-stuffed for the
//! wire, with a keyed BLAKE3 tag appended when the cluster has a secret.
//!
//! The sender's index is stamped by the replica (the link does not know
//! who it is) with [`stamp_sender`], only when the cluster has a secret:
//! then it is inside the MAC-covered bytes and a receiver may identify the
//! sender by it instead of by its source address. Without a secret nothing
//! changes on the wire (an index claim could not be trusted anyway), and
//! datagrams without the flag decode as before.

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
/// The header names the sender's server index (a varint right after the
/// flags byte).
pub(super) const FLAG_SENDER: u8 = 0x04;
/// The most [`stamp_sender`] adds to a stuffed datagram: a varint of a
/// 16-bit index (3 bytes), each byte stuffed to at most 2.
pub(crate) const SENDER_MAX_STUFFED: usize = 6;
/// "Your incarnation (the one this datagram names) is out of my view": the
/// receiver must come back as a new incarnation.
const FLAG_EXCLUDED: u8 = 0x08;

/// Decoded header and control part of a datagram (the default: a
/// heartbeat of incarnation 0 to an unknown one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
        let (flags, _) = read_head(&mut r)?;
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

/// Names `sender` in a raw datagram (from [`Datagram::encode_raw`], before
/// it is sealed): sets the sender flag (`FLAG_SENDER`) and inserts the index after the
/// flags. A datagram that already names a sender is left alone.
pub fn stamp_sender(raw: &mut Vec<u8>, sender: u16) {
    if raw.len() < 3 || raw[2] & FLAG_SENDER != 0 {
        return;
    }
    raw[2] |= FLAG_SENDER;
    let mut w = Writer::with_capacity(3);
    w.varint(u64::from(sender));
    let index = w.finish();
    raw.splice(3..3, index);
}

/// The sender's server index a raw datagram names (after
/// [`open_datagram`]), `None` when it names none.
pub fn sender_of(raw: &[u8]) -> Result<Option<u16>, WireError> {
    read_head(&mut Reader::new(raw)).map(|(_, sender)| sender)
}

/// Reads magic, version, flags and the sender's index when the flags name
/// one: `(flags, sender)`.
fn read_head(r: &mut Reader<'_>) -> Result<(u8, Option<u16>), WireError> {
    if r.u8()? != MAGIC {
        return Err(WireError::BadMagic);
    }
    let v = r.u8()?;
    if v != VERSION {
        return Err(WireError::Version(v));
    }
    let flags = r.u8()?;
    if flags & !(FLAG_MAC | FLAG_REPORT | FLAG_SENDER | FLAG_EXCLUDED) != 0 {
        return Err(WireError::OutOfRange("flags"));
    }
    let sender = if flags & FLAG_SENDER != 0 {
        let index = u16::try_from(r.varint()?).map_err(|_| WireError::OutOfRange("sender"))?;
        Some(index)
    } else {
        None
    };
    Ok((flags, sender))
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

    fn heartbeat() -> Datagram<'static> {
        Datagram {
            src_incarnation: 11,
            dst_incarnation: 12,
            ack: 3,
            delivered: 4,
            report_wanted: false,
            excluded: false,
            gaps: vec![(5, 1)],
            frames: vec![(6, b"x")],
        }
    }

    #[test]
    fn the_sender_index_is_stamped_inside_the_mac() {
        let key = [7u8; 32];
        let d = heartbeat();
        for sender in [0u16, 1, 127, 128, 300, u16::MAX] {
            let mut raw = d.encode_raw(true);
            let plain_len = raw.len();
            stamp_sender(&mut raw, sender);
            assert!(raw.len() > plain_len && raw.len() <= plain_len + 3);
            // Stamping twice changes nothing.
            let once = raw.clone();
            stamp_sender(&mut raw, sender.wrapping_add(1));
            assert_eq!(raw, once);
            use crate::wire::stuffed_len;
            assert!(stuffed_len(&raw) <= stuffed_len(&d.encode_raw(true)) + SENDER_MAX_STUFFED);
            let wire = seal_datagram(&raw, Some(&key));
            let opened = open_datagram(&wire, Some(&key)).unwrap();
            assert_eq!(sender_of(&opened), Ok(Some(sender)));
            // The rest decodes as the unstamped datagram.
            let (back, auth) = Datagram::decode_raw(&opened).unwrap();
            assert!(auth);
            assert_eq!(back, d);
            // The index is covered by the MAC: changing it breaks the tag.
            let mut forged = raw.clone();
            forged[3] ^= 0x01;
            let mut tampered = Vec::new();
            stuff_into(&forged, &mut tampered);
            stuff_into(&mac(&key, &raw), &mut tampered);
            assert_eq!(open_datagram(&tampered, Some(&key)), Err(WireError::BadMac));
        }
    }

    #[test]
    fn datagrams_without_a_sender_decode_as_before() {
        // Today's datagrams (no flag) decode unchanged and name no sender.
        let d = heartbeat();
        for auth in [false, true] {
            let raw = d.encode_raw(auth);
            assert_eq!(raw[2] & FLAG_SENDER, 0);
            assert_eq!(sender_of(&raw), Ok(None));
            assert_eq!(Datagram::decode_raw(&raw).unwrap(), (d.clone(), auth));
        }
        // A byte-exact datagram of the previous encoder: magic, version,
        // flags 0, incarnations 1 and 2, ack 3, delivered 4, no gaps, one
        // frame (seq 1, "hi").
        let old = [MAGIC, VERSION, 0, 1, 2, 3, 4, 0, 1, 1, 2, b'h', b'i'];
        let (back, auth) = Datagram::decode_raw(&old).unwrap();
        assert!(!auth);
        assert_eq!(
            (back.src_incarnation, back.frames),
            (1, vec![(1, &b"hi"[..])])
        );
        // A sender index beyond 16 bits is refused.
        let mut big = d.encode_raw(false);
        big[2] |= FLAG_SENDER;
        big.splice(3..3, [0x80, 0x80, 0x04]);
        assert_eq!(sender_of(&big), Err(WireError::OutOfRange("sender")));
        assert!(Datagram::decode_raw(&big).is_err());
    }

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
