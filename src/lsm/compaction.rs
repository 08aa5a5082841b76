//! Leveled compaction: picking what to compact, merging it while keeping every version a
//! live snapshot can see, and the compaction thread.
//!
//! Level 0 holds flushed memtables, which may overlap; every deeper level is a sorted run
//! of disjoint files about `level_size_multiplier` times the size of the level above.
//! A compaction of level `n` (`n >= 1`) merges some of its files with the overlapping files
//! of level `n + 1` and writes the result to `n + 1`; a compaction of level 0 merges every
//! level-0 file into the *base level*, once L0 holds `l0_compaction_trigger` files, or
//! twice that while the base-level files it would rewrite hold more bytes than L0 (a
//! store whose base level is large next to a flush pays fewer bytes per flushed byte).
//! Output is cut into files of about `target_file_size_bytes` (always at a user-key
//! boundary, so the files of a level stay disjoint). Files that overlap nothing in the output level (nor each other) are moved,
//! not rewritten: a trivial move is a manifest edit only, as in LevelDB and RocksDB,
//! allowed while the moved files overlap at most `MAX_GRANDPARENT_OVERLAP_FILES`
//! target-sized files' worth of the level below the output (so a later compaction of them
//! stays small).
//!
//! Level sizes ([`level_targets`]) are static or dynamic:
//! - static (`level_compaction_dynamic_level_bytes = false`): level 1 is the base level,
//!   its target is `max_bytes_for_level_base`, each deeper level's is
//!   `level_size_multiplier` times the one above;
//! - dynamic (the default, RocksDB's `level_compaction_dynamic_level_bytes`): the targets
//!   are worked out upwards from the size of the largest level below 0 (normally the last
//!   level), each level `level_size_multiplier` times smaller than the one below. The base
//!   level is the shallowest level whose target so computed is above
//!   `max_bytes_for_level_base / level_size_multiplier`; the levels above it stay empty
//!   and level 0 compacts straight into it. A small store is thus one level-0 and one
//!   last level, and a level is added above the others only when the data needs it.
//!   No target is set below `max_bytes_for_level_base` (the base level's target is at
//!   least that). The base level is never below a level holding data: a level holding
//!   data above the level the sizes call for (after the store shrank, or opened with
//!   static sizes before) is drained into the level below, and a level holding data above
//!   an empty level moves down whole (a manifest edit).
//!
//! A manual full compaction merges every file of every level in one pass into one level,
//! so each live byte is written once: with dynamic sizes the last level; with static
//! sizes the deepest level holding data, or deeper while the data exceeds that level's
//! target.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::MutexGuard;

use super::db::{DbInner, State};
use super::filename::table_path;
use super::iter::MergingIter;
use super::manifest::{NewFile, VersionEdit};
use super::options::FilterDecision;
use super::sst::{TableBuilder, TableOptions};
use super::stats::Counters;
use super::types::{
    append_internal_key, compare_internal_keys, make_internal_key, parse_internal_key, seek_key,
    snapshot_stripe, user_key, InternalIterator, SeqNo, ValueKind,
};
use super::version::{FileMeta, LevelIter, Version};
use crate::error::{Error, Result};

/// A manual full compaction requested by `Db::compact_range`.
#[derive(Debug, Default)]
pub struct ManualCompaction {
    /// Set by the compaction thread when it is done.
    pub done: Option<Result<()>>,
}

/// A trivial move is allowed while the moved files overlap at most this many target-sized
/// files' worth of bytes two levels down (LevelDB's `kMaxGrandParentOverlapBytes`).
const MAX_GRANDPARENT_OVERLAP_FILES: u64 = 10;

/// What one compaction will do.
struct Plan {
    /// Input files by level, shallowest level first.
    inputs: Vec<(usize, Vec<Arc<FileMeta>>)>,
    out_level: usize,
    /// Move the inputs (all on one level above `out_level`) instead of rewriting them.
    trivial_move: bool,
    /// The round-robin pointer to record: (level, largest key compacted there).
    pointer: Option<(usize, Vec<u8>)>,
}

impl Plan {
    fn all_inputs(&self) -> impl Iterator<Item = &Arc<FileMeta>> {
        self.inputs.iter().flat_map(|(_, files)| files.iter())
    }
}

/// True when `files` of `level` can move to `out_level` as they are: they are disjoint
/// (always below level 0), none overlaps a file of `out_level`, and each overlaps little
/// of `out_level + 1`. Every level strictly between the two is empty (the base level is
/// the first level below 0 holding data, or above it).
fn can_move(
    inner: &DbInner,
    v: &Version,
    level: usize,
    out_level: usize,
    files: &[Arc<FileMeta>],
) -> bool {
    if level == 0 && !disjoint(files) {
        return false;
    }
    let limit = inner
        .opts
        .target_file_size_bytes
        .saturating_mul(MAX_GRANDPARENT_OVERLAP_FILES);
    files.iter().all(|f| {
        let (lo, hi) = f.user_range();
        let grandparent_bytes: u64 = v
            .overlapping(out_level + 1, lo, hi)
            .iter()
            .map(|g| g.size)
            .sum();
        v.overlapping(out_level, lo, hi).is_empty() && grandparent_bytes <= limit
    })
}

