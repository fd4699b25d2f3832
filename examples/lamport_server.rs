//! `lamport_server`: the `chatserver` program with one more ordering mode,
//! `lamport` (Lamport-clock total order, see `lamport/mod.rs`), defined
//! outside the `orderings` crate and registered through `inventory`.
//!
//! ```text
//! cargo build --example lamport_server
//! target/debug/examples/lamport_server servers.txt 1 -o lamport
//! ```
//!
//! Everything else (arguments, `--help`, the built-in modes) is
//! `node::cli::main()`, the whole `chatserver`.

use std::process::ExitCode;

mod lamport;

fn main() -> ExitCode {
    // The link guard (see `lamport::link`): with the strategy in its own
    // crate, this call is what makes the linker keep its registration.
    let name = lamport::link();
    // And the check that it worked: an unregistered strategy would otherwise
    // surface only as "unknown ordering mode" for whoever runs `-o lamport`.
    if orderings::lookup(name).is_err() {
        eprintln!(
            "lamport_server: strategy '{name}' is not registered (its inventory::submit! was not linked in); \
             registered: {}",
            orderings::registered()
                .iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
        return ExitCode::from(70); // EX_SOFTWARE
    }
    node::cli::main()
}
