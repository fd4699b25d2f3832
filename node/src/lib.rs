//! The chat server: configuration, client sessions, and the tokio runtime
//! around the sans-IO [`orderings::replica::Replica`].

pub mod admission;
pub mod cli;
pub mod config;
pub mod config_toml;
pub mod guard;
pub mod server;
pub mod session;
pub mod stats;
pub mod udp;
pub mod verbose;
