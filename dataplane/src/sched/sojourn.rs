//! Sojourn recording on the hot path (S10, O4).
//!
//! Recording a sample into an `hdrhistogram::Histogram` costs about 50 instructions
//! (index computation through its generic fields, range checks, count, total, minimum
//! and maximum), a tenth of a whole decision. The scheduler instead counts each sample
//! in its own table laid out exactly as the histograms it hands out (HDR's layout for
//! values 1..=`SOJOURN_MAX_NS` at 3 significant digits: 2048 sub-buckets in the first
//! bucket, 1024 in each doubling bucket after it), with a bitmap of the 64-count chunks
//! touched, and adds the counts into real histograms only when they are read or drained.
//! Each count lands in the bucket the histogram itself would have chosen, so what a
//! reader gets is the histogram direct recording would have built: same counts, same
//! total, same percentiles (only the exact minimum and maximum within their bucket are
//! not kept; the histogram reports bucket bounds for them anyway).

use hdrhistogram::Histogram;

use super::policy::PRIORITIES;
use super::stats::{SOJOURN_MAX_NS, new_sojourn_histogram};

/// `log2` of the sub-buckets in half a bucket.
const HALF_MAG: u32 = 10;
/// Values below this go to the first bucket at full resolution.
const FIRST: u64 = 2 << HALF_MAG;

/// Index of the bucket holding `value`, which may lie past the table.
#[inline(always)]
const fn raw_index(value: u64) -> usize {
    // Doublings above the first bucket: 0 for values below FIRST.
    let b = (63 - (value | (FIRST - 1)).leading_zeros()) - HALF_MAG;
    ((b as u64) << HALF_MAG) as usize + (value >> b) as usize
}

/// Where the histogram's saturating record counts a value past its table: the bucket
/// of `SOJOURN_MAX_NS`.
const TOP: usize = raw_index(SOJOURN_MAX_NS);

/// Index of the bucket `value` is counted in: its own, or `TOP` past the table (as the
/// histogram's saturating record does).
#[inline(always)]
fn index(value: u64) -> usize {
    let i = raw_index(value);
    if i < LEN { i } else { TOP }
}

/// The lowest value of the bucket at `index`.
fn value_of(index: usize) -> u64 {
    let i = index as u64;
    if i < FIRST {
        return i;
    }
    let b = (i >> HALF_MAG) - 1;
    ((i & ((1 << HALF_MAG) - 1)) + (1 << HALF_MAG)) << b
}

/// Buckets per priority: whole buckets up to the one holding `SOJOURN_MAX_NS`, as the
/// histogram allocates them.
const LEN: usize = ((TOP >> HALF_MAG) + 1) << HALF_MAG;
/// Counts per dirty bit.
const CHUNK: usize = 64;
/// Bitmap words per priority.
const WORDS: usize = LEN.div_ceil(CHUNK * 64);

/// Sample counts of the eight priorities since the last drain.
#[derive(Debug)]
pub(crate) struct Sojourns {
    /// `LEN` counts per priority, priority after priority.
    counts: Box<[u64]>,
    /// Chunks of `CHUNK` counts holding any sample, a bit each, per priority.
    dirty: [[u64; WORDS]; PRIORITIES],
}

impl Sojourns {
    pub(crate) fn new() -> Self {
        Self {
            counts: vec![0; LEN * PRIORITIES].into_boxed_slice(),
            dirty: [[0; WORDS]; PRIORITIES],
        }
    }

    /// Counts one sample of `value` ns for priority `p` (masked to 0..=7).
    #[inline(always)]
    pub(crate) fn record(&mut self, p: usize, value: u64) {
        let (p, i) = (p & (PRIORITIES - 1), index(value));
        if let Some(c) = self.counts.get_mut(p * LEN + i) {
            *c += 1;
        }
        if let Some(w) = self.dirty[p].get_mut(i / (CHUNK * 64)) {
            *w |= 1 << ((i / CHUNK) % 64);
        }
    }

