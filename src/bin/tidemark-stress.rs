//! `tidemark-stress`: the crash stress tool (see `tidemark_stress/mod.rs`).

mod tidemark_stress;

use std::process::ExitCode;

use clap::Parser;

use tidemark_stress::{Cli, Command, EXIT_USAGE};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    let code = match &cli.command {
        Command::Run(a) => tidemark_stress::run::run(a),
        Command::Crashtest(a) => tidemark_stress::crashtest::crashtest(a),
    };
    ExitCode::from(code)
}
