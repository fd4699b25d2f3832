//! The strategy registry, built with `inventory`: every strategy submits a
//! [`StrategySpec`], in this crate or in any crate linked into the binary.
//!
//! `inventory` collects submissions at link time: a plugin crate the binary
//! never references may be dropped by the linker. A plugin crate should export
//! a function (for example `pub fn link() {}`) that the binary calls once;
//! see `examples/` and the README.

use crate::{Ordering, StrategyContext};
use std::fmt;

/// What a strategy promises; the simulator and the stress tool check exactly
/// these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Guarantees {
    /// Messages of one sender in one room reach every member in send order.
    pub fifo: bool,
    /// All members of a room see the room's messages in one identical order.
    pub total: bool,
    /// If a member saw `a` before it sent `b`, every member sees `a` before `b`.
    pub causal: bool,
}

impl Guarantees {
    /// No ordering at all.
    pub const NONE: Guarantees = Guarantees {
        fifo: false,
        total: false,
        causal: false,
    };

    /// Names of the guarantees, for help texts and reports.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.fifo {
            v.push("fifo");
        }
        if self.causal {
            v.push("causal");
        }
        if self.total {
            v.push("total");
        }
        v
    }
}

impl fmt::Display for Guarantees {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.names();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join("+"))
        }
    }
}

/// A registered strategy.
pub struct StrategySpec {
    /// The name given to `chatserver -o NAME`.
    pub name: &'static str,
    /// One line for `--help`.
    pub summary: &'static str,
    /// What the strategy promises (checked by the simulator and `stress`).
    pub guarantees: Guarantees,
    /// Builds one server's instance.
    pub build: fn(&StrategyContext) -> Box<dyn Ordering>,
}

impl fmt::Debug for StrategySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StrategySpec")
            .field("name", &self.name)
            .field("guarantees", &self.guarantees)
            .finish()
    }
}

inventory::collect!(StrategySpec);

/// Every registered strategy, sorted by name.
pub fn registered() -> Vec<&'static StrategySpec> {
    let mut v: Vec<&'static StrategySpec> = inventory::iter::<StrategySpec>.into_iter().collect();
    v.sort_by_key(|s| s.name);
    v
}

/// A name that no registered strategy has.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown ordering mode '{name}' (known: {})", known.join(", "))]
pub struct UnknownStrategy {
    /// The name asked for.
    pub name: String,
    /// The registered names.
    pub known: Vec<&'static str>,
}

/// Finds a strategy by name.
pub fn lookup(name: &str) -> Result<&'static StrategySpec, UnknownStrategy> {
    let all = registered();
    // Mode names are case-insensitive (`-o Total`): the exact name first,
    // then one that differs only in ASCII case.
    all.iter()
        .find(|s| s.name == name)
        .or_else(|| all.iter().find(|s| s.name.eq_ignore_ascii_case(name)))
        .copied()
        .ok_or_else(|| UnknownStrategy {
            name: name.to_string(),
            known: all.iter().map(|s| s.name).collect(),
        })
}

/// Names registered more than once (a registry bug; tests assert it is empty).
pub fn duplicate_names() -> Vec<&'static str> {
    let all = registered();
    let mut dups: Vec<&'static str> = all
        .windows(2)
        .filter(|w| w[0].name == w[1].name)
        .map(|w| w[0].name)
        .collect();
    dups.dedup();
    dups
}

/// A `--help` paragraph listing the modes.
pub fn help_text() -> String {
    let mut s = String::from("Ordering modes:\n");
    for spec in registered() {
        s.push_str(&format!(
            "  {:<12} {} [guarantees: {}]\n",
            spec.name, spec.summary, spec.guarantees
        ));
    }
    s
}
