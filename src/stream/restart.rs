//! Restart strategies: whether, and after how long, a failed job is restarted from its
//! latest checkpoint. The names, settings and defaults are Flink's
//! (`restart-strategy.type`, `restart-strategy.<name>.*`); the keys themselves are read by
//! [`super::config`], this module owns the strategies and the decision.
//!
//! | strategy | gives up when | delay |
//! | --- | --- | --- |
//! | `none` (`off`, `disable`) | at the first failure | — |
//! | `fixed-delay` | more than `attempts` failures (default 1) | `delay` (1 s) |
//! | `failure-rate` | more than `max-failures-per-interval` (1) failures within `failure-rate-interval` (1 min) | `delay` (1 s) |
//! | `exponential-delay` | never | `initial-backoff` (1 s), times `backoff-multiplier` (1.5) per failure, at most `max-backoff` (1 min), back to the initial backoff after `reset-backoff-threshold` (1 h) without failure, ± `jitter-factor` (0.1) |
//!
//! When nothing is configured the strategy follows from checkpointing
//! ([`RestartStrategyConfig::default_for`]): without checkpoints there is nothing to restart
//! from, so `none`; with checkpoints, `fixed-delay` with unlimited attempts and a 1 s delay.
//! That is the rule of the Flink the seed article describes (1.6; the rule and the
//! unlimited attempts held through Flink 1.x). Flink 2.x instead picks
//! `exponential-delay` with its defaults when checkpointing is on; tidemark keeps the older
//! rule because its restart loop is in-process and cheap, and a job that keeps failing at
//! the same record should say so at a steady pace instead of slowing down to once a
//! minute. Configure `restart-strategy.type: exponential-delay` for today's behaviour.
//!
//! A [`RestartStrategy`] is the stateful decider the restart loop asks at each failure. It
//! never reads a clock: the caller passes the time of the failure (any monotonic clock,
//! as a [`Duration`] since an epoch of its choosing), and the jitter comes from a seeded
//! generator, so a test can replay every decision exactly.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use super::config::format_duration;
use crate::error::{Error, Result};

/// `restart-strategy.fixed-delay.attempts` when not set: 1.
pub const DEFAULT_FIXED_DELAY_ATTEMPTS: u32 = 1;
/// The delay of `fixed-delay` and `failure-rate` when not set: 1 s.
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_secs(1);
/// `restart-strategy.failure-rate.max-failures-per-interval` when not set: 1.
pub const DEFAULT_MAX_FAILURES_PER_INTERVAL: u32 = 1;
/// `restart-strategy.failure-rate.failure-rate-interval` when not set: 1 min.
pub const DEFAULT_FAILURE_RATE_INTERVAL: Duration = Duration::from_secs(60);
/// `restart-strategy.exponential-delay.initial-backoff` when not set: 1 s.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// `restart-strategy.exponential-delay.max-backoff` when not set: 1 min (Flink's docs
/// before 1.19 said 5 min).
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(60);
/// `restart-strategy.exponential-delay.backoff-multiplier` when not set: 1.5 (Flink's docs
/// before 1.19 said 2.0).
pub const DEFAULT_BACKOFF_MULTIPLIER: f64 = 1.5;
/// `restart-strategy.exponential-delay.reset-backoff-threshold` when not set: 1 h.
pub const DEFAULT_RESET_BACKOFF_THRESHOLD: Duration = Duration::from_secs(3600);
/// `restart-strategy.exponential-delay.jitter-factor` when not set: 0.1.
pub const DEFAULT_JITTER_FACTOR: f64 = 0.1;
/// The `attempts` of `fixed-delay` that never run out (the default rule's "unlimited";
/// Flink writes `Integer.MAX_VALUE`).
pub const UNLIMITED_ATTEMPTS: u32 = u32::MAX;

/// The settings of `exponential-delay`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExponentialDelayConfig {
    /// The delay after the first failure (and after a reset).
    pub initial_backoff: Duration,
    /// The largest delay.
    pub max_backoff: Duration,
    /// The factor the delay grows by at each failure; greater than 1.
    pub backoff_multiplier: f64,
    /// A run this long without a failure resets the delay to the initial backoff.
    pub reset_backoff_threshold: Duration,
    /// The delay varies randomly by up to this fraction of itself, in either direction
    /// (0 to 1), so that many jobs failing together do not restart together.
    pub jitter_factor: f64,
}

impl Default for ExponentialDelayConfig {
    fn default() -> Self {
        ExponentialDelayConfig {
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            backoff_multiplier: DEFAULT_BACKOFF_MULTIPLIER,
            reset_backoff_threshold: DEFAULT_RESET_BACKOFF_THRESHOLD,
            jitter_factor: DEFAULT_JITTER_FACTOR,
        }
    }
}

