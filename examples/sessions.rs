//! A stream job written in Rust with tidemark: click events keyed by user, a keyed
//! function keeping each user's click count (value state) and pages seen (map state),
//! checkpoints every 200 ms with the `lsm` backend, a failure injected midway and
//! restarted by the fixed-delay strategy, and an exactly-once file sink.
//!
//! ```sh
//! cargo run --release --example sessions -- /tmp/sessions
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidemark::state::keyed::{MapStateDescriptor, ValueStateDescriptor};
use tidemark::stream::config::JobConfigBuilder;
use tidemark::stream::{
    self, FailureKind, FailurePlan, FileSink, GeneratorSource, JobOptions, KeyedContext, Output,
    StreamEnv,
};

/// One click.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Click {
    user: String,
    page: u32,
}

/// Click `i` of the generated stream: a pure function of `i`, so a replay yields the same.
fn click(i: u64) -> Click {
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    Click {
        user: format!("user{}", (h >> 40) % 1000),
        page: ((h >> 20) % 50) as u32,
    }
}

fn main() -> tidemark::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("tidemark-sessions"));
    let _ = std::fs::remove_dir_all(&dir);

    // Flink's keys, as a flink-conf.yaml would hold them.
    let mut conf = JobConfigBuilder::new();
    conf.load_str(
        &format!(
            "state.backend: lsm\n\
             state.checkpoints.dir: {}\n\
             state.backend.lsm.localdir: {}\n\
             execution.checkpointing.interval: 200 ms\n\
             restart-strategy: fixed-delay\n\
             restart-strategy.fixed-delay.attempts: 3\n\
             restart-strategy.fixed-delay.delay: 100 ms\n\
             parallelism.default: 2\n",
            dir.join("checkpoints").display(),
            dir.join("local").display()
        ),
        std::path::Path::new("<example>"),
    )?;
    let (config, _warnings) = conf.build()?;
    let options = JobOptions::from_config(&config, tidemark::checkpoint::JobId::random())?;

    let failures = Arc::new(FailurePlan::new().at_record(150_000, FailureKind::Error));
    let env = StreamEnv::new();
    env.source(GeneratorSource::new(Some(400_000), click).with_rate(200_000))
        .uid("clicks")
        .inject_failures(Arc::clone(&failures))
        .uid("chaos")
        .key_by(|c: &Click| c.user.clone())
        .process(
            |c: Click, ctx: &mut KeyedContext<'_, String>, out: &mut Output<String>| {
                let total = ValueStateDescriptor::<u64>::new("clicks");
                let pages = MapStateDescriptor::<u32, u64>::new("pages");
                let n = ctx.state().value(&total)?.get()?.unwrap_or(0) + 1;
                ctx.state().value(&total)?.update(&n)?;
                let mut seen = ctx.state().map(&pages)?;
                let p = seen.get(&c.page)?.unwrap_or(0) + 1;
                seen.put(&c.page, &p)?;
                if n % 100 == 0 {
                    out.collect(format!("{} {n}", ctx.key()));
                }
                Ok(())
            },
        )
        .uid("per-user")
        .sink_to(FileSink::new(dir.join("out")))
        .uid("sink");
    let result = stream::execute(&env.build()?, &options)?;
    let lines = stream::committed_lines(&dir.join("out"))?;
    println!(
        "job {}: {} attempts ({} injected failure), {} checkpoints, {} lines committed in {}",
        result.job_id,
        result.attempts,
        failures.fired(),
        result.checkpoints_completed,
        lines.len(),
        dir.join("out").display()
    );
    // Every user's every 100th click, exactly once, whatever failed.
    let expected: u64 = {
        let mut per_user = std::collections::HashMap::new();
        for i in 0..400_000 {
            *per_user.entry(click(i).user).or_insert(0u64) += 1;
        }
        per_user.values().map(|n| n / 100).sum()
    };
    assert_eq!(lines.len() as u64, expected);
    std::thread::sleep(Duration::from_millis(1));
    Ok(())
}
