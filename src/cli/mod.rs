//! The `tidemark` command line: inspection, verification, reads from checkpoints, and the
//! demo. The binary (`src/bin/tidemark.rs`) only parses, calls [`run()`] and maps the result
//! to an exit status; everything else lives here so that tests can call it.
//!
//! One module per command; [`output`] decides text vs JSON for all of them, [`detect`]
//! recognizes what a path holds. The commands only read what they are pointed at (the demo
//! writes only below its own directory), and none of them takes a store's lock.
//!
//! Exit statuses: 0 success, 1 failure (including problems found by `verify` and a key
//! absent for `get`), 2 a usage error (clap's), 70 an internal error.

pub mod args;
pub mod checkpoints;
pub mod demo;
pub mod detect;
pub mod get;
pub mod inspect;
pub mod job_stats;
pub mod output;
pub mod progress;
pub mod run;
pub mod signals;
pub mod store;
pub mod verify;

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use args::{parse, Cli, Command};

use crate::error::Error;

/// Exit status of a failed command.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status of a command line that does not parse (clap's own).
pub const EXIT_USAGE: u8 = 2;
/// Exit status after an internal error (a panic caught by the binary).
pub const EXIT_INTERNAL: u8 = 70;

/// Why a command failed. Its `Display` is the one line printed after `tidemark: `, except
/// for [`CliError::Usage`], which clap prints itself.
#[derive(Debug)]
pub enum CliError {
    /// The command line does not parse, or asks for `--help` or `--version`: clap's message
    /// (help and version on stdout, anything else on stderr) and its exit status.
    Usage(clap::Error),
    /// An operation on `path` failed.
    Failed {
        /// The path the command was working on.
        path: PathBuf,
        /// What failed.
        error: Error,
    },
    /// A failure described in full (the message names the path).
    Message(String),
    /// Problems were found and already printed, one per line.
    Problems {
        /// What was checked.
        path: PathBuf,
        /// How many problems.
        count: usize,
    },
    /// Writing the output failed (a closed pipe is not reported).
    Output(io::Error),
}

impl CliError {
    /// Wraps a library error met while working on `path`.
    pub fn at(path: impl AsRef<Path>, error: Error) -> CliError {
        CliError::Failed {
            path: path.as_ref().to_path_buf(),
            error,
        }
    }

    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(e) => u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE),
            _ => EXIT_FAILURE,
        }
    }

    /// True when the output went to a pipe that was closed: not worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }

    /// The message as exactly one line.
    pub fn one_line(&self) -> String {
        let s = self.to_string();
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(e) => write!(f, "{e}"),
            CliError::Message(m) => f.write_str(m),
            CliError::Failed { path, error } => {
                let msg = error.to_string();
                let shown = path.display().to_string();
                if msg.contains(&shown) {
                    f.write_str(&msg)
                } else {
                    write!(f, "{shown}: {msg}")
                }
            }
            CliError::Problems { path, count } => write!(
                f,
                "{}: {count} problem{} found",
                path.display(),
                if *count == 1 { "" } else { "s" }
            ),
            CliError::Output(e) => write!(f, "writing the output: {e}"),
        }
    }
}

impl std::error::Error for CliError {}

impl From<io::Error> for CliError {
    fn from(e: io::Error) -> Self {
        CliError::Output(e)
    }
}

/// Runs a parsed command line, writing its result to `out`.
pub fn run(cli: &Cli, out: &mut dyn Write) -> Result<(), CliError> {
    match &cli.command {
        Command::Inspect(a) => inspect::run(a, out),
        Command::Verify(a) => verify::run(a, out),
        Command::Checkpoints(a) => checkpoints::run(a, out),
        Command::Get(a) => get::run(a, out),
        Command::Demo(a) => demo::run(a, out),
        Command::Run(a) => run::run(a, out),
    }
}

/// Sends tracing logs to stderr: `RUST_LOG` when set, else by `-v` count (none: off, as
/// every command reports what matters in its output; 1: info, 2: debug, 3+: trace).
pub fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "off",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_message_names_the_path_once() {
        let e = CliError::at(
            "/x/000001.sst",
            Error::corruption("/x/000001.sst", 9, "bad"),
        );
        assert_eq!(e.to_string().matches("/x/000001.sst").count(), 1);
        let e = CliError::at("/x/dir", Error::InvalidArgument("no\nway".into()));
        assert_eq!(e.one_line(), "/x/dir: invalid argument: no way");
        assert_eq!(e.exit_code(), EXIT_FAILURE);
        let usage = parse(["frobnicate"]).unwrap_err();
        assert_eq!(usage.exit_code(), EXIT_USAGE);
        assert_eq!(parse(["--help"]).unwrap_err().exit_code(), 0);
    }
}