/// True when no two of `files` share a user key.
fn disjoint(files: &[Arc<FileMeta>]) -> bool {
    let mut ranges: Vec<(&[u8], &[u8])> = files.iter().map(|f| f.user_range()).collect();
    ranges.sort();
    ranges.windows(2).all(|w| w[0].1 < w[1].0)
}

/// The size targets of the levels of one version, and where level 0 compacts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LevelTargets {
    /// The level that level-0 compactions write to: 1 with static sizes; with dynamic
    /// sizes the level the sizes call for, or the first level holding data if that is
    /// above it.
    pub base_level: usize,
    /// The level the sizes call for as the base level (dynamic sizes); levels from
    /// `base_level` up to this one (excluded) that hold data are drained downwards.
    pub wanted_base_level: usize,
    /// Target bytes of each level; `u64::MAX` (no target) for level 0, which is
    /// compacted by its file count, and for the levels above the base level.
    pub max_bytes: Vec<u64>,
}

/// The size targets of levels holding `level_bytes` (index 0 is level 0, whose size is
/// not used), with base `base_bytes` and ratio `multiplier` between adjacent levels, static
/// or dynamic (see the module documentation).
pub(crate) fn level_targets(
    level_bytes: &[u64],
    base_bytes: u64,
    multiplier: u64,
    dynamic: bool,
) -> LevelTargets {
    let n = level_bytes.len();
    let last = n.saturating_sub(1);
    let multiplier = multiplier.max(2);
    // Static sizes: base * multiplier^(level - 1).
    let static_target = |level: usize| -> u64 {
        let mut b = base_bytes;
        for _ in 1..level {
            b = b.saturating_mul(multiplier);
        }
        b
    };
    let mut max_bytes = vec![u64::MAX; n];
    if !dynamic || last < 1 {
        for (level, t) in max_bytes.iter_mut().enumerate().skip(1) {
            *t = static_target(level);
        }
        return LevelTargets {
            base_level: 1.min(last),
            wanted_base_level: 1.min(last),
            max_bytes,
        };
    }
    let largest = level_bytes[1..].iter().copied().max().unwrap_or(0);
    // Targets from the bottom up: the last level's is the largest level's size.
    let mut nominal = vec![0u64; n];
    nominal[last] = largest;
    for level in (1..last).rev() {
        nominal[level] = nominal[level + 1] / multiplier;
    }
    // The shallowest level whose target is above base / multiplier (the last level while
    // the whole store is that small).
    let min_base = base_bytes / multiplier;
    let wanted = (1..=last).find(|&l| nominal[l] > min_base).unwrap_or(last);
    let first_non_empty = (1..=last).find(|&l| level_bytes[l] > 0).unwrap_or(last);
    let base_level = wanted.min(first_non_empty);
    for (level, t) in max_bytes.iter_mut().enumerate().skip(base_level) {
        // Past the static sizes (a store larger than they hold) the static ones apply;
        // no target is below the base size.
        *t = nominal[level].min(static_target(level)).max(base_bytes);
    }
    LevelTargets {
        base_level,
        wanted_base_level: wanted,
        max_bytes,
    }
}

/// The size targets of the levels of `v` under the store's options.
pub(crate) fn targets_of(inner: &DbInner, v: &Version) -> LevelTargets {
    let o = &inner.opts;
    let bytes: Vec<u64> = (0..v.levels.len()).map(|l| v.level_bytes(l)).collect();
    level_targets(
        &bytes,
        o.max_bytes_for_level_base,
        o.level_size_multiplier,
        o.level_compaction_dynamic_level_bytes,
    )
}

/// What an automatic compaction should do next.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pick {
    /// Move every file of a level, whose next level is empty, down to `to` (dynamic
    /// sizes): levels `level + 1 ..= to` are empty.
    MoveLevel { level: usize, to: usize },
    /// Compact this level (score >= 1).
    Level { level: usize, score: f64 },
}

