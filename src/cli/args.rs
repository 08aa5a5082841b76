//! The command line grammar: which commands exist, their arguments and options, and the
//! parser that turns `argv` into a typed [`Cli`].
//!
//! clap derives the parser, `--help` and `--version` from the types below, so the help
//! cannot disagree with what is parsed: a command's doc comment is its help, a field's doc
//! comment is its option's help. Adding a command means adding a variant to [`Command`]
//! with its args struct, and one arm in [`super::run()`].

use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use super::output::{parse_hex, unescape_bytes};
use super::CliError;

/// The name the tool is invoked as, in usage lines.
pub const BIN: &str = "tidemark";

/// Longest `--seconds` the demo accepts (one day).
pub const DEMO_MAX_SECONDS: u64 = 24 * 60 * 60;

/// A parsed command line.
///
/// Build it with [`parse`] rather than with clap's [`Parser`] methods: [`parse`] also
/// decodes the KEY of `get`, which depends on `--hex`.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = BIN,
    version,
    about = "inspect, verify and query tidemark stores and checkpoints",
    long_about = None,
    propagate_version = true,
    disable_help_subcommand = true,
    args_override_self = true
)]
pub struct Cli {
    /// Log to stderr: -v info, -vv debug, -vvv trace (RUST_LOG overrides)
    // Listed after a command's own options and before --help and --version (clap's 999).
    #[arg(short, long, action = ArgAction::Count, global = true, display_order = 998)]
    pub verbose: u8,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// What the command line asks for. Each variant's doc comment is that command's `--help`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Show what a store file or directory, or a checkpoint, holds
    ///
    /// The format is recognized from the file itself (SST footer magic, log header record
    /// kind, _metadata magic); the file name is only a hint. Accepts an SST, a WAL segment,
    /// a MANIFEST, CURRENT, a checkpoint _metadata, a store directory, a chk-N directory or
    /// a checkpoint job directory. Keys print with printable ASCII as is, a backslash as \\
    /// and every other byte as \xNN.
    #[command(verbatim_doc_comment)]
    Inspect(InspectArgs),
    /// Check every checksum of a checkpoint, store directory, SST, WAL or manifest
    ///
    /// A checkpoint (chk-N, its _metadata, or a job directory, meaning its latest
    /// checkpoint): every referenced file's size and crc32c. An SST: every block crc and
    /// the whole-file crc. A WAL or manifest: every record. A store directory: CURRENT, the
    /// manifest, every WAL, and every table the manifest lists (size, blocks, whole-file
    /// crc). Each problem is printed on its own line naming its path; the exit status is 1
    /// if there is any.
    #[command(verbatim_doc_comment)]
    Verify(VerifyArgs),
    /// List a job directory's checkpoints, newest first, with sizes and orphans
    ///
    /// For each retained checkpoint: id, status, completion time, bytes placed by it (files
    /// it added to shared/ or wrote privately), its full size, files placed and referenced,
    /// and its kind. Then the min/avg/max of full and placed sizes, and files in shared/
    /// that no retained checkpoint references (orphans).
    #[command(verbatim_doc_comment)]
    Checkpoints(CheckpointsArgs),
    /// Read one key from a retained checkpoint, without restoring it
    ///
    /// Opens the checkpoint's SST files where they lie (newest level-0 table first, then
    /// deeper levels, as the store's manifest snapshot in the checkpoint lays them out) and
    /// prints the newest value of KEY. KEY may use the escapes inspect prints (\xNN, \\).
    /// Exits 1 when the key is absent.
    #[command(verbatim_doc_comment)]
    Get(GetArgs),
    /// Write a click stream, checkpoint it every second, crash, restore and verify
    ///
    /// Counts clicks per page into a store, takes an incremental checkpoint every second,
    /// then drops the store without a clean close, deletes its working directory, restores
    /// the latest checkpoint into a fresh one and checks that every count matches what had
    /// been written up to that checkpoint. Leaves the checkpoints behind and prints the
    /// commands to look at them.
    #[command(verbatim_doc_comment)]
    Demo(DemoArgs),
    /// Run a built-in job with checkpoints: `run wordcount`
    ///
    /// The keyed word count over the lines of a file or of every file in a directory, into
    /// an exactly-once file sink: each updated count is a line `word count` in a committed
    /// file of --output. Configured with Flink's keys: --config FILE (flink-conf.yaml or
    /// config.yaml), then the options below, then -D key=value. Resume with -s PATH (a
    /// chk-N/_metadata, a chk-N directory, a savepoint or a job directory) or -s latest
    /// (the newest job directory under --checkpoint-dir); the job id is kept. SIGINT or
    /// SIGTERM stops the job and keeps its checkpoints.
    #[command(verbatim_doc_comment)]
    Run(RunArgs),
}