/// A restart strategy and its settings, as configured (see the module documentation for
/// the keys and defaults).
#[derive(Debug, Clone, PartialEq)]
pub enum RestartStrategyConfig {
    /// `none` (also `off`, `disable`): a failure fails the job.
    None,
    /// `fixed-delay`: up to `attempts` restarts, each `delay` after its failure.
    FixedDelay {
        /// Restarts allowed over the job's life ([`UNLIMITED_ATTEMPTS`]: no limit).
        attempts: u32,
        /// Wait before each restart.
        delay: Duration,
    },
    /// `failure-rate`: restarts as long as no more than `max_failures_per_interval`
    /// failures fall within any `interval`.
    FailureRate {
        /// Failures tolerated within one interval; at least 1.
        max_failures_per_interval: u32,
        /// The sliding window the failures are counted in; longer than zero.
        interval: Duration,
        /// Wait before each restart.
        delay: Duration,
    },
    /// `exponential-delay`: restarts forever, with a growing delay.
    ExponentialDelay(ExponentialDelayConfig),
}

impl RestartStrategyConfig {
    /// `fixed-delay` with Flink's defaults for the settings not given (1 attempt, 1 s).
    pub fn fixed_delay() -> Self {
        RestartStrategyConfig::FixedDelay {
            attempts: DEFAULT_FIXED_DELAY_ATTEMPTS,
            delay: DEFAULT_RESTART_DELAY,
        }
    }

    /// `failure-rate` with Flink's defaults (1 failure per 1 min, 1 s delay).
    pub fn failure_rate() -> Self {
        RestartStrategyConfig::FailureRate {
            max_failures_per_interval: DEFAULT_MAX_FAILURES_PER_INTERVAL,
            interval: DEFAULT_FAILURE_RATE_INTERVAL,
            delay: DEFAULT_RESTART_DELAY,
        }
    }

    /// `exponential-delay` with Flink's defaults.
    pub fn exponential_delay() -> Self {
        RestartStrategyConfig::ExponentialDelay(ExponentialDelayConfig::default())
    }

    /// The strategy of a job that configures none: `none` without checkpointing,
    /// `fixed-delay` with [`UNLIMITED_ATTEMPTS`] and a 1 s delay with it (Flink 1.x's rule;
    /// Flink 2.x picks `exponential-delay`, see the module documentation).
    pub fn default_for(checkpointing_enabled: bool) -> Self {
        if checkpointing_enabled {
            RestartStrategyConfig::FixedDelay {
                attempts: UNLIMITED_ATTEMPTS,
                delay: DEFAULT_RESTART_DELAY,
            }
        } else {
            RestartStrategyConfig::None
        }
    }

    /// Flink's name of the strategy (the value of `restart-strategy.type`).
    pub fn name(&self) -> &'static str {
        match self {
            RestartStrategyConfig::None => "none",
            RestartStrategyConfig::FixedDelay { .. } => "fixed-delay",
            RestartStrategyConfig::FailureRate { .. } => "failure-rate",
            RestartStrategyConfig::ExponentialDelay(_) => "exponential-delay",
        }
    }

    /// Checks the settings against Flink's limits; the error names the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidOptions(msg));
        match self {
            RestartStrategyConfig::None | RestartStrategyConfig::FixedDelay { .. } => Ok(()),
            RestartStrategyConfig::FailureRate {
                max_failures_per_interval,
                interval,
                ..
            } => {
                if *max_failures_per_interval == 0 {
                    return bad(
                        "restart-strategy.failure-rate.max-failures-per-interval must be at least 1"
                            .into(),
                    );
                }
                if interval.is_zero() {
                    return bad(
                        "restart-strategy.failure-rate.failure-rate-interval must be longer than 0 ms"
                            .into(),
                    );
                }
                Ok(())
            }
            RestartStrategyConfig::ExponentialDelay(c) => {
                let key = "restart-strategy.exponential-delay";
                if c.initial_backoff < Duration::from_millis(1) {
                    return bad(format!("{key}.initial-backoff must be at least 1 ms"));
                }
                if c.max_backoff < c.initial_backoff {
                    return bad(format!(
                        "{key}.max-backoff ({}) must not be shorter than {key}.initial-backoff ({})",
                        format_duration(c.max_backoff),
                        format_duration(c.initial_backoff)
                    ));
                }
                if !(c.backoff_multiplier > 1.0 && c.backoff_multiplier.is_finite()) {
                    return bad(format!(
                        "{key}.backoff-multiplier must be a number greater than 1 (is {})",
                        c.backoff_multiplier
                    ));
                }
                if c.reset_backoff_threshold < Duration::from_millis(1) {
                    return bad(format!(
                        "{key}.reset-backoff-threshold must be at least 1 ms"
                    ));
                }
                if !(0.0..=1.0).contains(&c.jitter_factor) {
                    return bad(format!(
                        "{key}.jitter-factor must be between 0 and 1 (is {})",
                        c.jitter_factor
                    ));
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for RestartStrategyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartStrategyConfig::None => f.write_str("none (a failure fails the job)"),
            RestartStrategyConfig::FixedDelay { attempts, delay } => {
                if *attempts == UNLIMITED_ATTEMPTS {
                    write!(
                        f,
                        "fixed-delay (unlimited attempts, {} apart)",
                        format_duration(*delay)
                    )
                } else {
                    write!(
                        f,
                        "fixed-delay ({attempts} attempts, {} apart)",
                        format_duration(*delay)
                    )
                }
            }
            RestartStrategyConfig::FailureRate {
                max_failures_per_interval,
                interval,
                delay,
            } => write!(
                f,
                "failure-rate (at most {max_failures_per_interval} failures per {}, {} apart)",
                format_duration(*interval),
                format_duration(*delay)
            ),
            RestartStrategyConfig::ExponentialDelay(c) => write!(
                f,
                "exponential-delay (from {} growing x{} up to {}, reset after {} without failure, jitter {})",
                format_duration(c.initial_backoff),
                c.backoff_multiplier,
                format_duration(c.max_backoff),
                format_duration(c.reset_backoff_threshold),
                c.jitter_factor
            ),
        }
    }
}

