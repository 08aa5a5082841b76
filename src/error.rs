//! The one error type of tidemark.
//!
//! Every variant that concerns a file carries its path, and corruption carries the byte
//! offset where the reader stopped trusting the file. Errors are cheap to clone (I/O errors
//! are shared behind an `Arc`) so that a background failure can be handed to every later
//! caller unchanged.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The result type used throughout tidemark.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in tidemark.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call on `path` failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// The file or directory the operation was applied to.
        path: PathBuf,
        /// What was being done (`"open"`, `"fsync"`, `"rename"`, ...).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: Arc<io::Error>,
    },
    /// Bytes read from `path` do not form what the format requires.
    #[error("corruption in {} at offset {offset}: {reason}", path.display())]
    Corruption {
        /// The file holding the damaged bytes.
        path: PathBuf,
        /// Byte offset in the file where the damage was detected.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// Another open store (in this process or another) holds the directory's lock.
    #[error("{} is locked: the store is already open (in this or another process)", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// Another checkpoint store (in this process or another) owns the job directory: it
    /// holds the lock file `path`.
    #[error("{} is locked: another checkpoint store owns this job directory (in this or another process)", path.display())]
    JobLocked {
        /// The job directory's lock file.
        path: PathBuf,
    },
    /// A path that must be a regular file is something else: a directory, a FIFO, a socket
    /// or a device. Nothing was read from it.
    #[error("{} is {kind}, not a regular file", path.display())]
    NotRegularFile {
        /// The path as given (it may be a symlink to the object named by `kind`).
        path: PathBuf,
        /// What it is (`"a FIFO (named pipe)"`, `"a directory"`, ...).
        kind: &'static str,
    },
    /// The options given at open are inconsistent.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// An argument to an API call is out of its documented range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A file or directory that must exist does not.
    #[error("not found: {}", path.display())]
    NotFound {
        /// The missing path.
        path: PathBuf,
    },
    /// A checkpoint could not be found at the path given.
    #[error("no checkpoint at {}: {reason}", path.display())]
    CheckpointNotFound {
        /// Where a checkpoint was expected.
        path: PathBuf,
        /// Why it was not accepted as one.
        reason: String,
    },
    /// A path read from a checkpoint tries to leave the job directory.
    #[error("unsafe path {:?} in {}: {reason}", entry, path.display())]
    UnsafePath {
        /// The file that contained the path.
        path: PathBuf,
        /// The offending path entry as written.
        entry: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A verification of a checkpoint or store found problems.
    #[error("verification failed: {} problem(s), first: {}", problems.len(), problems.first().map(String::as_str).unwrap_or(""))]
    VerifyFailed {
        /// One line per problem, each naming a path.
        problems: Vec<String>,
    },
    /// The store stopped accepting writes after a background error; this is that error.
    #[error("store is read-only after a background error: {0}")]
    ReadOnly(Arc<Error>),
    /// The store was closed.
    #[error("store is closed")]
    Closed,
    /// A job's attempt was cancelled (after a failure elsewhere, or on request).
    #[error("cancelled")]
    Cancelled,
    /// A stream job failed: a subtask's error or panic, or a checkpointing limit; the
    /// message names the subtask.
    #[error("{0}")]
    Job(String),
}

impl Error {
    /// Builds an [`Error::Io`] for `op` on `path`.
    pub fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            op,
            source: Arc::new(source),
        }
    }

    /// Builds an [`Error::Corruption`] at `offset` of `path`.
    pub fn corruption(path: impl AsRef<Path>, offset: u64, reason: impl Into<String>) -> Self {
        Error::Corruption {
            path: path.as_ref().to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }

    /// True when this error (or the background error it wraps) is a corruption.
    pub fn is_corruption(&self) -> bool {
        match self {
            Error::Corruption { .. } => true,
            Error::ReadOnly(inner) => inner.is_corruption(),
            _ => false,
        }
    }

    /// The I/O error kind, when this is an I/O error.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Error::Io { source, .. } => Some(source.kind()),
            Error::ReadOnly(inner) => inner.io_kind(),
            _ => None,
        }
    }
}

/// Adds a path to a bare [`io::Error`].
pub(crate) trait IoContext<T> {
    /// Maps the error into [`Error::Io`] for `op` on `path`.
    fn ctx(self, op: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corruption_message_names_file_and_offset() {
        let e = Error::corruption("/db/000007.sst", 4096, "bad block checksum");
        let s = e.to_string();
        assert!(s.contains("/db/000007.sst"), "{s}");
        assert!(s.contains("4096"), "{s}");
        assert!(e.is_corruption());
        assert!(Error::ReadOnly(Arc::new(e)).is_corruption());
    }
}