/// The level most in need of compaction, with its score (>= 1 means needed); with dynamic
/// sizes, a level to move down whole comes first.
fn pick_level(inner: &DbInner, v: &Version) -> Option<Pick> {
    let last = v.levels.len() - 1;
    let dynamic = inner.opts.level_compaction_dynamic_level_bytes;
    if dynamic {
        // The deepest level holding data above an empty level moves down, as deep as the
        // empty levels go: data settles at the bottom, as the dynamic sizes expect.
        for level in (1..last).rev() {
            if v.num_files(level) > 0 && v.num_files(level + 1) == 0 {
                let mut to = level + 1;
                while to < last && v.num_files(to + 1) == 0 {
                    to += 1;
                }
                return Some(Pick::MoveLevel { level, to });
            }
        }
    }
    let targets = targets_of(inner, v);
    let mut best: Option<(usize, f64)> = None;
    for level in 0..last {
        let bytes = v.level_bytes(level);
        let mut score = if level == 0 {
            if l0_waits_for_more_files(inner, v, targets.base_level) {
                continue;
            }
            v.num_files(0) as f64 / inner.opts.l0_compaction_trigger as f64
        } else {
            bytes as f64 / targets.max_bytes[level] as f64
        };
        if dynamic && level >= 1 && level < targets.wanted_base_level && bytes > 0 {
            // Holds data the sizes do not call for: drain it, after anything more urgent.
            score = score.max(1.0);
        }
        if score >= 1.0 && best.is_none_or(|(_, s)| score > s) {
            best = Some((level, score));
        }
    }
    best.map(|(level, score)| Pick::Level { level, score })
}

/// True when a level-0 compaction into `base_level` should wait for more level-0 files:
/// L0 holds fewer than twice `l0_compaction_trigger` files (and fewer than
/// `l0_slowdown_writes_trigger`), and the base-level files the compaction would rewrite
/// hold more bytes than L0 does. Each L0 byte would then cost more than two bytes
/// written; a few more flushes in the same compaction bring that down, at the price of
/// a few more L0 files for reads to check (their bloom filters answer most of them).
fn l0_waits_for_more_files(inner: &DbInner, v: &Version, base_level: usize) -> bool {
    let o = &inner.opts;
    let most = o
        .l0_compaction_trigger
        .saturating_mul(2)
        .min(o.l0_slowdown_writes_trigger);
    if v.num_files(0) >= most || base_level == 0 {
        return false;
    }
    let Some((lo, hi)) = key_span(&v.levels[0]) else {
        return false;
    };
    let rewritten: u64 = v
        .overlapping(base_level, &lo, &hi)
        .iter()
        .map(|f| f.size)
        .sum();
    rewritten > v.level_bytes(0)
}

/// True when some level is due for an automatic compaction.
pub(crate) fn needs_compaction(inner: &DbInner, v: &Version) -> bool {
    pick_level(inner, v).is_some()
}

fn key_span(files: &[Arc<FileMeta>]) -> Option<(Vec<u8>, Vec<u8>)> {
    let lo = files.iter().map(|f| user_key(&f.smallest)).min()?;
    let hi = files.iter().map(|f| user_key(&f.largest)).max()?;
    Some((lo.to_vec(), hi.to_vec()))
}

/// Chooses the inputs of an automatic compaction of `level`.
fn plan_for_level(inner: &DbInner, st: &State, level: usize) -> Option<Plan> {
    let v = st.vs.current();
    let out_level = if level == 0 {
        targets_of(inner, &v).base_level
    } else {
        level + 1
    };
    let inputs: Vec<Arc<FileMeta>> = if level == 0 {
        // Every L0 file: they may overlap each other, and merging them all keeps L0 short.
        v.levels[0].clone()
    } else {
        // Round robin through the level, starting after the last compacted key.
        let files = &v.levels[level];
        let pointer = st
            .vs
            .compact_pointers
            .get(level)
            .cloned()
            .unwrap_or_default();
        let pick = files
            .iter()
            .find(|f| pointer.is_empty() || compare_internal_keys(&f.largest, &pointer).is_gt())
            .or_else(|| files.first())?;
        vec![pick.clone()]
    };
    if inputs.is_empty() {
        return None;
    }
    let pointer = (level > 0)
        .then(|| {
            inputs
                .iter()
                .map(|f| &f.largest)
                .max_by(|a, b| compare_internal_keys(a, b))
                .map(|k| (level, k.clone()))
        })
        .flatten();
    if can_move(inner, &v, level, out_level, &inputs) {
        return Some(Plan {
            inputs: vec![(level, inputs)],
            out_level,
            trivial_move: true,
            pointer,
        });
    }
    let (lo, hi) = key_span(&inputs)?;
    let next = v.overlapping(out_level, &lo, &hi);
    let mut levels = vec![(level, inputs)];
    if !next.is_empty() {
        levels.push((out_level, next));
    }
    Some(Plan {
        inputs: levels,
        out_level,
        trivial_move: false,
        pointer,
    })
}

/// True when no level below `output_level` holds `ukey`, so a tombstone for it that no
/// snapshot needs can be dropped.
fn is_base_level_for(v: &Version, output_level: usize, ukey: &[u8]) -> bool {
    v.levels.iter().skip(output_level + 1).all(|files| {
        files.iter().all(|f| {
            let (lo, hi) = f.user_range();
            ukey < lo || ukey > hi
        })
    })
}

