//! The deterministic, self-describing workload.
//!
//! Thread `t` owns the keys `t{t}-{k}` for `k` in `0..keys`. Its operation `n` is a pure
//! function of `(seed, t, n)`: a put, a delete, or an atomic batch of puts and deletes of
//! several distinct keys of the thread. Every value starts with `t:n:k:` (thread,
//! operation, key index) followed by a padding whose length and bytes also follow from
//! `(seed, t, n, k)`, so any value found in a store names the operation that wrote it and
//! can be checked byte for byte.

/// The splitmix64 finalizer: a well-mixed 64-bit hash of `x`.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A small seeded generator (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from several words.
    pub fn new(parts: &[u64]) -> Rng {
        let mut s = 0x2545_f491_4f6c_dd1d;
        for &p in parts {
            s = mix(s ^ p);
        }
        Rng(s)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// What one operation does to one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// The key gets the value of this operation.
    Put,
    /// The key is deleted.
    Delete,
}

/// One operation of one thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The operation's number within its thread.
    pub n: u64,
    /// True for an atomic batch (even of one key), false for a single put or delete.
    pub batch: bool,
    /// The keys it touches (distinct), with what it does to each.
    pub writes: Vec<(u64, Mutation)>,
}

/// Longest batch, in keys.
pub const MAX_BATCH: u64 = 6;

/// Operation `n` of thread `t` over `keys` keys.
pub fn op(seed: u64, t: u32, n: u64, keys: u64) -> Op {
    let mut r = Rng::new(&[seed, u64::from(t), n, 0x6f70]);
    let p = r.below(100);
    if p < 70 {
        Op {
            n,
            batch: false,
            writes: vec![(r.below(keys), Mutation::Put)],
        }
    } else if p < 85 {
        Op {
            n,
            batch: false,
            writes: vec![(r.below(keys), Mutation::Delete)],
        }
    } else {
        let len = r.range(2, MAX_BATCH).min(keys);
        let mut writes: Vec<(u64, Mutation)> = Vec::with_capacity(len as usize);
        while (writes.len() as u64) < len {
            let k = r.below(keys);
            if writes.iter().any(|(w, _)| *w == k) {
                continue;
            }
            let m = if r.below(5) == 0 {
                Mutation::Delete
            } else {
                Mutation::Put
            };
            writes.push((k, m));
        }
        Op {
            n,
            batch: true,
            writes,
        }
    }
}

/// The key `k` of thread `t`.
pub fn key(t: u32, k: u64) -> String {
    format!("t{t}-{k}")
}

/// The thread and key index of a key, if it is one of the workload's.
pub fn parse_key(key: &[u8]) -> Option<(u32, u64)> {
    let s = std::str::from_utf8(key).ok()?;
    let (t, k) = s.strip_prefix('t')?.split_once('-')?;
    let t: u32 = parse_canonical(t)?;
    let k: u64 = parse_canonical(k)?;
    Some((t, k))
}

/// A decimal number without sign or leading zeros (so that each number has one spelling).
fn parse_canonical<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

/// The value operation `n` of thread `t` puts under key `k`.
pub fn value(seed: u64, t: u32, n: u64, k: u64) -> Vec<u8> {
    let mut r = Rng::new(&[seed, u64::from(t), n, k, 0x7661]);
    // Mostly short values, now and then a long one so that memtables fill unevenly.
    let pad = if r.below(20) == 0 {
        r.range(500, 3000)
    } else {
        r.below(200)
    } as usize;
    let mut v = format!("{t}:{n}:{k}:").into_bytes();
    v.reserve(pad);
    let mut bits = 0u64;
    for i in 0..pad {
        if i % 8 == 0 {
            bits = r.next_u64();
        }
        v.push(b'a' + ((bits >> ((i % 8) * 8)) as u8 % 26));
    }
    v
}

/// The thread, operation and key index a value names (its `t:n:k:` prefix).
pub fn parse_value(v: &[u8]) -> Option<(u32, u64, u64)> {
    let mut parts = v.splitn(4, |&b| b == b':');
    let t = parse_canonical(std::str::from_utf8(parts.next()?).ok()?)?;
    let n = parse_canonical(std::str::from_utf8(parts.next()?).ok()?)?;
    let k = parse_canonical(std::str::from_utf8(parts.next()?).ok()?)?;
    parts.next()?;
    Some((t, n, k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_deterministic_and_well_formed() {
        for n in 0..2000 {
            let a = op(7, 1, n, 50);
            assert_eq!(a, op(7, 1, n, 50));
            assert!(!a.writes.is_empty() && a.writes.len() as u64 <= MAX_BATCH);
            let mut ks: Vec<u64> = a.writes.iter().map(|w| w.0).collect();
            ks.sort_unstable();
            ks.dedup();
            assert_eq!(ks.len(), a.writes.len(), "op {n}: keys are distinct");
            assert!(ks.iter().all(|&k| k < 50));
        }
        assert_ne!(op(7, 1, 5, 1000), op(8, 1, 5, 1000));
    }

    #[test]
    fn values_and_keys_name_their_writer() {
        let v = value(3, 2, 12345, 77);
        assert_eq!(parse_value(&v), Some((2, 12345, 77)));
        assert_eq!(v, value(3, 2, 12345, 77));
        assert_eq!(parse_key(key(2, 77).as_bytes()), Some((2, 77)));
        assert_eq!(parse_key(b"t2-077"), None);
        assert_eq!(parse_key(b"x2-77"), None);
        assert_eq!(parse_value(b"2:1:"), None);
    }
}
