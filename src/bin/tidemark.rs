//! The `tidemark` command line: parses the arguments, runs the command (all of it lives in
//! `tidemark::cli`) and maps the outcome to an exit status. A failed command prints one
//! line on stderr; a command line that does not parse prints clap's message.

use std::io::Write;
use std::process::ExitCode;

use tidemark::cli::{self, CliError};

/// mimalloc: records allocated by one subtask's thread are freed by another's, which
/// glibc's allocator serves slowly.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // A panic is a bug; it still ends with one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        // A subtask's panic fails the job's attempt; the job reports it.
        if tidemark::stream::panic_is_handled_here() {
            return;
        }
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_string());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let line = format!("internal error: {msg}{at}");
        eprintln!(
            "tidemark: {}",
            line.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }));
    let outcome = std::panic::catch_unwind(|| {
        let parsed = cli::parse(std::env::args_os().skip(1));
        let result = parsed.and_then(|c| {
            cli::init_logging(c.verbose);
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let r = cli::run(&c, &mut out);
            let flushed = out.flush().map_err(CliError::Output);
            r.and(flushed)
        });
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
            Err(e) => {
                match &e {
                    // clap prints help and version on stdout, errors on stderr; a closed
                    // pipe is not worth a message.
                    CliError::Usage(usage) => {
                        let _ = usage.print();
                    }
                    _ => eprintln!("tidemark: {}", e.one_line()),
                }
                ExitCode::from(e.exit_code())
            }
        }
    });
    outcome.unwrap_or(ExitCode::from(cli::EXIT_INTERNAL))
}
