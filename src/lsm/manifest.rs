//! The manifest: a log of version edits, and `CURRENT`, which names the live manifest.
