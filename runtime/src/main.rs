//! The `picket` command: the CLI of [`picket::cli`].

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // `run --config FILE`: the file's options become flags before parsing (config_file.rs).
    let args = match picket::config_file::expand(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(picket::cli::EXIT_UNUSABLE);
        }
    };
    picket::cli::main(picket::cli::Cli::parse_from(args))
}
