//! The command line grammar: which commands exist, their arguments and options, the help
//! text, and the parser that turns `argv` into a typed [`Command`].
//!
//! Every command is described by one [`Spec`] (a table, not code), from which both the
//! parser and `--help` are derived, so that the two cannot disagree. Adding a command means
//! adding a spec, an args struct and one arm in [`parse`].

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::path::PathBuf;

use super::CliError;

/// The name the tool is invoked as, in usage lines.
pub const BIN: &str = "tidemark";

/// An option of a command (`--name`, maybe `-s`, maybe taking a value).
#[derive(Debug, Clone, Copy)]
pub struct Opt {
    /// Long name, without the dashes.
    pub long: &'static str,
    /// Short name, if any.
    pub short: Option<char>,
    /// Name of the value it takes (`DIR`), or `None` for a flag.
    pub value: Option<&'static str>,
    /// One line of help.
    pub help: &'static str,
}

/// A positional argument of a command.
#[derive(Debug, Clone, Copy)]
pub struct Positional {
    /// Name shown in usage (`PATH`).
    pub name: &'static str,
    /// One line of help.
    pub help: &'static str,
}

/// The grammar of one command.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The command's name (`inspect`).
    pub name: &'static str,
    /// One line saying what it does.
    pub about: &'static str,
    /// A longer description, shown by `--help` (may be empty).
    pub long_about: &'static str,
    /// Required positionals, in order.
    pub positionals: &'static [Positional],
    /// Options besides the global ones.
    pub opts: &'static [Opt],
}

const JSON: Opt = Opt {
    long: "json",
    short: None,
    value: None,
    help: "Print the result as one JSON document",
};

/// Options accepted before or after any command.
pub const GLOBAL_OPTS: &[Opt] = &[
    Opt {
        long: "verbose",
        short: Some('v'),
        value: None,
        help: "Log to stderr: -v info, -vv debug, -vvv trace (RUST_LOG overrides)",
    },
    Opt {
        long: "help",
        short: Some('h'),
        value: None,
        help: "Print help",
    },
    Opt {
        long: "version",
        short: Some('V'),
        value: None,
        help: "Print the version",
    },
];

/// `tidemark inspect`
pub const INSPECT: Spec = Spec {
    name: "inspect",
    about: "Show what a store file or directory, or a checkpoint, holds",
    long_about: "The format is recognized from the file itself (SST footer magic, log header \
record kind, _metadata magic); the file name is only a hint. Accepts an SST, a WAL segment, a \
MANIFEST, CURRENT, a checkpoint _metadata, a store directory, a chk-N directory or a \
checkpoint job directory. Keys print with printable ASCII as is, a backslash as \\\\ and every \
other byte as \\xNN.",
    positionals: &[Positional {
        name: "PATH",
        help: "File or directory to inspect",
    }],
    opts: &[
        Opt {
            long: "entries",
            short: None,
            value: None,
            help: "Also print every entry (SST) or operation (WAL)",
        },
        JSON,
    ],
};

/// `tidemark verify`
pub const VERIFY: Spec = Spec {
    name: "verify",
    about: "Check every checksum of a checkpoint, store directory, SST, WAL or manifest",
    long_about: "A checkpoint (chk-N, its _metadata, or a job directory, meaning its latest \
checkpoint): every referenced file's size and crc32c. An SST: every block crc and the whole-file \
crc. A WAL or manifest: every record. A store directory: CURRENT, the manifest, every WAL, and \
every table the manifest lists (size, blocks, whole-file crc). Each problem is printed on its \
own line naming its path; the exit status is 1 if there is any.",
    positionals: &[Positional {
        name: "PATH",
        help: "What to verify",
    }],
    opts: &[JSON],
};

