//! `launcher`: bring up and supervise a cluster, inject faults, stress it.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = launcher::Cli::parse();
    launcher::init_tracing();
    match launcher::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("launcher: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
