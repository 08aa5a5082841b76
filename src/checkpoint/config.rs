//! The options of a [`CheckpointStore`](super::CheckpointStore) and what happens to its
//! checkpoints when the job ends.

use std::str::FromStr;

use super::restore::RestoreInfo;
use crate::error::{Error, Result};

/// What happens to retained checkpoints when the job ends (Flink's
/// `execution.checkpointing.externalized-checkpoint-retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExternalizedCleanup {
    /// `NO_EXTERNALIZED_CHECKPOINTS`: checkpoints are deleted whenever the job terminates
    /// (a crash of the process deletes nothing, of course).
    #[default]
    NoExternalized,
    /// `RETAIN_ON_CANCELLATION`: kept when the job is cancelled or fails; deleted when it
    /// finishes.
    RetainOnCancellation,
    /// `DELETE_ON_CANCELLATION`: deleted when the job is cancelled or finishes; kept when
    /// it fails or is suspended.
    DeleteOnCancellation,
}

impl ExternalizedCleanup {
    /// Flink's name of the setting value.
    pub fn as_str(self) -> &'static str {
        match self {
            ExternalizedCleanup::NoExternalized => "NO_EXTERNALIZED_CHECKPOINTS",
            ExternalizedCleanup::RetainOnCancellation => "RETAIN_ON_CANCELLATION",
            ExternalizedCleanup::DeleteOnCancellation => "DELETE_ON_CANCELLATION",
        }
    }

    /// Whether the retained checkpoints are deleted when the job ends with `how`
    /// (Flink's `CheckpointProperties` discard flags).
    pub fn discards_on(self, how: JobTermination) -> bool {
        use JobTermination::*;
        match self {
            ExternalizedCleanup::NoExternalized => true,
            ExternalizedCleanup::RetainOnCancellation => how == Finished,
            ExternalizedCleanup::DeleteOnCancellation => matches!(how, Finished | Cancelled),
        }
    }
}

impl FromStr for ExternalizedCleanup {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_uppercase().replace('-', "_").as_str() {
            "NO_EXTERNALIZED_CHECKPOINTS" | "NO_EXTERNALIZED" => {
                Ok(ExternalizedCleanup::NoExternalized)
            }
            "RETAIN_ON_CANCELLATION" => Ok(ExternalizedCleanup::RetainOnCancellation),
            "DELETE_ON_CANCELLATION" => Ok(ExternalizedCleanup::DeleteOnCancellation),
            _ => Err(Error::InvalidOptions(format!(
                "externalized-checkpoint-retention {s:?}: expected NO_EXTERNALIZED_CHECKPOINTS, \
                 RETAIN_ON_CANCELLATION or DELETE_ON_CANCELLATION"
            ))),
        }
    }
}

/// How a job ended, for [`CheckpointStore::shutdown`](super::CheckpointStore::shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobTermination {
    /// All input was processed.
    Finished,
    /// The user cancelled the job.
    Cancelled,
    /// The job failed and will not be restarted.
    Failed,
    /// The job was stopped to be resumed elsewhere.
    Suspended,
}

/// Options of a [`CheckpointStore`](super::CheckpointStore). Plain values with Flink's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// Completed checkpoints to keep (default 1; keys `execution.checkpointing.num-retained`
    /// and `state.checkpoints.num-retained`). Must be at least 1.
    pub num_retained: usize,
    /// What happens to retained checkpoints when the job ends (default
    /// [`ExternalizedCleanup::NoExternalized`]).
    pub cleanup: ExternalizedCleanup,
    /// Set when the job was started from a checkpoint: where from, and in which mode.
    pub restored: Option<RestoreInfo>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            num_retained: 1,
            cleanup: ExternalizedCleanup::NoExternalized,
            restored: None,
        }
    }
}

impl CheckpointConfig {
    /// Applies one `key = value` setting. Returns `Ok(false)` for a key this config does
    /// not know (so a caller can offer it to others), and an error for a bad value.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "execution.checkpointing.num-retained" | "state.checkpoints.num-retained" => {
                self.num_retained = value.trim().parse().map_err(|_| {
                    Error::InvalidOptions(format!("{key} = {value:?}: not a whole number"))
                })?;
            }
            "execution.checkpointing.externalized-checkpoint-retention" => {
                self.cleanup = value.parse()?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Checks the options once, at open.
    pub fn validate(&self) -> Result<()> {
        if self.num_retained == 0 {
            return Err(Error::InvalidOptions(
                "execution.checkpointing.num-retained must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_accepts_flink_keys_and_rejects_zero_retained() {
        let mut c = CheckpointConfig::default();
        assert!(c.set("state.checkpoints.num-retained", "3").unwrap());
        assert_eq!(c.num_retained, 3);
        assert!(c.set("execution.checkpointing.num-retained", "2").unwrap());
        assert_eq!(c.num_retained, 2);
        assert!(c
            .set(
                "execution.checkpointing.externalized-checkpoint-retention",
                "RETAIN_ON_CANCELLATION"
            )
            .unwrap());
        assert_eq!(c.cleanup, ExternalizedCleanup::RetainOnCancellation);
        assert!(!c.set("execution.checkpointing.interval", "1s").unwrap());
        assert!(c.set("state.checkpoints.num-retained", "x").is_err());
        c.num_retained = 0;
        assert!(c.validate().is_err());
    }
}
