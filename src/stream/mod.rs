//! The stream layer: what runs a job above the state backends. It owns the job's
//! configuration under Flink's keys ([`config`]), the restart strategies ([`restart`]) and
//! the checkpoint statistics ([`stats`]) that the checkpoint coordinator and the restart
//! loop report to.
//!
//! This layer sits on [`crate::state`] and [`crate::checkpoint`]; it never matches on a
//! state backend's kind, and the command line above it only calls it.

pub mod config;
pub mod restart;
pub mod stats;
