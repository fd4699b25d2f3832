//! The chat server, `chatserver`: a socket loop around the sans-IO
//! [`orderings::Replica`], client sessions, and the cluster file; a tokio
//! runtime beside it for signals, metrics and host-name lookups.
//!
//! # Layout
//!
//! - [`cli`]: the command line; builds a [`server::ServerSetup`] and runs
//!   the server until SIGINT or SIGTERM.
//! - [`config`] (with `config_toml`): the cluster file, in the spec's line
//!   format or TOML.
//! - [`server`]: the event loop. One UDP socket for clients and peers, one
//!   thread that sleeps in `ppoll`; owns the replica, the sessions, fair
//!   admission, the `-ERR` limits and the send queue.
//! - [`control`]: what wakes the loop besides its socket (shutdown, scrapes,
//!   finished lookups), from the runtime's thread.
//! - `udp`: batched socket I/O (`recvmmsg`, `sendmmsg`) and the socket's
//!   ICMP error queue.
//! - [`command`]: a client datagram parsed into a [`command::ClientCommand`],
//!   or the [`command::CommandError`] that is its `-ERR` reply.
//! - [`session`]: client sessions (rooms, nicknames, expiry, the
//!   amplification cap); applies commands and fans deliveries out to a
//!   room's members.
//! - `admission`: each client's fair share of the replica's admission
//!   window.
//! - [`guard`]: rate limits of `-ERR` replies.
//! - [`metrics`]: `--metrics`, the Prometheus text format of the server's
//!   counters, served by hyper from snapshots the event loop publishes.
//! - `verbose`: the `-v` log format.
//!
//! # From socket to delivery
//!
//! `udp::RecvBatch` reads a batch of datagrams; `Server::handle` decides by
//! source, once per datagram:
//!
//! - from a peer's forwarding address, `Server::handle_peer` gives it to
//!   the replica (`Replica::handle_datagram`: link, then ordering);
//! - from a client, `Server::handle_client` parses it
//!   ([`command::ClientCommand::parse`]), checks a chat line against the
//!   client's fair share (`admission`), applies it to the client's session
//!   ([`session::Sessions::apply`]) and sends the reply or posts the line
//!   to the replica (`Replica::post`);
//! - anything else is dropped and counted.
//!
//! Then `Server::flush` queues what the replica sends to peers
//! (`Replica::poll_transmit`) and what it has ordered
//! (`Replica::poll_delivery`), fanned out to the room's local members
//! ([`session::Sessions::deliver`], within their caps), and `udp::SendQueue`
//! writes it all in batches.

#![warn(unreachable_pub)]

mod admission;
pub mod cli;
pub mod command;
pub mod config;
pub mod config_toml;
pub mod control;
pub mod guard;
pub mod metrics;
mod peers;
pub mod server;
pub mod session;
pub mod stats;
mod udp;
pub use udp::grow_buffers;
mod verbose;

/// A map keyed by client address, room or message id, hashed with foldhash
/// under a per-process random seed: SipHash, the standard map's, was 15% of
/// a server's instructions per message, and a seeded hash still keeps a
/// client that picks its source addresses from aiming at one bucket.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;
/// The set of [`FastMap`].
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::quality::RandomState>;