/// What to do about a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart the job from its latest checkpoint after `delay`.
    Restart {
        /// How long to wait first.
        delay: Duration,
        /// Which restart this is over the job's life (1 for the first).
        attempt: u32,
    },
    /// Fail the job for good.
    GiveUp {
        /// Which limit was hit, with its setting.
        reason: String,
    },
}

/// One strategy's settings and its state between failures.
#[derive(Debug, Clone)]
enum Tracker {
    None,
    FixedDelay {
        attempts: u32,
        delay: Duration,
        failures: u64,
    },
    FailureRate {
        max_failures_per_interval: u32,
        interval: Duration,
        delay: Duration,
        /// Failure times inside the current window, oldest first; at most
        /// `max_failures_per_interval + 1` entries.
        recent: VecDeque<Duration>,
    },
    ExponentialDelay {
        config: ExponentialDelayConfig,
        /// The backoff before jitter, whole milliseconds as Flink counts them.
        current_backoff_ms: u64,
        last_failure: Option<Duration>,
    },
}

/// A small deterministic generator (SplitMix64) for the jitter: seeded by the caller, so
/// the delays of a test are reproducible.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max`.
    fn up_to(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            // Multiply-shift maps 64 random bits onto the range without a division.
            Some(n) => ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64,
            None => self.next_u64(),
        }
    }
}

/// The decider the restart loop asks at each failure of a job.
#[derive(Debug, Clone)]
pub struct RestartStrategy {
    config: RestartStrategyConfig,
    tracker: Tracker,
    restarts: u32,
    rng: SplitMix64,
}