/// Runs one automatic compaction if a level needs it. Returns whether one ran.
fn compact_once(inner: &DbInner, st: &mut MutexGuard<'_, State>) -> Result<bool> {
    let v = st.vs.current();
    let plan = match pick_level(inner, &v) {
        None => return Ok(false),
        Some(Pick::MoveLevel { level, to }) => Plan {
            inputs: vec![(level, v.levels[level].clone())],
            out_level: to,
            trivial_move: true,
            pointer: None,
        },
        Some(Pick::Level { level, .. }) => match plan_for_level(inner, st, level) {
            Some(plan) => plan,
            None => return Ok(false),
        },
    };
    run_plan(inner, st, plan)?;
    Ok(true)
}

fn run_plan(inner: &DbInner, st: &mut MutexGuard<'_, State>, plan: Plan) -> Result<()> {
    let out_level = plan.out_level;
    let mut edit = VersionEdit::default();
    for (level, files) in &plan.inputs {
        for f in files {
            edit.deleted_files.push((*level as u32, f.number));
        }
    }
    if let Some((level, key)) = &plan.pointer {
        edit.compact_pointers.push((*level as u32, key.clone()));
    }
    if plan.trivial_move {
        assert!(
            plan.inputs.len() == 1 && plan.inputs[0].0 < out_level,
            "a trivial move takes the files of one level above its output level"
        );
        for f in plan.all_inputs() {
            edit.new_files.push(f.to_new_file(out_level as u32));
        }
        st.vs.log_and_apply(edit)?;
        inner.publish(st);
        Counters::add(&inner.counters.compactions, 1);
        Counters::add(&inner.counters.trivial_moves, 1);
        return Ok(());
    }
    let version = st.vs.current();
    // Snapshots are taken under the state lock, held here: one opened later reads at a
    // number above every input entry, and so sees the newest version of each key.
    let snapshots = inner.snapshot_seqs();
    // The filter runs only if no snapshot is open now (snapshots are taken under the state
    // lock, held here); one taken while the merge runs makes the result be discarded.
    let snapshot_epoch = inner.snapshot_epoch();
    let filter = inner
        .opts
        .compaction_filter
        .clone()
        .filter(|_| !inner.has_snapshots());
    let filtering = filter.is_some();
    let bytes_read: u64 = plan.all_inputs().map(|f| f.size).sum();
    let target = inner.opts.target_file_size_bytes.max(1);
    let ways = if bytes_read >= target.saturating_mul(2) {
        inner.opts.max_subcompactions
    } else {
        1
    };
    let ranges = subcompaction_ranges(&plan, ways);
    // File numbers need the state lock: reserve enough for the worst case up front (each
    // range could, at worst, hold every input byte).
    let estimate = (bytes_read / target) as usize + 2;
    let numbers: Vec<Vec<_>> = ranges
        .iter()
        .map(|_| (0..estimate).map(|_| st.vs.new_file_number()).collect())
        .collect();
    let job = MergeJob {
        inner,
        plan: &plan,
        version: &version,
        snapshots: &snapshots,
        filter,
    };
    let outputs = MutexGuard::unlocked(st, || job.run(ranges, numbers))?;
    crate::failpoint::hit("compaction.tables_written");
    if filtering && inner.snapshot_epoch() != snapshot_epoch {
        // A snapshot opened while the filter ran: installing its decisions would change
        // what the snapshot sees. Drop the output; a later compaction redoes the work.
        for f in &outputs {
            let _ = inner.fs.remove_file(&table_path(&inner.dir, f.number));
        }
        Counters::add(&inner.counters.compaction_filter_discarded, 1);
        return Ok(());
    }
    let written: u64 = outputs.iter().map(|f| f.size).sum();
    edit.new_files.extend(outputs);
    st.vs.log_and_apply(edit)?;
    crate::failpoint::hit("compaction.edit_logged");
    inner.publish(st);
    Counters::add(&inner.counters.compactions, 1);
    Counters::add(&inner.counters.compaction_bytes_read, bytes_read);
    Counters::add(&inner.counters.compaction_bytes_written, written);
    Ok(())
}

/// A user-key range of a compaction: from the first bound (inclusive; `None`: the first
/// key) to the second (exclusive; `None`: past the last key).
type KeyRange = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Splits the key space of `plan`'s inputs into at most `ways` ranges of about equal input
/// bytes, cut at the smallest user keys of input files below level 0 (level-0 files may
/// each span the whole key space, so their first keys say little about where their bytes
/// lie). One range (everything) when `ways` is 1 or there is nothing to cut at.
fn subcompaction_ranges(plan: &Plan, ways: usize) -> Vec<KeyRange> {
    let mut starts: Vec<(&[u8], u64)> = plan
        .inputs
        .iter()
        .filter(|(level, _)| *level > 0)
        .flat_map(|(_, files)| files.iter().map(|f| (f.user_range().0, f.size)))
        .collect();
    starts.sort_unstable();
    let total: u128 = starts.iter().map(|&(_, size)| size as u128).sum();
    let mut cuts: Vec<Vec<u8>> = Vec::new();
    let mut before: u128 = 0;
    for &(key, size) in &starts {
        let wanted = cuts.len() + 1;
        if wanted >= ways {
            break;
        }
        // Cut before this file once the files before it hold their share of the bytes.
        let share = total * wanted as u128 / ways as u128;
        if before > 0 && before >= share && cuts.last().is_none_or(|c| c.as_slice() < key) {
            cuts.push(key.to_vec());
        }
        before += size as u128;
    }
    let mut ranges = Vec::with_capacity(cuts.len() + 1);
    let mut lower = None;
    for cut in cuts {
        ranges.push((lower, Some(cut.clone())));
        lower = Some(cut);
    }
    ranges.push((lower, None));
    ranges
}