/// `tidemark checkpoints`
pub const CHECKPOINTS: Spec = Spec {
    name: "checkpoints",
    about: "List a job directory's checkpoints, newest first, with sizes and orphans",
    long_about: "For each retained checkpoint: id, status, completion time, bytes placed by it \
(files it added to shared/ or wrote privately), its full size, files placed and referenced, and \
its kind. Then the min/avg/max of full and placed sizes, and files in shared/ that no retained \
checkpoint references (orphans).",
    positionals: &[Positional {
        name: "DIR",
        help: "Checkpoint job directory (<checkpoints-dir>/<job-id>)",
    }],
    opts: &[JSON],
};

/// `tidemark get`
pub const GET: Spec = Spec {
    name: "get",
    about: "Read one key from a retained checkpoint, without restoring it",
    long_about: "Opens the checkpoint's SST files where they lie (newest level-0 table first, \
then deeper levels, as the store's manifest snapshot in the checkpoint lays them out) and prints \
the newest value of KEY. KEY may use the escapes inspect prints (\\xNN, \\\\). Exits 1 when the \
key is absent.",
    positionals: &[
        Positional {
            name: "CHECKPOINT",
            help: "chk-N directory, its _metadata, or a job directory (latest checkpoint)",
        },
        Positional {
            name: "KEY",
            help: "The key to read",
        },
    ],
    opts: &[
        Opt {
            long: "hex",
            short: None,
            value: None,
            help: "KEY is given in hex, and the value is printed in hex",
        },
        JSON,
    ],
};

/// `tidemark demo`
pub const DEMO: Spec = Spec {
    name: "demo",
    about: "Write a click stream, checkpoint it every second, crash, restore and verify",
    long_about: "Counts clicks per page into a store, takes an incremental checkpoint every \
second, then drops the store without a clean close, deletes its working directory, restores \
the latest checkpoint into a fresh one and checks that every count matches what had been \
written up to that checkpoint. Leaves the checkpoints behind and prints the commands to look \
at them.",
    positionals: &[],
    opts: &[
        Opt {
            long: "dir",
            short: None,
            value: Some("DIR"),
            help: "Where to put the store and the checkpoints [default: ./tidemark-demo]",
        },
        Opt {
            long: "seconds",
            short: None,
            value: Some("N"),
            help: "How long to write, in seconds [default: 5]",
        },
    ],
};

/// Every command, in the order `--help` lists them.
pub const COMMANDS: &[Spec] = &[INSPECT, VERIFY, CHECKPOINTS, GET, DEMO];

/// Arguments of `tidemark inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectArgs {
    /// File or directory to inspect.
    pub path: PathBuf,
    /// Print every entry / operation.
    pub entries: bool,
    /// JSON output.
    pub json: bool,
}

/// Arguments of `tidemark verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyArgs {
    /// What to verify.
    pub path: PathBuf,
    /// JSON output.
    pub json: bool,
}

/// Arguments of `tidemark checkpoints`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointsArgs {
    /// The job directory.
    pub dir: PathBuf,
    /// JSON output.
    pub json: bool,
}

/// Arguments of `tidemark get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetArgs {
    /// The checkpoint (chk-N, its `_metadata`, or a job directory).
    pub checkpoint: PathBuf,
    /// The key's bytes (escapes or hex already decoded).
    pub key: Vec<u8>,
    /// Print the value in hex.
    pub hex: bool,
    /// JSON output.
    pub json: bool,
}

/// Arguments of `tidemark demo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoArgs {
    /// Where the store and the checkpoints go.
    pub dir: PathBuf,
    /// How long to write.
    pub seconds: u64,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `inspect`
    Inspect(InspectArgs),
    /// `verify`
    Verify(VerifyArgs),
    /// `checkpoints`
    Checkpoints(CheckpointsArgs),
    /// `get`
    Get(GetArgs),
    /// `demo`
    Demo(DemoArgs),
    /// `--help` (of the tool or of a command): the text to print on stdout.
    Help(String),
    /// `--version`
    Version,
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cli {
    /// How many times `-v` was given.
    pub verbose: u8,
    /// The command.
    pub command: Command,
}