impl RestartStrategy {
    /// A decider for `config`, with jitter seeded from the process's random hash keys.
    pub fn new(config: RestartStrategyConfig) -> Result<Self> {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x7469_6465_6d61_726b);
        Self::with_seed(config, h.finish())
    }

    /// A decider for `config` whose jitter is drawn from a generator seeded with `seed`:
    /// the same seed and failure times give the same delays.
    pub fn with_seed(config: RestartStrategyConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let tracker = match config {
            RestartStrategyConfig::None => Tracker::None,
            RestartStrategyConfig::FixedDelay { attempts, delay } => Tracker::FixedDelay {
                attempts,
                delay,
                failures: 0,
            },
            RestartStrategyConfig::FailureRate {
                max_failures_per_interval,
                interval,
                delay,
            } => Tracker::FailureRate {
                max_failures_per_interval,
                interval,
                delay,
                recent: VecDeque::new(),
            },
            RestartStrategyConfig::ExponentialDelay(c) => Tracker::ExponentialDelay {
                config: c,
                current_backoff_ms: duration_ms(c.initial_backoff),
                last_failure: None,
            },
        };
        Ok(RestartStrategy {
            config,
            tracker,
            restarts: 0,
            rng: SplitMix64(seed),
        })
    }

    /// The configuration decided on.
    pub fn config(&self) -> &RestartStrategyConfig {
        &self.config
    }

    /// Restarts granted so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Records a failure at `now` (on the caller's monotonic clock) and decides.
    pub fn on_failure(&mut self, now: Duration) -> RestartDecision {
        let decision = match &mut self.tracker {
            Tracker::None => Err(
                "the restart strategy is none (restart-strategy.type: none): a failure fails the job"
                    .to_string(),
            ),
            Tracker::FixedDelay {
                attempts,
                delay,
                failures,
            } => {
                *failures = failures.saturating_add(1);
                if *attempts != UNLIMITED_ATTEMPTS && *failures > u64::from(*attempts) {
                    Err(format!(
                        "fixed-delay: all {attempts} restart attempts are used \
                         (restart-strategy.fixed-delay.attempts: {attempts})"
                    ))
                } else {
                    Ok(*delay)
                }
            }
            Tracker::FailureRate {
                max_failures_per_interval,
                interval,
                delay,
                recent,
            } => {
                // A failure exactly one interval old still counts (Flink restarts only
                // once the oldest is more than an interval ago).
                while recent
                    .front()
                    .is_some_and(|t| now.saturating_sub(*t) > *interval)
                {
                    recent.pop_front();
                }
                recent.push_back(now);
                let limit = usize::try_from(*max_failures_per_interval).unwrap_or(usize::MAX);
                if recent.len() > limit {
                    // Bounded: only the newest `limit + 1` can matter from here on.
                    while recent.len() > limit.saturating_add(1) {
                        recent.pop_front();
                    }
                    Err(format!(
                        "failure-rate: {} failures within {} exceed the maximum of \
                         {max_failures_per_interval} per interval \
                         (restart-strategy.failure-rate.max-failures-per-interval: \
                         {max_failures_per_interval}, failure-rate-interval: {})",
                        recent.len(),
                        format_duration(*interval),
                        format_duration(*interval)
                    ))
                } else {
                    Ok(*delay)
                }
            }
            Tracker::ExponentialDelay {
                config: c,
                current_backoff_ms,
                last_failure,
            } => {
                let initial_ms = duration_ms(c.initial_backoff);
                let max_ms = duration_ms(c.max_backoff);
                match *last_failure {
                    None => *current_backoff_ms = initial_ms,
                    Some(last) => {
                        // The job ran from the restart (the last failure plus its backoff)
                        // until now; a run of at least the threshold resets the backoff.
                        let ran_ms = duration_ms(now.saturating_sub(last))
                            .saturating_sub(*current_backoff_ms);
                        if ran_ms >= duration_ms(c.reset_backoff_threshold) {
                            *current_backoff_ms = initial_ms;
                        } else {
                            if *current_backoff_ms < max_ms {
                                // Flink's arithmetic: a long times a double, truncated.
                                *current_backoff_ms =
                                    (*current_backoff_ms as f64 * c.backoff_multiplier) as u64;
                            }
                            *current_backoff_ms = (*current_backoff_ms).clamp(initial_ms, max_ms);
                        }
                    }
                }
                *last_failure = Some(now);
                let base = *current_backoff_ms;
                let offset = (base as f64 * c.jitter_factor) as u64;
                let jittered = if offset == 0 {
                    base
                } else {
                    (base - offset.min(base)).saturating_add(self.rng.up_to(offset.saturating_mul(2)))
                };
                Ok(Duration::from_millis(jittered.min(max_ms)))
            }
        };
        match decision {
            Ok(delay) => {
                self.restarts = self.restarts.saturating_add(1);
                RestartDecision::Restart {
                    delay,
                    attempt: self.restarts,
                }
            }
            Err(reason) => RestartDecision::GiveUp { reason },
        }
    }
}

/// Whole milliseconds of `d`, saturating.
fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn delay_of(d: RestartDecision) -> Duration {
        match d {
            RestartDecision::Restart { delay, .. } => delay,
            RestartDecision::GiveUp { reason } => panic!("gave up: {reason}"),
        }
    }

    #[test]
    fn splitmix_range_is_inclusive_and_covers_both_ends() {
        let mut r = SplitMix64(7);
        let mut seen = [false; 3];
        for _ in 0..200 {
            let v = r.up_to(2);
            assert!(v <= 2);
            seen[v as usize] = true;
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn exponential_first_failure_gets_the_initial_backoff_whatever_the_clock() {
        let c = ExponentialDelayConfig {
            jitter_factor: 0.0,
            ..ExponentialDelayConfig::default()
        };
        let mut s =
            RestartStrategy::with_seed(RestartStrategyConfig::ExponentialDelay(c), 1).unwrap();
        assert_eq!(delay_of(s.on_failure(secs(5))), secs(1));
    }
}