/// What every range of one compaction shares.
struct MergeJob<'a> {
    inner: &'a DbInner,
    plan: &'a Plan,
    version: &'a Version,
    /// The sequence numbers of the open snapshots, ascending.
    snapshots: &'a [u64],
    filter: Option<Arc<dyn super::options::CompactionFilter>>,
}

impl MergeJob<'_> {
    /// Merges every range (each with its file numbers), the first on this thread and each
    /// other on a thread of its own, and returns their output files in key order. If one
    /// range fails, the files the others wrote are removed and the first error returned.
    fn run(
        &self,
        ranges: Vec<KeyRange>,
        numbers: Vec<Vec<super::types::FileNumber>>,
    ) -> Result<Vec<NewFile>> {
        let mut work = ranges.iter().zip(numbers);
        let Some((first, first_numbers)) = work.next() else {
            return Ok(Vec::new());
        };
        let results: Vec<Result<Vec<NewFile>>> = std::thread::scope(|s| {
            let spawned: Vec<_> = work
                .map(|(range, numbers)| {
                    let spare = numbers.clone();
                    let spawn = std::thread::Builder::new()
                        .name("tidemark-subcompaction".into())
                        .spawn_scoped(s, move || self.merge_range(range, numbers));
                    // No thread to be had: merge the range here, after the first.
                    spawn.map_err(|_| (range, spare))
                })
                .collect();
            let mut results = vec![self.merge_range(first, first_numbers)];
            for h in spawned {
                results.push(match h {
                    Ok(h) => {
                        Counters::add(&self.inner.counters.subcompactions, 1);
                        h.join().unwrap_or_else(|_| {
                            Err(Error::InvalidArgument(
                                "a subcompaction thread panicked".into(),
                            ))
                        })
                    }
                    Err((range, numbers)) => self.merge_range(range, numbers),
                });
            }
            results
        });
        let mut outputs = Vec::new();
        let mut first_error = None;
        for r in results {
            match r {
                Ok(files) => outputs.extend(files),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            for f in &outputs {
                let _ = self
                    .inner
                    .fs
                    .remove_file(&table_path(&self.inner.dir, f.number));
            }
            return Err(e);
        }
        Ok(outputs)
    }

    /// Merges the inputs' entries whose user keys lie in `range`.
    fn merge_range(
        &self,
        range: &KeyRange,
        numbers: Vec<super::types::FileNumber>,
    ) -> Result<Vec<NewFile>> {
        let mut children: Vec<LevelIter> = Vec::new();
        for (level, files) in &self.plan.inputs {
            if *level == 0 {
                // Level-0 files may overlap: each is its own sorted run.
                for f in files {
                    children.push(LevelIter::sequential(vec![f.clone()]));
                }
            } else {
                children.push(LevelIter::sequential(files.clone()));
            }
        }
        let mut merged = MergingIter::new(children);
        merge_into_tables(
            self.inner,
            &mut merged,
            range,
            self.version,
            self.plan.out_level,
            self.snapshots,
            numbers,
            self.filter.clone(),
        )
    }
}

