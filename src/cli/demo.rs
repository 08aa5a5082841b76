//! `tidemark demo`.

use std::io::Write;

use super::args::DemoArgs;
use super::CliError;

/// Runs `demo`.
pub fn run(args: &DemoArgs, _out: &mut dyn Write) -> Result<(), CliError> {
    Err(CliError::Message(format!(
        "{}: not yet",
        args.dir.display()
    )))
}