    /// The touched chunks of priority `p` (from its bitmap words, taken by value so
    /// the caller may write `counts` meanwhile): their ranges in `counts`.
    fn chunks(p: usize, dirty: [u64; WORDS]) -> impl Iterator<Item = std::ops::Range<usize>> {
        dirty.into_iter().enumerate().flat_map(move |(w, word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let chunk = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let start = chunk * CHUNK;
                Some(p * LEN + start..p * LEN + (start + CHUNK).min(LEN))
            })
        })
    }

    /// Adds priority `p`'s counts into `into`.
    fn add_to(&self, p: usize, into: &mut Histogram<u64>) {
        for range in Self::chunks(p, self.dirty[p]) {
            let first = range.start - p * LEN;
            for (k, &c) in self.counts[range].iter().enumerate() {
                if c != 0 {
                    into.saturating_record_n(value_of(first + k), c);
                }
            }
        }
    }

    /// Priority `p`'s samples (masked to 0..=7) as a histogram: a new one, built now.
    pub(crate) fn snapshot(&self, p: usize) -> Histogram<u64> {
        let mut h = new_sojourn_histogram();
        self.add_to(p & (PRIORITIES - 1), &mut h);
        h
    }

    /// Adds every priority's samples into `into` and starts over from none.
    pub(crate) fn drain_into(&mut self, into: &mut [Histogram<u64>; PRIORITIES]) {
        for (p, h) in into.iter_mut().enumerate() {
            self.add_to(p, h);
            for range in Self::chunks(p, std::mem::take(&mut self.dirty[p])) {
                self.counts[range].fill(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Vec<u64> {
        let mut v: Vec<u64> = (0..5000).collect();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Spread over every magnitude up to past the clamp.
            v.push(x >> (x % 64));
        }
        for k in 11..40 {
            let p = 1u64 << k;
            v.extend([p - 1, p, p + 1]);
        }
        v.extend([
            SOJOURN_MAX_NS - 1,
            SOJOURN_MAX_NS,
            SOJOURN_MAX_NS + 1,
            u64::MAX,
        ]);
        v
    }

    #[test]
    fn the_layout_is_the_histograms_own() {
        let h = new_sojourn_histogram();
        assert_eq!(LEN, h.distinct_values(), "one count per histogram bucket");
        for v in values() {
            if raw_index(v) < LEN {
                assert_eq!(value_of(index(v)), h.lowest_equivalent(v), "value {v}");
            } else {
                assert_eq!(index(v), TOP, "value {v} past the table");
            }
        }
    }

    /// S10/O4: what a reader gets is exactly what direct recording gives.
    #[test]
    fn drained_histograms_equal_direct_recording() {
        let mut direct: [Histogram<u64>; PRIORITIES] =
            std::array::from_fn(|_| new_sojourn_histogram());
        let mut s = Sojourns::new();
        for (k, v) in values().into_iter().enumerate() {
            let p = k % PRIORITIES;
            direct[p].saturating_record(v);
            s.record(p, v);
        }
        for (p, direct) in direct.iter().enumerate() {
            let snap = s.snapshot(p);
            assert_eq!(snap.len(), direct.len());
            let a: Vec<(u64, u64)> = snap
                .iter_recorded()
                .map(|x| (x.value_iterated_to(), x.count_at_value()))
                .collect();
            let b: Vec<(u64, u64)> = direct
                .iter_recorded()
                .map(|x| (x.value_iterated_to(), x.count_at_value()))
                .collect();
            assert_eq!(a, b, "P{p}");
            for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
                assert_eq!(snap.value_at_quantile(q), direct.value_at_quantile(q));
            }
            assert_eq!(snap.max(), direct.max());
            assert_eq!(snap.min(), direct.min());
        }
        let mut out: [Histogram<u64>; PRIORITIES] =
            std::array::from_fn(|_| new_sojourn_histogram());
        s.drain_into(&mut out);
        for (p, (out, direct)) in out.iter().zip(&direct).enumerate() {
            assert!(out == direct, "drained P{p} equals direct recording");
            assert_eq!(s.snapshot(p).len(), 0, "drained P{p}");
        }
        // Recording after a drain starts from nothing.
        s.record(3, 1234);
        assert_eq!(s.snapshot(3).len(), 1);
        assert_eq!(s.snapshot(3).max(), 1234);
    }
}