/// Merges the entries of `input` whose user keys lie in `range` into tables of
/// `out_level`, dropping versions no reader can see: a version whose next newer version is
/// seen by every reader that could see it (no snapshot in `snapshots`, ascending, reads at
/// a number from the older version's up to the newer one's), and a tombstone every reader
/// sees when nothing older of its key lies below `out_level`. File numbers come from `numbers`;
/// when they run out the output continues in the last file (past its target size) rather
/// than taking the state lock.
#[allow(clippy::too_many_arguments)]
fn merge_into_tables(
    inner: &DbInner,
    input: &mut MergingIter<LevelIter>,
    range: &KeyRange,
    version: &Version,
    out_level: usize,
    snapshots: &[u64],
    numbers: Vec<super::types::FileNumber>,
    filter: Option<Arc<dyn super::options::CompactionFilter>>,
) -> Result<Vec<NewFile>> {
    let mut outputs: Vec<NewFile> = Vec::new();
    let mut written_paths = Vec::new();
    let result = (|| {
        let mut numbers = numbers.into_iter();
        let mut builder: Option<(TableBuilder, super::types::FileNumber)> = None;
        let mut current_key: Vec<u8> = Vec::new();
        let mut have_key = false;
        // The snapshot stripe of the key's previous (newer) version.
        let mut prev_stripe: Option<usize> = None;
        let mut last_ikey: Vec<u8> = Vec::new();
        // With nothing below the output, a put every reader sees is the oldest version of
        // its key anywhere: it is written with sequence number 0 (RocksDB's bottommost
        // zeroing), which every reader sees as well and which compresses to nothing.
        let bottommost = version
            .levels
            .iter()
            .skip(out_level + 1)
            .all(|f| f.is_empty());
        let mut zeroed: Vec<u8> = Vec::new();
        match &range.0 {
            Some(lower) => input.seek(&seek_key(lower, SeqNo::MAX)),
            None => input.seek_to_first(),
        }
        while input.valid() {
            if inner.is_shutting_down() {
                return Err(Error::Closed);
            }
            let ikey = input.key();
            let p = parse_internal_key(ikey).ok_or_else(|| {
                Error::corruption(
                    "<compaction input>",
                    0,
                    "entry without a valid internal key",
                )
            })?;
            if range.1.as_deref().is_some_and(|upper| p.user_key >= upper) {
                break;
            }
            if ikey == last_ikey.as_slice() {
                // The same write twice (a log replayed twice before a crash): keep one.
                input.next();
                continue;
            }
            let new_key = !have_key || p.user_key != current_key.as_slice();
            if new_key {
                // Cut the output at a user-key boundary once it is large enough.
                let full = builder.as_ref().is_some_and(|(b, _)| {
                    b.estimated_file_size() >= inner.opts.target_file_size_bytes
                });
                if full && numbers.len() > 0 {
                    if let Some((b, n)) = builder.take() {
                        outputs.push(finish_table(b, n, out_level)?);
                    }
                }
                current_key.clear();
                current_key.extend_from_slice(p.user_key);
                have_key = true;
                prev_stripe = None;
            }
            let here = snapshot_stripe(snapshots, p.seq.0);
            let drop_entry = if prev_stripe == Some(here) {
                // Every reader that could see this version sees the newer one.
                true
            } else {
                // A tombstone every reader sees, with nothing older below to hide.
                p.kind == ValueKind::Delete
                    && here == 0
                    && is_base_level_for(version, out_level, p.user_key)
            };
            prev_stripe = Some(here);
            last_ikey.clear();
            last_ikey.extend_from_slice(ikey);
            // The application's filter, for the newest value of the key, when no snapshot
            // could see the value change.
            let mut replaced: Option<(Vec<u8>, Vec<u8>)> = None;
            let mut drop_entry = drop_entry;
            if let (false, true, ValueKind::Put, Some(f)) =
                (drop_entry, new_key, p.kind, filter.as_ref())
            {
                match f.filter(out_level, p.user_key, input.value()) {
                    FilterDecision::Keep => {}
                    FilterDecision::Change(v) => {
                        replaced = Some((ikey.to_vec(), v));
                        Counters::add(&inner.counters.compaction_filter_changed, 1);
                    }
                    FilterDecision::Remove => {
                        Counters::add(&inner.counters.compaction_filter_removed, 1);
                        if is_base_level_for(version, out_level, p.user_key) {
                            drop_entry = true;
                        } else {
                            let tomb = make_internal_key(p.user_key, p.seq, ValueKind::Delete);
                            replaced = Some((tomb, Vec::new()));
                        }
                    }
                }
                // Whatever was decided, every older version goes: with no snapshot open,
                // every version shares this one's stripe.
            }
            if !drop_entry {
                if builder.is_none() {
                    let n = match numbers.next() {
                        Some(n) => n,
                        None => {
                            return Err(Error::InvalidArgument(
                                "compaction ran out of file numbers".into(),
                            ))
                        }
                    };
                    let path = table_path(&inner.dir, n);
                    written_paths.push(path.clone());
                    let file = inner.fs.create(&path)?;
                    builder = Some((
                        TableBuilder::new(file, TableOptions::from_options(&inner.opts)),
                        n,
                    ));
                }
                if let Some((b, _)) = builder.as_mut() {
                    let zero = bottommost && here == 0 && p.seq.0 != 0;
                    match &replaced {
                        Some((k, v)) => b.add(k, v)?,
                        None if zero && p.kind == ValueKind::Put => {
                            zeroed.clear();
                            append_internal_key(&mut zeroed, p.user_key, SeqNo(0), p.kind);
                            b.add(&zeroed, input.value())?
                        }
                        None => b.add(ikey, input.value())?,
                    }
                }
            }
            input.next();
        }
        input.status()?;
        if let Some((b, n)) = builder.take() {
            outputs.push(finish_table(b, n, out_level)?);
        }
        inner.fs.sync_dir(&inner.dir)?;
        Ok(())
    })();
    match result {
        Ok(()) => Ok(outputs),
        Err(e) => {
            for p in written_paths {
                let _ = inner.fs.remove_file(&p);
            }
            Err(e)
        }
    }
}

