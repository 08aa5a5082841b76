//! Checkpoint storage: Flink's directory layout, `_metadata`, retention, verify, restore.
