//! Test tools for the ordering strategies of [`orderings`]: nothing here runs
//! in a server, so the server never links it (nor its serde dependency).
//!
//! Layout:
//! - [`check`]: the delivery-log checker. A [`check::History`] of what each
//!   room member sent and received, checked against [`check::Properties`]
//!   (exactly-once, FIFO, causal, total) into a [`check::Report`].
//! - [`sim`]: the deterministic simulator. N replicas of a registered
//!   strategy over a seeded virtual network, with optional crash and
//!   restart; [`sim::run`] checks the deliveries with [`check`].
//! - [`SimRng`] (module `rng`): the seeded generator behind both, so that a
//!   seed reproduces a run exactly.
//!
//! Users: the simulator tests (`tests/sim.rs`, the root `tests/`), and the
//! launcher's `stress` and `bench` (which check the real cluster's delivery
//! logs) and its fault-injecting proxy (which draws its faults from
//! [`SimRng`]).

pub mod check;
mod rng;
pub mod sim;

pub use rng::SimRng;