fn finish_table(
    b: TableBuilder,
    number: super::types::FileNumber,
    level: usize,
) -> Result<NewFile> {
    let props = b.finish()?;
    Ok(NewFile {
        level: level as u32,
        number,
        size: props.file_size,
        file_crc32c: props.file_crc32c,
        smallest: props.smallest_key,
        largest: props.largest_key,
        smallest_seq: props.smallest_seq,
        largest_seq: props.largest_seq,
        num_entries: props.num_entries,
    })
}

/// The compaction thread: runs requested manual compactions and automatic ones.
pub(crate) fn compaction_loop(inner: Arc<DbInner>) {
    let mut st = inner.state().lock();
    loop {
        if inner.is_shutting_down() {
            if let Some(m) = st.manual.as_mut() {
                m.done.get_or_insert(Err(Error::Closed));
            }
            inner.bg_condvar().notify_all();
            return;
        }
        if inner.has_bg_error() {
            if let Some(m) = st.manual.as_mut() {
                if m.done.is_none() {
                    m.done = Some(inner.check_bg_error());
                    inner.bg_condvar().notify_all();
                }
            }
            inner
                .bg_condvar()
                .wait_for(&mut st, Duration::from_millis(100));
            continue;
        }
        if st.manual.as_ref().is_some_and(|m| m.done.is_none()) {
            let r = full_compaction(&inner, &mut st);
            if let Err(e) = &r {
                if !matches!(e, Error::Closed) {
                    inner.set_bg_error(e.clone());
                }
            }
            if let Some(m) = st.manual.as_mut() {
                m.done = Some(r);
            }
            inner.bg_condvar().notify_all();
            continue;
        }
        if inner.opts.compaction {
            match compact_once(&inner, &mut st) {
                Ok(true) => {
                    inner.bg_condvar().notify_all();
                    continue;
                }
                Ok(false) => {}
                Err(Error::Closed) => continue,
                Err(e) => {
                    inner.set_bg_error(e);
                    inner.bg_condvar().notify_all();
                    continue;
                }
            }
        }
        inner
            .bg_condvar()
            .wait_for(&mut st, Duration::from_millis(500));
    }
}

/// Merges every file of every level in one pass into one level, dropping tombstones and
/// shadowed versions no snapshot needs. With dynamic level sizes the output is the last
/// level (whose target is its own size); with static sizes, the deepest level holding
/// data, or deeper while the data exceeds that level's target size (so no automatic
/// compaction has to push it down again). Data already in one run in the output level
/// (and no compaction filter that must meet every value) is left as it is.
fn full_compaction(inner: &DbInner, st: &mut MutexGuard<'_, State>) -> Result<()> {
    let v = st.vs.current();
    let last = v.levels.len() - 1;
    let Some(deepest) = (0..=last).rev().find(|&l| !v.levels[l].is_empty()) else {
        return Ok(());
    };
    let out_level = if inner.opts.level_compaction_dynamic_level_bytes {
        last
    } else {
        let total: u64 = (0..=last).map(|l| v.level_bytes(l)).sum();
        let targets = targets_of(inner, &v);
        let mut out_level = deepest.max(1);
        while out_level < last && total > targets.max_bytes[out_level] {
            out_level += 1;
        }
        out_level
    };
    let inputs: Vec<(usize, Vec<Arc<FileMeta>>)> = (0..=last)
        .filter(|&l| !v.levels[l].is_empty())
        .map(|l| (l, v.levels[l].clone()))
        .collect();
    let one_run = inputs.len() == 1 && inputs[0].0 == out_level;
    if one_run && inner.opts.compaction_filter.is_none() {
        return Ok(());
    }
    let plan = Plan {
        inputs,
        out_level,
        trivial_move: false,
        pointer: None,
    };
    run_plan(inner, st, plan)
}

