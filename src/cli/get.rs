//! `tidemark get CHECKPOINT KEY`.

use std::io::Write;

use super::args::GetArgs;
use super::CliError;

/// Runs `get`.
pub fn run(args: &GetArgs, _out: &mut dyn Write) -> Result<(), CliError> {
    Err(CliError::Message(format!(
        "{}: not yet",
        args.checkpoint.display()
    )))
}
