//! tidemark: an embedded state store for stream processing.
//!
//! Its core is an LSM store with a write-ahead log ([`lsm`]); checkpoints of it are sets
//! of hard-linked immutable SST files plus a `_metadata` manifest, laid out as Apache
//! Flink lays out its checkpoints ([`checkpoint`]).

#![warn(missing_docs)]

pub mod checkpoint;
pub mod cli;
pub mod codec;
pub mod error;
pub mod fault;
pub mod fs;
pub mod lsm;
pub mod state;

pub use error::{Error, Result};
