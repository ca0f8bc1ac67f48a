//! The `picket` command: the CLI of [`picket::cli`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    picket::cli::main(picket::cli::Cli::parse())
}
