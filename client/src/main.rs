use clap::Parser;

fn main() -> std::process::ExitCode {
    client::run(client::Args::parse())
}
