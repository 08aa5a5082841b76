//! `tidemark checkpoints DIR`: a job directory's checkpoints.

use std::io::Write;
use std::path::Path;

use super::args::CheckpointsArgs;
use super::detect::Kind;
use super::output::Format;
use super::verify::VerifyReport;
use super::CliError;

/// Runs `checkpoints`.
pub fn run(args: &CheckpointsArgs, _out: &mut dyn Write) -> Result<(), CliError> {
    Err(CliError::Message(format!(
        "{}: not yet",
        args.dir.display()
    )))
}

/// `inspect` of a checkpoint path.
pub fn inspect(path: &Path, _out: &mut dyn Write, _format: Format) -> Result<(), CliError> {
    Err(CliError::Message(format!("{}: not yet", path.display())))
}

/// `verify` of a checkpoint path.
pub fn verify_checkpoint(_r: &mut VerifyReport, path: &Path, _kind: Kind) -> Result<(), CliError> {
    Err(CliError::Message(format!("{}: not yet", path.display())))
}
