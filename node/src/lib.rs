//! The chat server: configuration, client sessions, and the tokio runtime
//! around the sans-IO [`orderings::replica::Replica`].

pub mod config;
pub mod config_toml;