/// Longest `--seconds` the demo accepts (one day).
pub const DEMO_MAX_SECONDS: u64 = 24 * 60 * 60;

/// Parses the arguments after the program name.
pub fn parse<I, S>(args: I) -> Result<Cli, CliError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut verbose: u8 = 0;
    let mut help = false;
    let mut version = false;
    let mut spec: Option<&'static Spec> = None;
    let mut values: Vec<(&'static str, OsString)> = Vec::new();
    let mut flags: Vec<&'static str> = Vec::new();
    let mut positionals: Vec<OsString> = Vec::new();
    let mut only_positionals = false;
    let mut it = args.into_iter();

    while let Some(arg) = it.next() {
        let text = arg.to_str();
        if only_positionals || text.is_none_or(|t| !t.starts_with('-') || t == "-") {
            if spec.is_none() {
                let name = arg.to_string_lossy();
                spec = Some(find_command(&name).ok_or_else(|| {
                    CliError::Usage(format!(
                        "unknown command '{name}' (commands: {}; see '{BIN} --help')",
                        COMMANDS
                            .iter()
                            .map(|c| c.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?);
            } else {
                positionals.push(arg);
            }
            continue;
        }
        let Some(text) = text else { continue };
        if text == "--" {
            only_positionals = true;
            continue;
        }
        // One option, or a bundle of short flags (`-vv`).
        let mut found: Vec<(Opt, Option<String>)> = Vec::new();
        if let Some(long) = text.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let opt = lookup(spec, |o| o.long == name).ok_or_else(|| unknown_opt(text, spec))?;
            found.push((opt, inline));
        } else {
            let shorts: Vec<char> = text.chars().skip(1).collect();
            for c in shorts {
                let opt = lookup(spec, |o| o.short == Some(c))
                    .ok_or_else(|| unknown_opt(&format!("-{c}"), spec))?;
                if opt.value.is_some() {
                    return Err(CliError::Usage(format!(
                        "option -{c} takes a value: write --{} {}",
                        opt.long,
                        opt.value.unwrap_or("VALUE")
                    )));
                }
                found.push((opt, None));
            }
        }
        for (opt, inline) in found {
            match (opt.value, inline) {
                (None, Some(_)) => {
                    return Err(CliError::Usage(format!(
                        "option --{} takes no value",
                        opt.long
                    )))
                }
                (None, None) => match opt.long {
                    "verbose" => verbose = verbose.saturating_add(1),
                    "help" => help = true,
                    "version" => version = true,
                    other => flags.push(other),
                },
                (Some(_), Some(v)) => values.push((opt.long, OsString::from(v))),
                (Some(name), None) => {
                    let v = it.next().ok_or_else(|| {
                        CliError::Usage(format!("option --{} needs a value {name}", opt.long))
                    })?;
                    values.push((opt.long, v));
                }
            }
        }
    }

    if help {
        return Ok(Cli {
            verbose,
            command: Command::Help(match spec {
                Some(s) => command_help(s),
                None => main_help(),
            }),
        });
    }
    if version {
        return Ok(Cli {
            verbose,
            command: Command::Version,
        });
    }
    let Some(spec) = spec else {
        return Err(CliError::Usage(format!(
            "no command given (commands: {}; see '{BIN} --help')",
            COMMANDS
                .iter()
                .map(|c| c.name)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    if positionals.len() != spec.positionals.len() {
        let expected: Vec<&str> = spec.positionals.iter().map(|p| p.name).collect();
        let what = if positionals.len() < spec.positionals.len() {
            let missing: Vec<&str> = expected.iter().skip(positionals.len()).copied().collect();
            format!("missing {}", missing.join(" "))
        } else {
            format!(
                "unexpected argument '{}'",
                positionals
                    .get(spec.positionals.len())
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default()
            )
        };
        return Err(CliError::Usage(format!(
            "{what} for '{BIN} {}' (usage: {}; see '{BIN} {} --help')",
            spec.name,
            usage_line(spec),
            spec.name
        )));
    }
    let flag = |name: &str| flags.contains(&name);
    let value = |name: &str| {
        values
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    };
    let mut pos = positionals.into_iter();
    let mut next_pos = || pos.next().unwrap_or_default();
    let command = match spec.name {
        "inspect" => Command::Inspect(InspectArgs {
            path: PathBuf::from(next_pos()),
            entries: flag("entries"),
            json: flag("json"),
        }),
        "verify" => Command::Verify(VerifyArgs {
            path: PathBuf::from(next_pos()),
            json: flag("json"),
        }),
        "checkpoints" => Command::Checkpoints(CheckpointsArgs {
            dir: PathBuf::from(next_pos()),
            json: flag("json"),
        }),
        "get" => {
            let checkpoint = PathBuf::from(next_pos());
            let key_arg = next_pos();
            let hex = flag("hex");
            let key = parse_key(&key_arg, hex)?;
            Command::Get(GetArgs {
                checkpoint,
                key,
                hex,
                json: flag("json"),
            })
        }
        "demo" => {
            let seconds = match value("seconds") {
                None => 5,
                Some(v) => parse_seconds(&v)?,
            };
            Command::Demo(DemoArgs {
                dir: value("dir")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("./tidemark-demo")),
                seconds,
            })
        }
        other => return Err(CliError::Usage(format!("unknown command '{other}'"))),
    };
    Ok(Cli { verbose, command })
}

fn find_command(name: &str) -> Option<&'static Spec> {
    COMMANDS.iter().find(|c| c.name == name)
}

fn lookup(spec: Option<&'static Spec>, pred: impl Fn(&Opt) -> bool) -> Option<Opt> {
    let own = spec.map(|s| s.opts).unwrap_or_default();
    GLOBAL_OPTS.iter().chain(own).find(|o| pred(o)).copied()
}

fn unknown_opt(text: &str, spec: Option<&'static Spec>) -> CliError {
    match spec {
        Some(s) => CliError::Usage(format!(
            "unknown option '{text}' for '{BIN} {}' (see '{BIN} {} --help')",
            s.name, s.name
        )),
        None => CliError::Usage(format!("unknown option '{text}' (see '{BIN} --help')")),
    }
}

fn parse_key(arg: &OsStr, hex: bool) -> Result<Vec<u8>, CliError> {
    let text = arg.to_str().ok_or_else(|| {
        CliError::Usage("KEY is not valid UTF-8; give it with \\xNN escapes or --hex".into())
    })?;
    if hex {
        super::output::parse_hex(text).map_err(|e| CliError::Usage(format!("KEY: {e}")))
    } else {
        super::output::unescape_bytes(text).map_err(|e| CliError::Usage(format!("KEY: {e}")))
    }
}

fn parse_seconds(v: &OsStr) -> Result<u64, CliError> {
    let text = v.to_string_lossy();
    match text.parse::<u64>() {
        Ok(n) if (1..=DEMO_MAX_SECONDS).contains(&n) => Ok(n),
        _ => Err(CliError::Usage(format!(
            "--seconds {text:?}: expected a whole number of seconds in 1..={DEMO_MAX_SECONDS}"
        ))),
    }
}

fn usage_line(spec: &Spec) -> String {
    let mut s = format!("{BIN} {} [OPTIONS]", spec.name);
    for p in spec.positionals {
        s.push(' ');
        s.push_str(p.name);
    }
    s
}

fn opt_rows(opts: &[Opt]) -> Vec<(String, &'static str)> {
    opts.iter()
        .map(|o| {
            let short = o
                .short
                .map(|c| format!("-{c}, "))
                .unwrap_or_else(|| "    ".into());
            let value = o.value.map(|v| format!(" {v}")).unwrap_or_default();
            (format!("{short}--{}{value}", o.long), o.help)
        })
        .collect()
}

fn push_rows(out: &mut String, rows: &[(String, &str)]) {
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    for (left, help) in rows {
        let _ = writeln!(out, "  {left:width$}  {help}");
    }
}

/// Word-wraps `text` at `width` columns.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line_len = 0;
    for word in text.split_whitespace() {
        if line_len > 0 && line_len + 1 + word.len() > width {
            out.push('\n');
            line_len = 0;
        } else if line_len > 0 {
            out.push(' ');
            line_len += 1;
        }
        out.push_str(word);
        line_len += word.len();
    }
    out
}

/// The help of one command.
pub fn command_help(spec: &Spec) -> String {
    let mut s = format!("{}\n", spec.about);
    if !spec.long_about.is_empty() {
        let _ = writeln!(s, "\n{}", wrap(spec.long_about, 88));
    }
    let _ = writeln!(s, "\nUsage: {}", usage_line(spec));
    if !spec.positionals.is_empty() {
        s.push_str("\nArguments:\n");
        let rows: Vec<(String, &str)> = spec
            .positionals
            .iter()
            .map(|p| (p.name.to_string(), p.help))
            .collect();
        push_rows(&mut s, &rows);
    }
    s.push_str("\nOptions:\n");
    let mut rows = opt_rows(spec.opts);
    rows.extend(opt_rows(GLOBAL_OPTS));
    push_rows(&mut s, &rows);
    s
}

/// The help of the tool.
pub fn main_help() -> String {
    let mut s = String::from(
        "tidemark: inspect, verify and query tidemark stores and checkpoints\n\n\
         Usage: tidemark [OPTIONS] <COMMAND> [ARGS]\n\nCommands:\n",
    );
    let rows: Vec<(String, &str)> = COMMANDS
        .iter()
        .map(|c| (c.name.to_string(), c.about))
        .collect();
    push_rows(&mut s, &rows);
    s.push_str("\nOptions:\n");
    push_rows(&mut s, &opt_rows(GLOBAL_OPTS));
    let _ = writeln!(
        s,
        "\nSee '{BIN} <COMMAND> --help' for the arguments of a command."
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Result<Command, CliError> {
        parse(args.iter().copied()).map(|c| c.command)
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
        let c = parse(["-v", "verify", "-vv", "d"]).unwrap();
        assert_eq!(c.verbose, 3);
        assert!(matches!(c.command, Command::Verify(_)));
    }

    #[test]
    fn help_is_available_on_every_command() {
        for spec in COMMANDS {
            let Command::Help(text) = cmd(&[spec.name, "--help"]).unwrap() else {
                panic!("no help for {}", spec.name)
            };
            assert!(text.contains(&format!("tidemark {}", spec.name)), "{text}");
            for o in spec.opts {
                assert!(text.contains(&format!("--{}", o.long)), "{text}");
            }
        }
        let Command::Help(top) = cmd(&["-h"]).unwrap() else {
            panic!()
        };
        for spec in COMMANDS {
            assert!(top.contains(spec.name));
        }
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        let msg = |a: &[&str]| cmd(a).unwrap_err().to_string();
        assert!(msg(&[]).contains("no command"));
        assert!(msg(&["frobnicate"]).contains("unknown command 'frobnicate'"));
        assert!(msg(&["inspect"]).contains("missing PATH"));
        assert!(msg(&["inspect", "a", "b"]).contains("unexpected argument 'b'"));
        assert!(msg(&["inspect", "--nope", "a"]).contains("unknown option '--nope'"));
        assert!(msg(&["demo", "--seconds", "0"]).contains("--seconds"));
        assert!(msg(&["demo", "--seconds"]).contains("needs a value"));
        assert!(msg(&["get", "c", "zz", "--hex"]).contains("KEY"));
        assert!(matches!(cmd(&["inspect"]), Err(CliError::Usage(_))));
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
