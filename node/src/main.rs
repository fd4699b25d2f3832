//! `chatserver CONFIG INDEX [-o MODE] [-v]`

fn main() -> std::process::ExitCode {
    node::cli::main()
}
