//! The built-in strategies. Each registers itself with `inventory`.

pub mod fifo;
pub mod total;
pub mod unordered;