/// Asks the compaction thread for a full compaction and waits for it.
pub(crate) fn run_manual(inner: &Arc<DbInner>) -> Result<()> {
    let mut st = inner.state().lock();
    while st.manual.is_some() {
        inner.check_bg_error()?;
        inner
            .bg_condvar()
            .wait_for(&mut st, Duration::from_millis(100));
    }
    st.manual = Some(ManualCompaction::default());
    inner.bg_condvar().notify_all();
    loop {
        if let Some(done) = st.manual.as_mut().and_then(|m| m.done.take()) {
            st.manual = None;
            inner.bg_condvar().notify_all();
            return done;
        }
        inner
            .bg_condvar()
            .wait_for(&mut st, Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const BASE: u64 = 256 * MIB;

    fn dynamic(bytes: &[u64]) -> LevelTargets {
        level_targets(bytes, BASE, 10, true)
    }

    #[test]
    fn static_targets_grow_from_level_one() {
        let t = level_targets(&[5 * MIB, 0, 0, 0, 0, 0, 9 * MIB], BASE, 10, false);
        assert_eq!(t.base_level, 1);
        assert_eq!(t.wanted_base_level, 1);
        assert_eq!(t.max_bytes[0], u64::MAX);
        assert_eq!(t.max_bytes[1], BASE);
        assert_eq!(t.max_bytes[2], 10 * BASE);
        assert_eq!(t.max_bytes[6], 100_000 * BASE);
    }

    #[test]
    fn an_empty_store_compacts_level_zero_into_the_last_level() {
        let t = dynamic(&[40 * MIB, 0, 0, 0, 0, 0, 0]);
        assert_eq!(t.base_level, 6);
        assert_eq!(t.wanted_base_level, 6);
        assert!(t.max_bytes[..6].iter().all(|&b| b == u64::MAX), "{t:?}");
    }

    #[test]
    fn a_small_store_is_one_level_below_level_zero() {
        // 100 MiB: a level above would have a target of 10 MiB, below 256 MiB / 10.
        let t = dynamic(&[0, 0, 0, 0, 0, 0, 100 * MIB]);
        assert_eq!(t.base_level, 6);
        assert_eq!(t.max_bytes[6], BASE, "no target below the base size");
        // Just above base * 10 at the bottom, the level above is wanted.
        let t = dynamic(&[0, 0, 0, 0, 0, 0, 10 * BASE / 4]);
        assert_eq!(t.base_level, 5, "{t:?}");
        // Exactly base: the level above would be base / 10, not above it.
        let t = dynamic(&[0, 0, 0, 0, 0, 0, BASE]);
        assert_eq!(t.base_level, 6, "{t:?}");
    }

    #[test]
    fn targets_are_worked_out_upwards_from_the_last_level() {
        let last = 100 * 1024 * MIB; // 100 GiB
        let t = dynamic(&[0, 0, 0, 0, 0, 3 * MIB, last]);
        // 100 GiB, 10 GiB, 1 GiB, 102.4 MiB (above 25.6 MiB), 10.24 MiB (below).
        assert_eq!(t.base_level, 3, "{t:?}");
        assert_eq!(t.max_bytes[6], last);
        assert_eq!(t.max_bytes[5], last / 10);
        assert_eq!(t.max_bytes[4], last / 100);
        assert_eq!(t.max_bytes[3], BASE, "102.4 MiB is raised to the base size");
        assert_eq!(t.max_bytes[2], u64::MAX);
        assert_eq!(t.max_bytes[1], u64::MAX);
    }

    #[test]
    fn the_largest_level_sets_the_targets_when_the_last_is_smaller() {
        let t = dynamic(&[0, 0, 0, 0, 0, 20 * 1024 * MIB, 5 * 1024 * MIB]);
        assert_eq!(t.max_bytes[6], 20 * 1024 * MIB);
        assert_eq!(t.max_bytes[5], 2 * 1024 * MIB);
        assert_eq!(t.base_level, 4, "{t:?}"); // 2 GiB, 204.8 MiB, 20.48 MiB
    }

    #[test]
    fn the_base_level_is_never_below_data() {
        // 1 GiB at the bottom wants base level 5, but level 2 holds data: L0 compacts
        // into level 2, and levels 2 to 4 are to drain.
        let t = dynamic(&[0, 0, 8 * MIB, 0, 0, 0, 1024 * MIB]);
        assert_eq!(t.base_level, 2);
        assert_eq!(t.wanted_base_level, 5);
        assert_eq!(t.max_bytes[1], u64::MAX);
        for level in 2..=5 {
            assert_eq!(t.max_bytes[level], BASE, "level {level}: {t:?}");
        }
        assert_eq!(t.max_bytes[6], 1024 * MIB);
    }

    #[test]
    fn a_store_larger_than_the_static_sizes_gets_the_static_targets() {
        let huge = BASE * 1_000_000;
        let t = dynamic(&[0, 0, 0, 0, 0, 0, huge]);
        assert_eq!(t.base_level, 1);
        assert_eq!(t.max_bytes[1], BASE);
        assert_eq!(t.max_bytes[2], 10 * BASE);
        assert_eq!(t.max_bytes[6], 100_000 * BASE);
    }

    #[test]
    fn two_levels_and_other_multipliers() {
        let t = level_targets(&[0, 5000], 1024, 4, true);
        assert_eq!(t.base_level, 1);
        assert_eq!(t.max_bytes[1], 1024, "at most the static target");
        let t = level_targets(&[0, 0, 0, 40_000], 8192, 4, true);
        // 40000, 10000, 2500 (above 8192 / 4 = 2048).
        assert_eq!(t.base_level, 1, "{t:?}");
        assert_eq!(t.max_bytes[1], 8192);
        assert_eq!(t.max_bytes[2], 10_000);
        let t = level_targets(&[0, 0, 0, 30_000], 8192, 4, true);
        // 30000, 7500, 1875 (not above 2048).
        assert_eq!(t.base_level, 2, "{t:?}");
        assert_eq!(t.max_bytes[2], 8192);
    }
}
