//! The server-to-server link layer, in two parts: [`datagram`] is the wire
//! format (codec, stuffing, MAC) and nothing else; [`peer`] is the state
//! machine of one reliable, FIFO, batching link to one peer, which fills and
//! reads those datagrams. The replica owns one [`PeerLink`] per peer; the
//! node and the tools see only the codec and the counters.

mod datagram;
mod peer;

pub(crate) use datagram::SENDER_MAX_STUFFED;
pub use datagram::{
    Datagram, MAC_LEN, MAGIC, VERSION, open_datagram, seal_datagram, sender_of, stamp_sender,
};
pub(crate) use peer::PeerLink;
pub use peer::{LinkConfig, LinkStats};
