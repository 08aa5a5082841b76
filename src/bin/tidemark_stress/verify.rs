//! Verification of a store against the expected state: every key read by `get` and by one
//! full forward scan, the two compared, every value checked byte for byte against the
//! operation it names, and the result held against the committed and pending words.

use std::collections::BTreeMap;

use tidemark::lsm::Db;

use super::expected::{Header, ThreadSlots, Word};
use super::workload::{self, key};

/// What a store shows for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The key is absent.
    Absent,
    /// The key holds the value operation `n` put there.
    Put(u64),
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seen::Absent => write!(f, "no value"),
            Seen::Put(n) => write!(f, "the value of op {n}"),
        }
    }
}

/// True when a store showing `seen` agrees with word `w`.
pub fn shows(seen: Seen, w: Word) -> bool {
    match seen {
        Seen::Absent => w.put_op().is_none(),
        Seen::Put(n) => w.put_op() == Some(n),
    }
}

/// Problems found, as report lines; a verification fails when there is any.
#[derive(Debug, Default)]
pub struct Problems {
    /// One line per problem.
    pub lines: Vec<String>,
}

impl Problems {
    /// Records a problem.
    pub fn push(&mut self, line: String) {
        self.lines.push(line);
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// What a store holds for every key of the workload, `[thread][key]`, by `get` and by
/// scan.
#[derive(Debug, Clone)]
pub struct Observed {
    /// By `get`.
    pub get: Vec<Vec<Seen>>,
    /// By one forward scan of the whole store.
    pub scan: Vec<Vec<Seen>>,
}

/// Classifies a value found under thread `t`'s key `k`.
fn classify(seed: u64, t: u32, k: u64, v: Option<&[u8]>) -> Result<Seen, String> {
    let Some(v) = v else {
        return Ok(Seen::Absent);
    };
    let shown = || {
        let cut = &v[..v.len().min(48)];
        format!(
            "{:?}{}",
            String::from_utf8_lossy(cut),
            if v.len() > 48 { "..." } else { "" }
        )
    };
    let Some((vt, n, vk)) = workload::parse_value(v) else {
        return Err(format!(
            "value {} ({} bytes) does not parse",
            shown(),
            v.len()
        ));
    };
    if (vt, vk) != (t, k) {
        return Err(format!(
            "value {} names key {} (thread {vt}, op {n})",
            shown(),
            key(vt, vk)
        ));
    }
    let want = workload::value(seed, t, n, k);
    if want != v {
        let at = want.iter().zip(v).take_while(|(a, b)| a == b).count();
        return Err(format!(
            "value {} ({} bytes) is not op {n}'s value ({} bytes); they differ from byte {at}",
            shown(),
            v.len(),
            want.len()
        ));
    }
    Ok(Seen::Put(n))
}

/// Reads every key of the workload from `db` by `get` and by one forward scan, checks that
/// both agree and that every value is exactly the value of the operation it names. `what`
/// names the store in reports.
pub fn observe(
    db: &Db,
    h: Header,
    what: &str,
    problems: &mut Problems,
) -> tidemark::Result<Observed> {
    let mut by_get: Vec<Vec<Seen>> = Vec::with_capacity(h.threads as usize);
    for t in 0..h.threads {
        let mut row = Vec::with_capacity(h.keys as usize);
        for k in 0..h.keys {
            let v = db.get(key(t, k))?;
            let seen = classify(h.seed, t, k, v.as_deref()).unwrap_or_else(|e| {
                problems.push(format!("{what}: key {} by get: {e}", key(t, k)));
                Seen::Absent
            });
            row.push(seen);
        }
        by_get.push(row);
    }
    let mut by_scan: Vec<Vec<Option<Seen>>> = vec![vec![None; h.keys as usize]; h.threads as usize];
    let mut previous: Option<Vec<u8>> = None;
    for kv in db.scan::<&[u8]>(..)? {
        let (k, v) = kv?;
        if previous.as_ref().is_some_and(|p| *p >= k) {
            problems.push(format!(
                "{what}: the scan returns {:?} after {:?}: keys out of order or repeated",
                String::from_utf8_lossy(&k),
                String::from_utf8_lossy(previous.as_deref().unwrap_or_default())
            ));
        }
        match workload::parse_key(&k) {
            Some((t, i)) if t < h.threads && i < h.keys => {
                let seen = classify(h.seed, t, i, Some(&v)).unwrap_or_else(|e| {
                    problems.push(format!("{what}: key {} by scan: {e}", key(t, i)));
                    Seen::Absent
                });
                by_scan[t as usize][i as usize] = Some(seen);
            }
            _ => problems.push(format!(
                "{what}: the scan returns key {:?}, which the workload never writes",
                String::from_utf8_lossy(&k)
            )),
        }
        previous = Some(k);
    }
    let by_scan: Vec<Vec<Seen>> = by_scan
        .into_iter()
        .map(|row| row.into_iter().map(|s| s.unwrap_or(Seen::Absent)).collect())
        .collect();
    for t in 0..h.threads {
        for k in 0..h.keys {
            let g = by_get[t as usize][k as usize];
            let s = by_scan[t as usize][k as usize];
            if g != s {
                problems.push(format!(
                    "{what}: key {}: get returns {g}, the scan returns {s}",
                    key(t, k)
                ));
            }
        }
    }
    Ok(Observed {
        get: by_get,
        scan: by_scan,
    })
}

/// Holds what the store shows against the expected state: each key must show its
/// committed word or its pending word, and the keys of one pending operation must all
/// show the new state or all the old one (a batch is atomic).
pub fn check(seen: &Observed, threads: &[ThreadSlots<'_>], problems: &mut Problems) {
    for (t, slots) in threads.iter().enumerate() {
        let t = t as u32;
        let mut ops: BTreeMap<u64, Vec<(u64, bool, bool)>> = BTreeMap::new();
        for (k, &s) in seen.get[t as usize].iter().enumerate() {
            let k = k as u64;
            let (c, p) = (slots.committed(k), slots.pending(k));
            let old = shows(s, c);
            let new = p != Word::NEVER && shows(s, p);
            let by_scan = seen.scan[t as usize][k as usize];
            let reads = if by_scan == s {
                vec![("the store", s)]
            } else {
                vec![("get", s), ("the scan", by_scan)]
            };
            for (how, s) in reads {
                if shows(s, c) || (p != Word::NEVER && shows(s, p)) {
                    continue;
                }
                let pending = if p == Word::NEVER {
                    "none".to_string()
                } else {
                    p.to_string()
                };
                problems.push(format!(
                    "key {}: {how} shows {s}; expected committed = {c}, pending = {pending} \
                     (thread {t} has acknowledged ops 0..{})",
                    key(t, k),
                    slots.counter()
                ));
            }
            if let Some(n) = p.op() {
                ops.entry(n).or_default().push((k, old, new));
            }
        }
        for (n, keys) in ops {
            let only_new: Vec<String> = keys
                .iter()
                .filter(|(_, old, new)| *new && !*old)
                .map(|(k, _, _)| key(t, *k))
                .collect();
            let only_old: Vec<String> = keys
                .iter()
                .filter(|(_, old, new)| *old && !*new)
                .map(|(k, _, _)| key(t, *k))
                .collect();
            if !only_new.is_empty() && !only_old.is_empty() {
                problems.push(format!(
                    "op {n} of thread {t} is half applied: {} show its writes, {} do not",
                    only_new.join(", "),
                    only_old.join(", ")
                ));
            }
        }
    }
}

/// Settles the operations that were in flight when the last writer died: a key whose
/// pending write the store shows gets it as committed; then every pending word is cleared.
/// The two steps are in this order so that a kill between them leaves a state the next
/// verification still accepts.
pub fn resolve(seen: &Observed, threads: &mut [ThreadSlots<'_>]) -> u64 {
    let mut settled = 0;
    for (t, slots) in threads.iter_mut().enumerate() {
        for (k, &s) in seen.get[t].iter().enumerate() {
            let k = k as u64;
            let p = slots.pending(k);
            if p == Word::NEVER {
                continue;
            }
            if shows(s, p) {
                slots.set_committed(k, p);
                settled += 1;
            }
            slots.set_pending(k, Word::NEVER);
        }
    }
    settled
}

/// Checks one key of thread `t` read while the thread writes (by `how`): none of the
/// thread's keys is in flight then, so the key must show exactly its committed word.
pub fn check_own_key(
    h: Header,
    t: u32,
    k: u64,
    v: Option<&[u8]>,
    slots: &ThreadSlots<'_>,
    how: &str,
    problems: &mut Problems,
) {
    let c = slots.committed(k);
    match classify(h.seed, t, k, v) {
        Err(e) => problems.push(format!("key {} by {how} while writing: {e}", key(t, k))),
        Ok(s) if !shows(s, c) => problems.push(format!(
            "key {} by {how} while writing: the store shows {s}; expected {c} \
             (thread {t} has acknowledged ops 0..{}, none in flight)",
            key(t, k),
            slots.counter()
        )),
        Ok(_) => {}
    }
}

/// Scans the keys of thread `t` (prefix `t{t}-`) while the thread writes and checks each
/// against its committed word, and that no key is missing from the scan.
pub fn scan_own_keys(
    db: &Db,
    h: Header,
    t: u32,
    slots: &ThreadSlots<'_>,
    problems: &mut Problems,
) -> tidemark::Result<()> {
    let mut found = vec![false; h.keys as usize];
    for kv in db.prefix(format!("t{t}-"))? {
        let (k, v) = kv?;
        match workload::parse_key(&k) {
            Some((kt, i)) if kt == t && i < h.keys => {
                found[i as usize] = true;
                check_own_key(h, t, i, Some(&v), slots, "scan", problems);
            }
            _ => problems.push(format!(
                "the scan of prefix t{t}- returns key {:?}, which the workload never writes",
                String::from_utf8_lossy(&k)
            )),
        }
    }
    for (i, f) in found.iter().enumerate() {
        if !f {
            check_own_key(h, t, i as u64, None, slots, "scan", problems);
        }
    }
    Ok(())
}
