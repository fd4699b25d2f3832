//! The built-in strategies. Each registers itself with `inventory`.
//!
//! All of them tolerate packets arriving in any order (the simulator runs
//! them on a reordering network without the link layer as well), and rely on
//! the replica's links for loss and duplication.

pub mod causal;
pub mod fifo;
pub mod stream;
pub mod total;
pub mod unordered;

/// Packet kinds; one byte at the start of every strategy payload.
pub(crate) mod kind {
    pub const CHAT: u8 = 1;
    pub const STREAM_START: u8 = 2;
    pub const TOTAL_MSG: u8 = 3;
    pub const TOTAL_PROPOSE: u8 = 4;
    pub const TOTAL_FINAL: u8 = 5;
    pub const CAUSAL_MSG: u8 = 6;
    pub const TOTAL_QUERY: u8 = 7;
    pub const TOTAL_ANSWER: u8 = 8;
    pub const CAUSAL_START: u8 = 9;
}
