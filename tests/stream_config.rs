//! The stream layer's configuration, restart strategies and checkpoint statistics, through
//! the public API: Flink's key names old and new, its restart rules with an injected clock,
//! and the JSON files of a job directory checked against real Flink 2.3 responses
//! (`tests/data/flink-2.3/`).

#[path = "common/store_checkpoint.rs"]
mod store_checkpoint;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use store_checkpoint::checkpoint_db;
use tidemark::checkpoint::{
    CheckpointConfig, CheckpointId, CheckpointKind, CheckpointStore, ExternalizedCleanup, JobId,
    KeyGroupRange, LocalStorage, RestoreMode,
};
use tidemark::fs::StdFs;
use tidemark::lsm::{Db, Options};
use tidemark::state::config::BackendKind;
use tidemark::state::lsm_snapshot::SubtaskId;
use tidemark::stream::config::{
    read_job_config, write_job_config, CheckpointingMode, JobConfig, JobConfigBuilder, Origin,
    JOB_CONFIG_FILE_NAME,
};
use tidemark::stream::restart::{
    ExponentialDelayConfig, RestartDecision, RestartStrategy, RestartStrategyConfig,
    UNLIMITED_ATTEMPTS,
};
use tidemark::stream::stats::{
    decode_checkpoint_stats, encode_checkpoint_stats, read_checkpoint_stats,
    CheckpointStatsTracker, RestartRecord, RestoredCheckpoint, SavepointFormat, SubtaskAck,
    TaskParallelism, TriggeredCheckpoint, CHECKPOINT_STATS_FILE_NAME, MAX_PENDING_CHECKPOINTS,
};

// ---------------------------------------------------------------------------------------
// helpers

