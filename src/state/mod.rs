//! State backends: how a stream operator's keyed state is kept, snapshotted into a
//! checkpoint, and restored from one.
//!
//! This layer sits on the store ([`crate::lsm`]) and on checkpoint storage
//! ([`crate::checkpoint`]); the stream layer above it never matches on backend kind.

pub mod backend;
pub(crate) mod bytes;
pub mod config;
pub mod heap;
pub mod key_groups;
pub mod keyed;
pub mod lsm_keyed;
pub mod lsm_snapshot;
pub mod operator;
pub mod row_cache;
pub mod savepoint;
pub mod view;