/// Arguments of `tidemark run`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct RunArgs {
    /// The job: wordcount
    #[arg(value_name = "JOB", value_parser = ["wordcount"])]
    pub job: String,
    /// Input file or directory
    #[arg(long, value_name = "PATH")]
    pub input: PathBuf,
    /// Output directory (committed files part-*)
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    /// Checkpoint directory (state.checkpoints.dir): checkpoints go to DIR/JOB-ID/chk-N
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: PathBuf,
    /// State backend (state.backend): memory, filesystem or lsm [default: lsm]
    #[arg(long, value_name = "NAME")]
    pub backend: Option<String>,
    /// Parallelism (parallelism.default) [default: 1]
    #[arg(long, value_name = "N")]
    pub parallelism: Option<u32>,
    /// Checkpoint interval in ms (execution.checkpointing.interval) [default: 1000]
    #[arg(long, value_name = "N")]
    pub interval_ms: Option<u64>,
    /// Configuration file (flink-conf.yaml's `key: value` lines, or config.yaml)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A configuration setting, overriding the file
    #[arg(short = 'D', value_name = "KEY=VALUE")]
    pub dynamic: Vec<String>,
    /// Resume from a checkpoint or savepoint, or `latest`
    #[arg(short = 's', long = "from-savepoint", value_name = "PATH|latest")]
    pub from: Option<PathBuf>,
    /// Restore even if the checkpoint holds state of operators the job lacks
    #[arg(long)]
    pub allow_non_restored_state: bool,
    /// claim or no-claim (execution.state-recovery.claim-mode) [default: no-claim]
    #[arg(long, value_name = "MODE")]
    pub restore_mode: Option<String>,
    /// On SIGINT/SIGTERM take a canonical savepoint (into state.savepoints.dir, default
    /// CHECKPOINT_DIR/savepoints) before stopping
    #[arg(long)]
    pub savepoint_on_stop: bool,
    /// Read at most N lines per second per source subtask (a throttle, for trying out
    /// checkpoints, kills and resumes on a small input) [default: no limit]
    #[arg(long, value_name = "N")]
    pub rate: Option<u64>,
}