fn flink(rel: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/flink-2.3")
        .join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

/// Every object's key set below `ours` equals Flink's at the same place (arrays: each
/// element of ours against Flink's first element of the same `className`).
fn assert_same_shape(ours: &Value, theirs: &Value, at: &str) {
    match (ours, theirs) {
        (Value::Object(o), Value::Object(t)) => {
            assert_eq!(keys(ours), keys(theirs), "keys at {at}");
            for (k, v) in o {
                assert_same_shape(v, &t[k], &format!("{at}.{k}"));
            }
        }
        (Value::Array(o), Value::Array(t)) => {
            if let Some(first) = t.first() {
                for (i, v) in o.iter().enumerate() {
                    if v.get("className") == first.get("className") {
                        assert_same_shape(v, first, &format!("{at}[{i}]"));
                    }
                }
            }
        }
        _ => {}
    }
}

fn build(text: &str) -> (JobConfig, Vec<tidemark::stream::config::ConfigWarning>) {
    let mut b = JobConfigBuilder::new();
    b.load_str(text, Path::new("flink-conf.yaml")).unwrap();
    b.build().unwrap()
}

fn build_err(text: &str) -> String {
    let mut b = JobConfigBuilder::new();
    b.load_str(text, Path::new("flink-conf.yaml")).unwrap();
    b.build().unwrap_err().to_string()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn restart_delay(d: RestartDecision) -> Duration {
    match d {
        RestartDecision::Restart { delay, .. } => delay,
        RestartDecision::GiveUp { reason } => panic!("gave up: {reason}"),
    }
}

fn give_up_reason(d: RestartDecision) -> String {
    match d {
        RestartDecision::GiveUp { reason } => reason,
        other => panic!("expected to give up, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// configuration

/// The seed article's Flink (1.6) names, one `key: value` a line.
const SEED_KEYS: &str = "\
# flink-conf.yaml, as the seed article's Flink 1.6 names things
parallelism.default: 2
pipeline.max-parallelism: 256

state.backend: rocksdb
state.backend.incremental: true
state.checkpoints.dir: file:///data/flink/checkpoints
state.savepoints.dir: file:///data/flink/savepoints
state.checkpoints.num-retained: 3

execution.checkpointing.interval: 200 ms
execution.checkpointing.mode: AT_LEAST_ONCE
execution.checkpointing.timeout: 5 min
execution.checkpointing.externalized-checkpoint-retention: RETAIN_ON_CANCELLATION

restart-strategy: fixed-delay
restart-strategy.fixed-delay.attempts: 3
restart-strategy.fixed-delay.delay: 10 s

execution.savepoint.path: /data/flink/savepoints/savepoint-0a1b2c-d3e4f5
execution.savepoint-restore-mode: CLAIM
execution.savepoint.ignore-unclaimed-state: true
";

/// Today's (Flink 2.x) names, in the nested `config.yaml` form.
const CURRENT_KEYS: &str = "\
parallelism:
  default: 2
pipeline:
  max-parallelism: 256
state:
  backend:
    type: rocksdb
  checkpoint-storage: filesystem
execution:
  checkpointing:
    interval: 200ms
    mode: at_least_once          # case does not matter
    timeout: 300000              # a plain number is milliseconds
    dir: /data/flink/checkpoints
    savepoint-dir: /data/flink/savepoints
    num-retained: 3
    incremental: true
    externalized-checkpoint-retention: RETAIN_ON_CANCELLATION
  state-recovery:
    path: \"/data/flink/savepoints/savepoint-0a1b2c-d3e4f5\"
    claim-mode: CLAIM
    ignore-unclaimed-state: true
restart-strategy:
  type: fixed-delay
  fixed-delay:
    attempts: 3
    delay: 10 seconds
";

#[test]
fn seed_and_current_key_names_give_the_same_job_config() {
    let (seed, seed_warnings) = build(SEED_KEYS);
    let (current, current_warnings) = build(CURRENT_KEYS);
    assert!(seed_warnings.is_empty(), "{seed_warnings:?}");
    assert!(current_warnings.is_empty(), "{current_warnings:?}");
    assert_eq!(seed, current);

    let c = seed;
    assert_eq!((c.parallelism, c.max_parallelism), (2, 256));
    let cp = &c.checkpointing;
    assert_eq!(cp.interval, Some(ms(200)));
    assert_eq!(cp.mode, CheckpointingMode::AtLeastOnce);
    assert_eq!(cp.timeout, secs(300));
    assert_eq!(cp.min_pause, Duration::ZERO);
    assert_eq!(cp.max_concurrent, 1);
    assert_eq!(cp.tolerable_failed, 0);
    assert_eq!(cp.externalized, ExternalizedCleanup::RetainOnCancellation);
    assert_eq!(cp.num_retained, 3);
    assert_eq!(
        cp.checkpoints_dir,
        Some(PathBuf::from("/data/flink/checkpoints"))
    );
    assert_eq!(
        cp.savepoints_dir,
        Some(PathBuf::from("/data/flink/savepoints"))
    );
    assert_eq!(
        c.restart,
        RestartStrategyConfig::FixedDelay {
            attempts: 3,
            delay: secs(10)
        }
    );
    assert_eq!(c.state_backend.kind(), BackendKind::Lsm);
    assert!(c.state_backend.is_incremental());
    assert_eq!(
        c.state_backend.checkpoints_dir,
        Some(PathBuf::from("/data/flink/checkpoints"))
    );
    assert_eq!(
        c.recovery.path,
        Some(PathBuf::from(
            "/data/flink/savepoints/savepoint-0a1b2c-d3e4f5"
        ))
    );
    assert_eq!(c.recovery.claim_mode, RestoreMode::Claim);
    assert!(c.recovery.ignore_unclaimed_state);

    let store = c.checkpoint_store_config();
    assert_eq!(store.num_retained, 3);
    assert_eq!(store.cleanup, ExternalizedCleanup::RetainOnCancellation);
}

#[test]
fn nothing_configured_gives_flinks_defaults() {
    let (c, w) = JobConfigBuilder::new().build().unwrap();
    assert!(w.is_empty());
    assert_eq!(c, JobConfig::default());
    assert_eq!((c.parallelism, c.max_parallelism), (1, 128));
    assert_eq!(c.checkpointing.interval, None);
    assert_eq!(c.checkpointing.mode, CheckpointingMode::ExactlyOnce);
    assert_eq!(c.checkpointing.timeout, secs(600));
    assert_eq!(c.checkpointing.num_retained, 1);
    assert_eq!(
        c.checkpointing.externalized,
        ExternalizedCleanup::NoExternalized
    );
    assert_eq!(c.recovery.claim_mode, RestoreMode::NoClaim);
    assert!(!c.recovery.ignore_unclaimed_state);
    assert_eq!(c.checkpoint_history, 10);
    assert_eq!(c.state_backend.kind(), BackendKind::Memory);
}

#[test]
fn a_bad_value_names_the_place_the_key_the_value_and_what_is_accepted() {
    let e = build_err("parallelism.default: 2\nexecution.checkpointing.mode: SOMETIMES\n");
    for part in [
        "flink-conf.yaml:2",
        "execution.checkpointing.mode",
        "\"SOMETIMES\"",
        "EXACTLY_ONCE or AT_LEAST_ONCE",
    ] {
        assert!(e.contains(part), "{part:?} missing in: {e}");
    }

    let e = build_err("execution.checkpointing.timeout: ten minutes\n");
    assert!(
        e.contains("execution.checkpointing.timeout") && e.contains("not a duration"),
        "{e}"
    );
    let e = build_err("restart-strategy.type: sometimes\n");
    assert!(
        e.contains("none (off, disable), fixed-delay, failure-rate or exponential-delay"),
        "{e}"
    );
    let e = build_err(
        "restart-strategy.type: fixed-delay\nrestart-strategy.fixed-delay.attempts: -1\n",
    );
    assert!(
        e.contains("flink-conf.yaml:2") && e.contains("not a whole number"),
        "{e}"
    );
    // A key of the state backend's: the backend's message, with where it was set.
    let e = build_err("\n\nstate.backend: redis\n");
    assert!(
        e.contains("flink-conf.yaml:3") && e.contains("rocksdb"),
        "{e}"
    );
    let e = build_err("execution.checkpointing.interval: 5 ms\n");
    assert!(e.contains("at least 10 ms"), "{e}");
    let e = build_err("execution.checkpointing.dir: hdfs://namenode/flink\n");
    assert!(e.contains("hdfs URI") && e.contains("local"), "{e}");
    let e = build_err("execution.state-recovery.claim-mode: LEGACY\n");
    assert!(e.contains("CLAIM or NO_CLAIM"), "{e}");
    let e = build_err("parallelism.default: 300\n");
    assert!(e.contains("pipeline.max-parallelism (128)"), "{e}");
    let e = build_err(
        "restart-strategy.type: exponential-delay\nrestart-strategy.exponential-delay.jitter-factor: 2\n",
    );
    assert!(
        e.contains("jitter-factor") && e.contains("between 0 and 1"),
        "{e}"
    );
}

#[test]
fn an_unknown_key_is_a_warning_not_an_error() {
    let (c, w) = build(
        "taskmanager.numberOfTaskSlots: 4\nexecution.checkpointing.interval: 1 s\nrest.port: 8081\n",
    );
    assert_eq!(c.checkpointing.interval, Some(secs(1)));
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(w[0].key, "taskmanager.numberOfTaskSlots");
    assert_eq!(
        w[0].origin,
        Origin::File {
            path: "flink-conf.yaml".into(),
            line: 1
        }
    );
    assert!(w[0].to_string().contains("unknown key"), "{}", w[0]);
    assert_eq!(w[1].key, "rest.port");

    // Settings of a restart strategy that is not in force have no effect: said so.
    let (_, w) = build("restart-strategy.type: none\nrestart-strategy.fixed-delay.attempts: 5\n");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].message.contains("restart strategy in force is none"),
        "{}",
        w[0]
    );
}

#[test]
fn dash_d_overrides_the_file_and_code_overrides_both() {
    let mut b = JobConfigBuilder::new();
    b.dynamic_property("-Dexecution.checkpointing.interval=200ms")
        .unwrap()
        .dynamic_property("parallelism.default = 4")
        .unwrap();
    // Loaded after the -D settings, the file still yields to them.
    b.load_str(
        "execution.checkpointing.interval: 1 s\nparallelism.default: 2\nexecution.checkpointing.min-pause: 50\n",
        Path::new("flink-conf.yaml"),
    )
    .unwrap();
    let (c, _) = b.build().unwrap();
    assert_eq!(c.checkpointing.interval, Some(ms(200)));
    assert_eq!(c.parallelism, 4);
    assert_eq!(c.checkpointing.min_pause, ms(50));

    b.set("parallelism.default", "8");
    let (c, _) = b.build().unwrap();
    assert_eq!(c.parallelism, 8);

    // Within a layer the later setting wins, whichever name it uses.
    let (c, w) =
        build("state.checkpoints.num-retained: 2\nexecution.checkpointing.num-retained: 5\n");
    assert_eq!(c.checkpointing.num_retained, 5);
    assert_eq!(
        w.len(),
        1,
        "two names of one setting with different values: {w:?}"
    );

    assert!(JobConfigBuilder::new()
        .dynamic_property("-Dno-equals-sign")
        .is_err());
    assert!(JobConfigBuilder::new().dynamic_property("-D=1").is_err());
}

#[test]
fn restart_default_rule_follows_checkpointing() {
    let (off, _) = build("");
    assert_eq!(off.restart, RestartStrategyConfig::None);
    let (on, _) = build("execution.checkpointing.interval: 1 s\n");
    assert_eq!(
        on.restart,
        RestartStrategyConfig::FixedDelay {
            attempts: UNLIMITED_ATTEMPTS,
            delay: secs(1)
        }
    );
    assert_eq!(
        RestartStrategyConfig::default_for(true),
        on.restart,
        "the rule is the library's"
    );
    // A configured strategy wins over the rule either way.
    let (c, _) = build("execution.checkpointing.interval: 1 s\nrestart-strategy.type: off\n");
    assert_eq!(c.restart, RestartStrategyConfig::None);
    let (c, _) = build("restart-strategy.type: exponential-delay\n");
    assert_eq!(
        c.restart,
        RestartStrategyConfig::ExponentialDelay(ExponentialDelayConfig {
            initial_backoff: secs(1),
            max_backoff: secs(60),
            backoff_multiplier: 1.5,
            reset_backoff_threshold: secs(3600),
            jitter_factor: 0.1,
        })
    );
    let (c, _) = build("restart-strategy: failure-rate\n");
    assert_eq!(
        c.restart,
        RestartStrategyConfig::FailureRate {
            max_failures_per_interval: 1,
            interval: secs(60),
            delay: secs(1)
        }
    );
    let (c, _) = build("restart-strategy.type: fixeddelay\n");
    assert_eq!(
        c.restart,
        RestartStrategyConfig::FixedDelay {
            attempts: 1,
            delay: secs(1)
        }
    );
    // Unlimited restarts never run out.
    let mut s = RestartStrategy::with_seed(on.restart.clone(), 1).unwrap();
    for i in 0..1000 {
        assert_eq!(restart_delay(s.on_failure(secs(i))), secs(1));
    }
}

#[test]
fn settings_rebuild_the_same_config() {
    let configs = [
        SEED_KEYS.to_string(),
        String::new(),
        "state.backend: filesystem\nstate.backend.memory.max-state-size: 7 mb\n".into(),
        "state.backend.type: hashmap\nstate.checkpoint-storage: jobmanager\ntaskmanager.memory.managed.size: 100mb\n".into(),
        "state.backend: rocksdb\nstate.backend.rocksdb.localdir: /tmp/x\nstate.backend.rocksdb.memory.write-buffer-ratio: 0.25\nstate.backend.rocksdb.memory.managed: false\n".into(),
        "state.backend: lsm\nstate.backend.lsm.row-cache.size: 0\ntaskmanager.network.memory.buffers-per-channel: 16\n".into(),
        "restart-strategy.type: failure-rate\nrestart-strategy.failure-rate.max-failures-per-interval: 4\nrestart-strategy.failure-rate.failure-rate-interval: 90 s\nrestart-strategy.failure-rate.delay: 250\n".into(),
        "restart-strategy.type: exponential-delay\nrestart-strategy.exponential-delay.backoff-multiplier: 2.5\nrestart-strategy.exponential-delay.jitter-factor: 0\nrestart-strategy.exponential-delay.max-backoff: 2 h\n".into(),
        "execution.checkpointing.interval: 1500\nexecution.checkpointing.externalized-checkpoint-retention: delete_on_cancellation\nweb.checkpoints.history: 50\nexecution.checkpointing.tolerable-failed-checkpoints: 3\nexecution.checkpointing.max-concurrent-checkpoints: 2\n".into(),
    ];
    for text in configs {
        let (c, _) = build(&text);
        let settings = c.settings();
        let (back, w) =
            JobConfig::from_pairs(settings.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert!(w.is_empty(), "{text}: {w:?}");
        assert_eq!(back, c, "{text}\n{settings:#?}");
    }
}

#[test]
fn job_config_json_round_trips_in_flinks_shape() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = build(SEED_KEYS);
    write_job_config(&StdFs, dir.path(), &c).unwrap();
    let path = dir.path().join(JOB_CONFIG_FILE_NAME);
    assert!(!dir.path().join("job-config.json.tmp").exists());
    let doc = read_job_config(dir.path()).unwrap();
    assert_eq!(doc, c.document());
    assert_eq!(doc.job_config().unwrap(), c);
    assert_eq!(doc.interval, 200);
    assert_eq!(doc.mode, "at_least_once");
    assert_eq!(doc.restart_strategy.kind, "fixed-delay");

    // Flink's fields are all there but three (no changelog, no finished-task
    // checkpoints); tidemark adds its header, the restart strategy and every setting.
    let ours: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for flink_file in [
        "running/checkpoints-config.json",
        "failover/checkpoints-config.json",
    ] {
        let theirs = flink(flink_file);
        let missing: BTreeSet<String> = keys(&theirs).difference(&keys(&ours)).cloned().collect();
        let expected_missing: BTreeSet<String> = [
            "checkpoints_after_tasks_finish",
            "changelog_periodic_materialization_interval",
            "changelog_storage",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(missing, expected_missing, "{flink_file}");
        assert_eq!(
            keys(&ours["externalization"]),
            keys(&theirs["externalization"])
        );
    }
    let added: BTreeSet<String> = keys(&ours)
        .difference(&keys(&flink("running/checkpoints-config.json")))
        .cloned()
        .collect();
    assert_eq!(
        added,
        [
            "tidemark_format",
            "format_version",
            "crc32c",
            "restart_strategy",
            "configuration"
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );
    // Checkpointing off: Flink's Long.MAX_VALUE.
    let (off, _) = build("");
    assert_eq!(off.document().interval, i64::MAX as u64);
}

#[test]
fn flinks_own_configuration_loads_and_matches_its_checkpoint_config_response() {
    // The failover job's /jobmanager/config, given as -D settings.
    let mut b = JobConfigBuilder::new();
    for kv in flink("failover/jobmanager-config.json").as_array().unwrap() {
        b.dynamic_property(&format!(
            "{}={}",
            kv["key"].as_str().unwrap(),
            kv["value"].as_str().unwrap()
        ))
        .unwrap();
    }
    let (c, warnings) = b.build().unwrap();
    assert!(
        warnings.iter().any(|w| w.key == "rest.port"),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().all(|w| w.message.contains("unknown key")),
        "{warnings:?}"
    );
    assert_eq!(c.checkpoint_history, 100_000);
    assert_eq!(
        c.restart,
        RestartStrategyConfig::FixedDelay {
            attempts: 3,
            delay: secs(1)
        }
    );
    assert_eq!(c.state_backend.kind(), BackendKind::Lsm);
    assert_eq!(
        c.checkpointing.checkpoints_dir,
        Some(PathBuf::from("/data/flink/runs/failover-rocksdb-p2/ckpt"))
    );
    let ours = serde_json::to_value(c.document()).unwrap();
    let theirs = flink("failover/checkpoints-config.json");
    for (k, v) in theirs.as_object().unwrap() {
        match k.as_str() {
            // Flink's class name; tidemark's own is LsmStateBackend.
            "state_backend" => assert_eq!(ours[k], "LsmStateBackend"),
            _ if ours.get(k).is_none() => {}
            _ => assert_eq!(&ours[k], v, "{k}"),
        }
    }
}

#[test]
fn a_configuration_file_is_read_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.yaml");
    std::fs::write(&p, CURRENT_KEYS).unwrap();
    let mut b = JobConfigBuilder::new();
    b.load_file(&p).unwrap();
    let (c, _) = b.build().unwrap();
    assert_eq!(c, build(SEED_KEYS).0);
    std::fs::write(&p, b"parallelism.default: \xff\n").unwrap();
    let e = JobConfigBuilder::new().load_file(&p).unwrap_err();
    assert!(
        e.to_string().contains("config.yaml") && e.to_string().contains("UTF-8"),
        "{e}"
    );
    let e = JobConfigBuilder::new()
        .load_file(&dir.path().join("missing.yaml"))
        .unwrap_err();
    assert!(e.to_string().contains("missing.yaml"), "{e}");
}

// ---------------------------------------------------------------------------------------
// restart strategies, with an injected clock

#[test]
fn fixed_delay_restarts_its_attempts_then_gives_up() {
    let mut s = RestartStrategy::with_seed(
        RestartStrategyConfig::FixedDelay {
            attempts: 3,
            delay: ms(1500),
        },
        7,
    )
    .unwrap();
    for attempt in 1..=3 {
        assert_eq!(
            s.on_failure(secs(attempt.into())),
            RestartDecision::Restart {
                delay: ms(1500),
                attempt
            }
        );
    }
    let reason = give_up_reason(s.on_failure(secs(100)));
    assert!(reason.contains("all 3 restart attempts"), "{reason}");
    assert!(
        reason.contains("restart-strategy.fixed-delay.attempts"),
        "{reason}"
    );

    let mut none = RestartStrategy::with_seed(RestartStrategyConfig::None, 7).unwrap();
    assert!(give_up_reason(none.on_failure(secs(1))).contains("none"));
}

#[test]
fn failure_rate_counts_only_failures_inside_the_sliding_window() {
    let config = RestartStrategyConfig::FailureRate {
        max_failures_per_interval: 2,
        interval: secs(10),
        delay: ms(300),
    };
    let mut s = RestartStrategy::with_seed(config.clone(), 1).unwrap();
    assert_eq!(restart_delay(s.on_failure(secs(0))), ms(300));
    assert_eq!(restart_delay(s.on_failure(secs(5))), ms(300));
    // The failure at 0 s has left the window (10.5 s ago): two in the window.
    assert_eq!(restart_delay(s.on_failure(ms(10_500))), ms(300));
    // 5 s, 10.5 s and 12 s are within 10 s: three.
    let reason = give_up_reason(s.on_failure(secs(12)));
    assert!(reason.contains("3 failures within 10 s"), "{reason}");
    assert!(reason.contains("maximum of 2"), "{reason}");

    // A failure exactly one interval old still counts, as in Flink.
    let one = RestartStrategyConfig::FailureRate {
        max_failures_per_interval: 1,
        interval: secs(10),
        delay: ms(300),
    };
    let mut s = RestartStrategy::with_seed(one.clone(), 1).unwrap();
    s.on_failure(secs(0));
    give_up_reason(s.on_failure(secs(10)));
    let mut s = RestartStrategy::with_seed(one, 1).unwrap();
    s.on_failure(secs(0));
    restart_delay(s.on_failure(ms(10_001)));
    // A long run of failures spaced out more than the interval never gives up.
    let mut s = RestartStrategy::with_seed(config, 1).unwrap();
    for i in 0..500 {
        restart_delay(s.on_failure(secs(6 * i)));
    }
    assert_eq!(s.restarts(), 500);
}

fn exponential(jitter_factor: f64) -> RestartStrategyConfig {
    RestartStrategyConfig::ExponentialDelay(ExponentialDelayConfig {
        initial_backoff: secs(1),
        max_backoff: secs(10),
        backoff_multiplier: 2.0,
        reset_backoff_threshold: secs(60),
        jitter_factor,
    })
}

#[test]
fn exponential_delay_grows_is_capped_and_resets_after_a_quiet_run() {
    let mut s = RestartStrategy::with_seed(exponential(0.0), 3).unwrap();
    let mut now = secs(1000);
    let mut delays = Vec::new();
    for _ in 0..6 {
        let d = restart_delay(s.on_failure(now));
        delays.push(d.as_secs());
        // Fails again 5 s after the restart.
        now += d + secs(5);
    }
    assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
    // 59 s of running since the restart: not yet a reset.
    let last = secs(10);
    now = now - secs(5) + secs(59);
    assert_eq!(restart_delay(s.on_failure(now)), secs(10));
    // 60 s of running since the restart: back to the initial backoff, then growing again.
    now += last + secs(60);
    assert_eq!(restart_delay(s.on_failure(now)), secs(1));
    assert_eq!(restart_delay(s.on_failure(now + secs(2))), secs(2));

    // Flink's arithmetic with its default multiplier: whole milliseconds, truncated.
    let mut s = RestartStrategy::with_seed(
        RestartStrategyConfig::ExponentialDelay(ExponentialDelayConfig {
            jitter_factor: 0.0,
            ..ExponentialDelayConfig::default()
        }),
        3,
    )
    .unwrap();
    let got: Vec<u128> = (0..4)
        .map(|i| restart_delay(s.on_failure(secs(i))).as_millis())
        .collect();
    assert_eq!(got, [1000, 1500, 2250, 3375]);
}

#[test]
fn exponential_jitter_stays_within_its_bounds_and_replays_from_its_seed() {
    let (mut low, mut high) = (u128::MAX, 0u128);
    for seed in 0..300 {
        let mut s = RestartStrategy::with_seed(exponential(0.5), seed).unwrap();
        let first = restart_delay(s.on_failure(secs(0))).as_millis();
        assert!((500..=1500).contains(&first), "seed {seed}: {first}");
        (low, high) = (low.min(first), high.max(first));
        // At the cap the delay varies below it only (Flink caps the jittered delay).
        let mut now = secs(0);
        let mut d = Duration::ZERO;
        for _ in 0..8 {
            now += d + ms(1);
            d = restart_delay(s.on_failure(now));
        }
        assert!(
            (5000..=10_000).contains(&d.as_millis()),
            "seed {seed}: {d:?}"
        );
    }
    assert!(
        low < 600 && high > 1400,
        "jitter spans its range: {low}..{high}"
    );

    let run = |seed| {
        let mut s = RestartStrategy::with_seed(exponential(0.5), seed).unwrap();
        (0..10)
            .map(|i| restart_delay(s.on_failure(secs(i))))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
    let mut s = RestartStrategy::new(exponential(0.1)).unwrap();
    let d = restart_delay(s.on_failure(secs(0)));
    assert!((900..=1100).contains(&d.as_millis()), "{d:?}");
}

#[test]
fn invalid_strategies_are_refused_naming_the_key() {
    let bad = RestartStrategyConfig::ExponentialDelay(ExponentialDelayConfig {
        backoff_multiplier: 1.0,
        ..ExponentialDelayConfig::default()
    });
    let e = RestartStrategy::new(bad).unwrap_err();
    assert!(e.to_string().contains("backoff-multiplier"), "{e}");
    let bad = RestartStrategyConfig::FailureRate {
        max_failures_per_interval: 0,
        interval: secs(1),
        delay: secs(1),
    };
    let e = RestartStrategy::new(bad).unwrap_err();
    assert!(e.to_string().contains("max-failures-per-interval"), "{e}");
}

// ---------------------------------------------------------------------------------------
// checkpoint statistics

/// Replays the checkpoints of one of Flink's `checkpoints` responses through a tracker:
/// each history entry triggered with one task of `num_subtasks` subtasks, acknowledged
/// (subtask 0 carrying the sizes and the last acknowledgement), then completed, failed or
/// left in flight; the failures without an entry reported as such; the restore as well.
fn replay(flink_checkpoints: &Value, history_size: usize) -> CheckpointStatsTracker {
    let t = CheckpointStatsTracker::new(history_size);
    let mut history: Vec<&Value> = flink_checkpoints["history"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    history.sort_by_key(|e| e["id"].as_u64().unwrap());
    let u = |e: &Value, k: &str| e[k].as_u64().unwrap();
    for e in &history {
        let id = CheckpointId(u(e, "id"));
        let trigger = u(e, "trigger_timestamp");
        assert!(t.report_triggered(TriggeredCheckpoint {
            id,
            trigger_timestamp_ms: trigger,
            savepoint: None,
            tasks: vec![TaskParallelism {
                operator_id: "count".into(),
                num_subtasks: u(e, "num_subtasks") as u32,
            }],
        }));
        for i in 0..u(e, "num_acknowledged_subtasks") as u32 {
            let first = i == 0;
            let pick = |k: &str| if first { u(e, k) } else { 0 };
            assert!(t.report_acknowledged(
                id,
                &SubtaskAck {
                    operator_id: "count".into(),
                    subtask_index: i,
                    ack_timestamp_ms: if first {
                        u(e, "latest_ack_timestamp")
                    } else {
                        trigger
                    },
                    checkpointed_size_bytes: pick("checkpointed_size"),
                    state_size_bytes: pick("state_size"),
                    processed_data_bytes: pick("processed_data"),
                    ..SubtaskAck::default()
                }
            ));
        }
        match e["status"].as_str().unwrap() {
            "COMPLETED" => {
                assert!(t.report_completed(id, e["external_path"].as_str().unwrap()));
                if e["discarded"].as_bool().unwrap() {
                    t.report_discarded(id);
                }
            }
            "FAILED" => assert!(t.report_failed(
                id,
                u(e, "failure_timestamp"),
                e["failure_message"].as_str().unwrap()
            )),
            _ => {}
        }
    }
    let counts = &flink_checkpoints["counts"];
    let without_entry = u(counts, "total") - history.len() as u64;
    for _ in 0..without_entry {
        t.report_failed_before_trigger();
    }
    if let Some(r) = flink_checkpoints["latest"]["restored"].as_object() {
        t.report_restored(RestoredCheckpoint {
            id: CheckpointId(r["id"].as_u64().unwrap()),
            restore_timestamp_ms: r["restore_timestamp"].as_u64().unwrap(),
            external_path: r["external_path"].as_str().unwrap().into(),
            is_savepoint: r["is_savepoint"].as_bool().unwrap(),
        });
    }
    t
}

fn without_tasks(mut v: Value) -> Value {
    for e in v.as_array_mut().unwrap() {
        e["tasks"] = serde_json::json!({});
    }
    v
}

#[test]
fn replaying_flinks_checkpoints_gives_flinks_statistics_back() {
    for (dir, history_size) in [("running", 10), ("restored", 10), ("failover", 100_000)] {
        let theirs = flink(&format!("{dir}/checkpoints.json"));
        let ours = serde_json::to_value(replay(&theirs, history_size).snapshot()).unwrap();
        assert_eq!(ours["counts"], theirs["counts"], "{dir}: counts");
        assert_eq!(ours["summary"], theirs["summary"], "{dir}: summary");
        assert_eq!(ours["latest"], theirs["latest"], "{dir}: latest");
        assert_eq!(
            without_tasks(ours["history"].clone()),
            theirs["history"],
            "{dir}: history"
        );
    }
}

/// A checkpoint of two operators (2 and 3 subtasks), one subtask never acknowledging.
fn two_operator_checkpoint(t: &CheckpointStatsTracker, id: u64, savepoint: bool) {
    let id = CheckpointId(id);
    let trigger = 1_000_000 + id.0 * 1000;
    t.report_triggered(TriggeredCheckpoint {
        id,
        trigger_timestamp_ms: trigger,
        savepoint: savepoint.then_some(SavepointFormat::Canonical),
        tasks: vec![
            TaskParallelism {
                operator_id: "source".into(),
                num_subtasks: 2,
            },
            TaskParallelism {
                operator_id: "count".into(),
                num_subtasks: 3,
            },
        ],
    });
    for (op, index, size) in [
        ("source", 0, 10),
        ("source", 1, 20),
        ("count", 0, 300),
        ("count", 2, 500),
    ] {
        assert!(t.report_acknowledged(
            id,
            &SubtaskAck {
                operator_id: op.into(),
                subtask_index: index,
                ack_timestamp_ms: trigger + size,
                sync_duration_ms: 1,
                async_duration_ms: size / 10,
                alignment_duration_ms: 2,
                start_delay_ms: 3,
                checkpointed_size_bytes: size,
                state_size_bytes: size * 2,
                processed_data_bytes: 0,
            }
        ));
    }
}

#[test]
fn details_and_subtasks_carry_flinks_field_names() {
    let t = CheckpointStatsTracker::new(10);
    two_operator_checkpoint(&t, 1, false);
    two_operator_checkpoint(&t, 2, true);
    assert!(t.report_completed(CheckpointId(1), "/ckpt/job/chk-1"));
    assert!(t.report_completed(CheckpointId(2), "/savepoints/savepoint-1"));
    two_operator_checkpoint(&t, 3, false);
    assert!(t.report_failed(CheckpointId(3), 1_004_000, "declined by count (2/3)"));
    two_operator_checkpoint(&t, 4, false);
    t.report_restored(RestoredCheckpoint {
        id: CheckpointId(1),
        restore_timestamp_ms: 1_005_000,
        external_path: "/ckpt/job/chk-1".into(),
        is_savepoint: false,
    });
    let doc = t.snapshot();
    let ours = serde_json::to_value(&doc).unwrap();

    let running = flink("running/checkpoints.json");
    assert_eq!(keys(&ours["counts"]), keys(&running["counts"]));
    assert_same_shape(&ours["summary"], &running["summary"], "summary");
    assert_same_shape(
        &ours["latest"]["completed"],
        &running["latest"]["completed"],
        "latest.completed",
    );
    // A savepoint is a completed entry of its own kind.
    assert_same_shape(
        &ours["latest"]["savepoint"],
        &running["latest"]["completed"],
        "latest.savepoint",
    );
    assert_eq!(ours["latest"]["savepoint"]["savepointFormat"], "CANONICAL");
    assert_eq!(ours["latest"]["savepoint"]["checkpoint_type"], "SAVEPOINT");
    let failover = flink("failover/checkpoints.json");
    assert_same_shape(
        &ours["latest"]["failed"],
        &failover["latest"]["failed"],
        "latest.failed",
    );
    assert_same_shape(
        &ours["latest"]["restored"],
        &failover["latest"]["restored"],
        "latest.restored",
    );
    let top: BTreeSet<String> = keys(&ours).difference(&keys(&running)).cloned().collect();
    assert_eq!(top, ["restarts".to_string()].into_iter().collect());

    // History entries are the details response: the same fields, per status...
    let in_progress = &ours["history"][0];
    assert_eq!(in_progress["status"], "IN_PROGRESS");
    assert_eq!(keys(in_progress), keys(&running["history"][0]));
    let failed = &ours["history"][1];
    assert_eq!(keys(failed), keys(&failover["latest"]["failed"]));
    let completed = &ours["history"][3];
    let details = flink("running/checkpoint-details-4.json");
    assert_eq!(keys(completed), keys(&details));
    // ... and each task is the details' task entry plus the subtasks response.
    let subtasks =
        flink("running/checkpoint-details-4-subtasks-8367180753ed97b53effdbea25ea4abf.json");
    let flink_task = details["tasks"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap();
    for op in ["source", "count"] {
        let task = &completed["tasks"][op];
        assert!(keys(flink_task).is_subset(&keys(task)), "{op}");
        assert_same_shape(task, &subtasks, op);
    }
    let count = &completed["tasks"]["count"];
    assert_eq!(count["num_subtasks"], 3);
    assert_eq!(count["num_acknowledged_subtasks"], 2);
    assert_eq!(count["state_size"], 1600);
    assert_eq!(count["end_to_end_duration"], 500);
    assert_eq!(count["summary"]["checkpointed_size"]["min"], 300);
    assert_eq!(count["summary"]["checkpointed_size"]["p50"], 400.0);
    assert_eq!(count["summary"]["checkpoint_duration"]["async"]["max"], 50);
    let pending = &count["subtasks"][1];
    assert_eq!(
        pending,
        &serde_json::json!({"className": "pending", "index": 1, "status": "pending_or_failed"})
    );
    assert_eq!(completed["num_subtasks"], 5);
    assert_eq!(completed["num_acknowledged_subtasks"], 4);
    assert_eq!(completed["checkpointed_size"], 830);
    assert_eq!(completed["end_to_end_duration"], 500);
    assert_eq!(failed["failure_message"], "declined by count (2/3)");
    assert_eq!(failed["end_to_end_duration"], 1000);
    assert_eq!(doc.counts.restored, 1);
}

#[test]
fn the_tracker_is_bounded_and_ignores_what_it_cannot_place() {
    let t = CheckpointStatsTracker::new(3);
    for id in 1..=10 {
        two_operator_checkpoint(&t, id, false);
        assert!(t.report_completed(CheckpointId(id), &format!("chk-{id}")));
    }
    let doc = t.snapshot();
    assert_eq!(doc.counts.completed, 10);
    assert_eq!(
        doc.history.iter().map(|e| e.id).collect::<Vec<_>>(),
        [10, 9, 8]
    );
    assert_eq!(doc.latest.completed.as_ref().unwrap().id, 10);
    assert!(doc.latest.completed.as_ref().unwrap().tasks.is_empty());

    let ack = |op: &str, index| SubtaskAck {
        operator_id: op.into(),
        subtask_index: index,
        ..SubtaskAck::default()
    };
    assert!(
        !t.report_acknowledged(CheckpointId(10), &ack("count", 0)),
        "completed already"
    );
    assert!(
        !t.report_acknowledged(CheckpointId(99), &ack("count", 0)),
        "never triggered"
    );
    two_operator_checkpoint(&t, 11, false);
    assert!(
        !t.report_acknowledged(CheckpointId(11), &ack("count", 0)),
        "twice"
    );
    assert!(
        !t.report_acknowledged(CheckpointId(11), &ack("count", 3)),
        "no such subtask"
    );
    assert!(
        !t.report_acknowledged(CheckpointId(11), &ack("sink", 0)),
        "no such operator"
    );
    assert!(t.report_acknowledged(CheckpointId(11), &ack("count", 1)));
    assert!(!t.report_completed(CheckpointId(99), "x"));
    let huge = |n| TriggeredCheckpoint {
        id: CheckpointId(200),
        trigger_timestamp_ms: 0,
        savepoint: None,
        tasks: vec![TaskParallelism {
            operator_id: "count".into(),
            num_subtasks: n,
        }],
    };
    assert!(
        !t.report_triggered(huge(u32::MAX)),
        "more subtasks than key groups"
    );
    assert!(t.report_triggered(huge(32_768)));
    assert!(!t.report_failed(CheckpointId(99), 0, "x"));

    // Checkpoints whose outcome is never reported do not pile up.
    let t = CheckpointStatsTracker::new(3);
    for id in 1..=(MAX_PENDING_CHECKPOINTS as u64 + 5) {
        t.report_triggered(TriggeredCheckpoint {
            id: CheckpointId(id),
            trigger_timestamp_ms: id,
            savepoint: None,
            tasks: vec![],
        });
    }
    let doc = t.snapshot();
    assert_eq!(doc.counts.in_progress, MAX_PENDING_CHECKPOINTS as u64);
    assert_eq!(doc.counts.failed, 5);
    assert!(doc
        .latest
        .failed
        .unwrap()
        .failure_message
        .unwrap()
        .contains("in flight"));
    assert_eq!(doc.history.len(), 3);

    // Restarts: all counted, the newest kept.
    for i in 0..150u32 {
        t.report_restart(RestartRecord {
            timestamp: u64::from(i),
            cause: format!("failure {i}"),
            attempt: i + 1,
            delay: Some(1000),
        });
    }
    let doc = t.snapshot();
    assert_eq!(doc.restarts.total, 150);
    assert_eq!(doc.restarts.history.len(), 100);
    assert_eq!(doc.restarts.history[0].attempt, 150);
}

#[test]
fn checkpoint_stats_json_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let t = replay(&flink("failover/checkpoints.json"), 10);
    two_operator_checkpoint(&t, 100, false);
    t.report_restart(RestartRecord {
        timestamp: 1796053612015,
        cause: "java.lang.RuntimeException: injected failure".into(),
        attempt: 1,
        delay: Some(1000),
    });
    t.write(&StdFs, dir.path()).unwrap();
    let path = dir.path().join(CHECKPOINT_STATS_FILE_NAME);
    assert!(!dir.path().join("checkpoint-stats.json.tmp").exists());
    let back = read_checkpoint_stats(dir.path()).unwrap();
    assert_eq!(back, t.snapshot());
    assert_eq!(read_checkpoint_stats(&path).unwrap(), back);
    // A later write replaces it.
    assert!(t.report_completed(CheckpointId(100), "chk-100"));
    t.write(&StdFs, dir.path()).unwrap();
    assert_eq!(read_checkpoint_stats(&path).unwrap().counts.completed, 62);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with(
            "{\"tidemark_format\": \"checkpoint-stats\", \"format_version\": 1, \"crc32c\": \""
        ),
        "{}",
        &text[..100]
    );
}

/// A file with a correct header and checksum around `fields` (the text after `"crc32c":
/// "XXXXXXXX"`).
fn framed(fields: &str) -> Vec<u8> {
    let crc = tidemark::codec::crc32c(fields.as_bytes());
    format!(
        "{{\"tidemark_format\": \"checkpoint-stats\", \"format_version\": 1, \"crc32c\": \"{crc:08x}{fields}"
    )
    .into_bytes()
}

#[test]
fn a_damaged_or_hostile_stats_file_is_an_error_naming_it() {
    let p = Path::new("/jobs/j/checkpoint-stats.json");
    let good = encode_checkpoint_stats(&replay(&flink("running/checkpoints.json"), 10).snapshot())
        .unwrap();
    assert!(decode_checkpoint_stats(p, &good).is_ok());
    let check = |bytes: &[u8], what: &str| {
        let e = decode_checkpoint_stats(p, bytes).unwrap_err();
        let s = e.to_string();
        assert!(e.is_corruption(), "{what}: {s}");
        assert!(s.contains("checkpoint-stats.json"), "{what}: {s}");
        s
    };
    // Every truncation and every single flipped bit is caught.
    for cut in 0..good.len() {
        check(&good[..cut], "truncated");
    }
    for i in 0..good.len() {
        let mut b = good.clone();
        b[i] ^= 0x10;
        check(&b, &format!("flipped at {i}"));
    }
    let s = check(b"{\"mode\": \"exactly_once\"}", "a Flink response");
    assert!(s.contains("header"), "{s}");
    // Checksums that match, contents that do not.
    let s = check(&framed("\", \"counts\": 5}"), "wrong type");
    assert!(s.contains("not a valid checkpoint-stats document"), "{s}");
    let deep = format!(
        "\", \"counts\": {}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    check(&framed(&deep), "deep nesting");
    let negative =
        String::from_utf8(good.clone())
            .unwrap()
            .replacen("\"total\": 8", "\"total\": -8", 1);
    let fields = &negative[negative.find("\",\n").unwrap()..];
    check(&framed(fields), "negative count");
    let nan = fields.replacen("\"p50\": 272591.0", "\"p50\": \"lots\"", 1);
    assert_ne!(nan, fields);
    check(&framed(&nan), "bad percentile");
    check(&framed("\"}"), "no fields");

    // Too large to be one: refused before reading.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join(CHECKPOINT_STATS_FILE_NAME);
    std::fs::File::create(&big)
        .unwrap()
        .set_len((64 << 20) + 1)
        .unwrap();
    let e = read_checkpoint_stats(dir.path()).unwrap_err();
    assert!(e.to_string().contains("larger than the limit"), "{e}");
}

// ---------------------------------------------------------------------------------------
// `tidemark checkpoints DIR`

fn job_dir_with_a_checkpoint(root: &Path) -> PathBuf {
    let db = Db::open(root.join("work"), Options::default()).unwrap();
    db.put(b"clicks:alice", b"3").unwrap();
    let storage = LocalStorage::new(
        StdFs::shared(),
        root.join("checkpoints"),
        JobId::new("job-1").unwrap(),
    );
    let store = CheckpointStore::open(Arc::new(storage), CheckpointConfig::default()).unwrap();
    let subtask = SubtaskId {
        operator_id: "counter".into(),
        subtask_index: 0,
        parallelism: 1,
        max_parallelism: 128,
        key_groups: KeyGroupRange::new(0, 127).unwrap(),
    };
    checkpoint_db(
        &store,
        CheckpointId(1),
        CheckpointKind::Incremental,
        &db,
        &subtask,
        vec![],
    )
    .unwrap();
    root.join("checkpoints/job-1")
}

fn tidemark(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn checkpoints_command_shows_the_configuration_and_statistics() {
    let tmp = tempfile::tempdir().unwrap();
    let job = job_dir_with_a_checkpoint(tmp.path());
    let dir = job.to_str().unwrap();

    // Without the files: the list alone.
    let (code, out, err) = tidemark(&["checkpoints", dir]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("configuration ("), "{out}");

    let (c, _) = build(SEED_KEYS);
    write_job_config(&StdFs, &job, &c).unwrap();
    let t = replay(&flink("failover/checkpoints.json"), 10);
    t.report_restart(RestartRecord {
        timestamp: 1796053612015,
        cause: "injected failure at record 3000000".into(),
        attempt: 1,
        delay: Some(1000),
    });
    t.write(&StdFs, &job).unwrap();

    let (code, out, err) = tidemark(&["checkpoints", dir]);
    assert_eq!(code, 0, "{err}");
    for part in [
        "configuration (job-config.json):",
        "every 200 ms, at_least_once, timeout 5 min",
        "keep 3, RETAIN_ON_CANCELLATION",
        "LsmStateBackend with FileSystemCheckpointStorage",
        "fixed-delay (3 attempts, 10 s apart)",
        "statistics (checkpoint-stats.json):",
        "66 triggered, 1 in progress, 61 completed, 4 failed, 1 restored",
        "#62",
        "Checkpoint Coordinator is suspending.",
        "#57",
        "history (newest 5 of 10 kept)",
        "IN_PROGRESS",
        "injected failure at record 3000000",
    ] {
        assert!(out.contains(part), "{part:?} missing in:\n{out}");
    }

    let (code, out, _) = tidemark(&["checkpoints", "--json", dir]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["job_config"]["interval"], 200);
    assert_eq!(v["checkpoint_stats"]["counts"]["completed"], 61);
    assert!(
        v["checkpoints"].is_array(),
        "the list is still there: {out}"
    );

    // A damaged file is shown as such; the checkpoints are still listed.
    let stats = job.join(CHECKPOINT_STATS_FILE_NAME);
    let mut bytes = std::fs::read(&stats).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&stats, &bytes).unwrap();
    let (code, out, _) = tidemark(&["checkpoints", dir]);
    assert_eq!(code, 0);
    assert!(
        out.contains("statistics: unreadable:") && out.contains("checksum mismatch"),
        "{out}"
    );
    let (_, out, _) = tidemark(&["checkpoints", "--json", dir]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["checkpoint_stats"]["error"]
        .as_str()
        .unwrap()
        .contains("checkpoint-stats.json"));
}

#[test]
fn buffers_per_channel_and_the_row_cache_are_read_and_checked() {
    let (c, _) = build(
        "taskmanager.network.memory.buffers-per-channel: 16\nstate.backend.lsm.row-cache.size: 2 mb\n",
    );
    assert_eq!(c.buffers_per_channel, 16);
    assert_eq!(c.state_backend.lsm_row_cache_size, 2 << 20);
    let options =
        tidemark::stream::JobOptions::from_config(&c, tidemark::checkpoint::JobId::random())
            .unwrap();
    assert_eq!(options.channel_capacity, 16);
    assert!(options.chaining);
    for (text, on) in [
        ("pipeline.operator-chaining.enabled: false\n", false),
        ("pipeline.operator-chaining: false\n", false),
        ("pipeline.operator-chaining.enabled: true\n", true),
    ] {
        let (c, _) = build(text);
        assert_eq!(c.operator_chaining, on, "{text}");
        let options =
            tidemark::stream::JobOptions::from_config(&c, tidemark::checkpoint::JobId::random())
                .unwrap();
        assert_eq!(options.chaining, on, "{text}");
    }
    let (d, _) = build("");
    assert!(d.operator_chaining);
    assert_eq!(d.buffers_per_channel, 4);
    assert_eq!(d.state_backend.lsm_row_cache_size, 16 << 20);
    for bad in [
        "taskmanager.network.memory.buffers-per-channel: 0\n",
        "taskmanager.network.memory.buffers-per-channel: many\n",
        "taskmanager.network.memory.buffers-per-channel: 70000\n",
        "state.backend.lsm.row-cache.size: lots\n",
        "pipeline.operator-chaining.enabled: sometimes\n",
    ] {
        let key = bad.split(':').next().unwrap();
        let e = build_err(bad);
        assert!(e.contains(key), "{bad}: {e}");
    }
}
