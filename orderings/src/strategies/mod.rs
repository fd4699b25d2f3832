//! The built-in strategies. Each registers itself with `inventory`.
//!
//! All of them tolerate packets arriving in any order (the simulator runs
//! them on a reordering network without the link layer as well), and rely on
//! the replica's links for loss and duplication.

mod causal;
mod fifo;
mod isis;
mod relay;
mod stream;
mod total;
mod unordered;

pub use causal::{CausalMessage, ClockEntry};
pub use isis::{KnownFinal, MAX_PRIORITY, Priority, TotalMessage};
pub use relay::RelayMessage;
pub use stream::{ChatMessage, StreamMessage, StreamStart};
pub use total::{MAX_CLOCK, Stamp, StampedMessage};

/// Packet kinds; one byte at the start of every strategy payload. Only the
/// message enums' `encode` and `decode` use them.
pub(crate) mod kind {
    pub(crate) const CHAT: u8 = 1;
    pub(crate) const STREAM_START: u8 = 2;
    pub(crate) const TOTAL_MSG: u8 = 3;
    pub(crate) const TOTAL_PROPOSE: u8 = 4;
    pub(crate) const TOTAL_FINAL: u8 = 5;
    pub(crate) const CAUSAL_MSG: u8 = 6;
    pub(crate) const TOTAL_QUERY: u8 = 7;
    pub(crate) const TOTAL_ANSWER: u8 = 8;
    pub(crate) const CAUSAL_START: u8 = 9;
    pub(crate) const FLUSH_REPORT: u8 = 10;
    pub(crate) const FLUSH_RELAY: u8 = 11;
    pub(crate) const FLUSH_ANSWERED: u8 = 12;
    pub(crate) const STAMPED_CHAT: u8 = 13;
    pub(crate) const STAMPED_ACK: u8 = 14;
    pub(crate) const STAMPED_HELLO: u8 = 15;
    pub(crate) const STAMPED_RESENT: u8 = 16;
}