/// Arguments of `tidemark inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct InspectArgs {
    /// File or directory to inspect
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// Also print every entry (SST) or operation (WAL)
    #[arg(long)]
    pub entries: bool,
    /// Print the result as one JSON document
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `tidemark verify`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct VerifyArgs {
    /// What to verify
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// Print the result as one JSON document
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `tidemark checkpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct CheckpointsArgs {
    /// Checkpoint job directory (CHECKPOINTS_DIR/JOB_ID)
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Print the result as one JSON document
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `tidemark get`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct GetArgs {
    /// chk-N directory, its _metadata, or a job directory (latest checkpoint)
    #[arg(value_name = "CHECKPOINT")]
    pub checkpoint: PathBuf,
    /// The key to read (bytes that are not printable ASCII as \xNN, or all of it in hex with --hex)
    #[arg(id = "key", value_name = "KEY")]
    key_text: OsString,
    /// The key's bytes: KEY with its escapes or hex decoded by [`parse`].
    #[arg(skip)]
    pub key: Vec<u8>,
    /// KEY is given in hex, and the value is printed in hex
    #[arg(long)]
    pub hex: bool,
    /// Print the result as one JSON document
    #[arg(long)]
    pub json: bool,
}

impl GetArgs {
    /// Decodes KEY: hex with `--hex`, else the escapes `inspect` prints.
    fn decode_key(&mut self) -> Result<(), String> {
        let Some(text) = self.key_text.to_str() else {
            use std::os::unix::ffi::OsStrExt;
            let escaped: String = self
                .key_text
                .as_bytes()
                .iter()
                .map(|&b| match b {
                    b'\\' => "\\\\".to_string(),
                    0x20..=0x7e => (b as char).to_string(),
                    _ => format!("\\x{b:02x}"),
                })
                .collect();
            return Err(format!(
                "invalid value for '<KEY>': it is not valid UTF-8; write a key's bytes as \
                 `inspect` prints them, with \\xNN for each byte that is not printable ASCII \
                 ('{escaped}' here), or give the whole key in hex with --hex"
            ));
        };
        let decoded = if self.hex {
            parse_hex(text)
        } else {
            unescape_bytes(text)
        };
        self.key = decoded.map_err(|e| format!("invalid value for '<KEY>': {e}"))?;
        Ok(())
    }
}

/// Arguments of `tidemark demo`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct DemoArgs {
    /// Where to put the store and the checkpoints
    #[arg(long, value_name = "DIR", default_value = "./tidemark-demo")]
    pub dir: PathBuf,
    /// How long to write, in seconds
    #[arg(
        long,
        value_name = "N",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..=DEMO_MAX_SECONDS)
    )]
    pub seconds: u64,
}

/// The grammar, as clap sees it.
fn command() -> clap::Command {
    // `tidemark inspect --version` names the tool, not `tidemark-inspect`.
    Cli::command().mut_subcommands(|sub| sub.display_name(BIN))
}

/// Parses the arguments after the program name.
///
/// A command line that does not parse, `--help` and `--version` all come back as
/// [`CliError::Usage`], which carries clap's message and exit status.
pub fn parse<I, S>(args: I) -> Result<Cli, CliError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let argv = std::iter::once(OsString::from(BIN)).chain(args.into_iter().map(Into::into));
    let mut cmd = command();
    let matches = cmd
        .try_get_matches_from_mut(argv)
        .map_err(CliError::Usage)?;
    let mut cli =
        Cli::from_arg_matches(&matches).map_err(|e| CliError::Usage(e.format(&mut cmd)))?;
    if let Command::Get(get) = &mut cli.command {
        get.decode_key().map_err(|msg| {
            let error = match cmd.find_subcommand_mut("get") {
                Some(get_cmd) => get_cmd.error(ErrorKind::InvalidValue, msg),
                None => cmd.error(ErrorKind::InvalidValue, msg),
            };
            CliError::Usage(error)
        })?;
    }
    Ok(cli)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Result<Command, CliError> {
        parse(args.iter().copied()).map(|c| c.command)
    }

    fn usage_error(args: &[&str]) -> clap::Error {
        match parse(args.iter().copied()) {
            Err(CliError::Usage(e)) => e,
            other => panic!("{args:?}: expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn inspect_takes_a_path_and_flags_in_any_order() {
        let c = cmd(&["inspect", "--json", "x.sst", "--entries"]).unwrap();
        assert_eq!(
            c,
            Command::Inspect(InspectArgs {
                path: "x.sst".into(),
                entries: true,
                json: true
            })
        );
    }

    #[test]
    fn verbose_is_global_and_counts() {
        let verbose = |a: &[&str]| parse(a.iter().copied()).unwrap().verbose;
        assert_eq!(verbose(&["verify", "d"]), 0);
        assert_eq!(verbose(&["-v", "verify", "d"]), 1);
        assert_eq!(verbose(&["verify", "-vv", "d"]), 2);
        assert_eq!(verbose(&["verify", "-v", "d", "--verbose", "-v"]), 3);
        assert!(matches!(
            parse(["-vv", "verify", "d"]).unwrap().command,
            Command::Verify(_)
        ));
    }

    #[test]
    fn a_repeated_option_keeps_its_last_value() {
        let Command::Demo(d) = cmd(&["demo", "--dir", "a", "--dir", "b"]).unwrap() else {
            panic!()
        };
        assert_eq!(d.dir, PathBuf::from("b"));
        assert!(matches!(
            cmd(&["verify", "--json", "--json", "d"]),
            Ok(Command::Verify(VerifyArgs { json: true, .. }))
        ));
    }

    #[test]
    fn help_is_available_on_every_command() {
        let mut top = command();
        top.build();
        for sub in top.get_subcommands() {
            let name = sub.get_name();
            let e = usage_error(&[name, "--help"]);
            assert_eq!(e.kind(), ErrorKind::DisplayHelp);
            assert_eq!(e.exit_code(), 0);
            let text = e.to_string();
            assert!(text.contains(&format!("Usage: tidemark {name}")), "{text}");
            for arg in sub.get_arguments() {
                if let Some(long) = arg.get_long() {
                    assert!(text.contains(&format!("--{long}")), "{text}");
                }
            }
            assert!(
                sub.get_about().is_some(),
                "{name} has no one-line description"
            );
        }
        let e = usage_error(&["-h"]);
        assert_eq!(e.kind(), ErrorKind::DisplayHelp);
        let text = e.to_string();
        for sub in top.get_subcommands() {
            assert!(text.contains(sub.get_name()), "{text}");
        }
        let e = usage_error(&["--version"]);
        assert_eq!(e.kind(), ErrorKind::DisplayVersion);
        assert_eq!(e.exit_code(), 0);
        let version = format!("tidemark {}\n", env!("CARGO_PKG_VERSION"));
        assert_eq!(e.to_string(), version);
        assert_eq!(usage_error(&["inspect", "--version"]).to_string(), version);
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        let msg = |a: &[&str]| {
            let e = usage_error(a);
            assert_eq!(e.exit_code(), 2, "{a:?}");
            e.to_string()
        };
        assert!(msg(&[]).contains("Usage: tidemark"));
        assert!(msg(&["frobnicate"]).contains("'frobnicate'"));
        assert!(msg(&["inspect"]).contains("<PATH>"));
        assert!(msg(&["inspect", "a", "b"]).contains("'b'"));
        assert!(msg(&["inspect", "--nope", "a"]).contains("'--nope'"));
        assert!(msg(&["demo", "--seconds", "0"]).contains("--seconds"));
        assert!(msg(&["demo", "--seconds", "86401"]).contains("--seconds"));
        assert!(msg(&["demo", "--seconds"]).contains("--seconds"));
        let hex = msg(&["get", "c", "zz", "--hex"]);
        assert!(hex.contains("KEY"), "{hex}");
        assert!(hex.contains("Usage: tidemark get"), "{hex}");
        assert!(msg(&["get", "c", "\\x4"]).contains("KEY"));
    }

    #[test]
    fn a_key_that_is_not_utf8_points_at_escapes_and_hex() {
        use std::os::unix::ffi::OsStrExt;
        let key = std::ffi::OsStr::from_bytes(b"a\xff\\b").to_os_string();
        let e = parse([OsString::from("get"), OsString::from("chk-1"), key]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let m = e.to_string();
        assert!(m.contains("'a\\xff\\\\b'"), "{m}");
        assert!(m.contains("--hex") && m.contains("not valid UTF-8"), "{m}");
    }

    #[test]
    fn get_decodes_escaped_and_hex_keys() {
        let Command::Get(g) = cmd(&["get", "chk-1", "a\\x00b"]).unwrap() else {
            panic!()
        };
        assert_eq!(g.key, b"a\x00b");
        let Command::Get(g) = cmd(&["get", "chk-1", "--hex", "61ff"]).unwrap() else {
            panic!()
        };
        assert_eq!(g.key, b"a\xff");
        assert!(g.hex);
    }

    #[test]
    fn demo_defaults_and_values() {
        let Command::Demo(d) = cmd(&["demo"]).unwrap() else {
            panic!()
        };
        assert_eq!(d.seconds, 5);
        assert_eq!(d.dir, PathBuf::from("./tidemark-demo"));
        let Command::Demo(d) = cmd(&["demo", "--dir=/tmp/x", "--seconds", "2"]).unwrap() else {
            panic!()
        };
        assert_eq!((d.dir, d.seconds), (PathBuf::from("/tmp/x"), 2));
        let Command::Demo(d) = cmd(&["demo", "--seconds", "86400"]).unwrap() else {
            panic!()
        };
        assert_eq!(d.seconds, DEMO_MAX_SECONDS);
    }

    #[test]
    fn double_dash_ends_options() {
        let Command::Get(g) = cmd(&["get", "--", "chk-1", "--json"]).unwrap() else {
            panic!()
        };
        assert_eq!(g.key, b"--json");
        assert!(!g.json);
    }
}
