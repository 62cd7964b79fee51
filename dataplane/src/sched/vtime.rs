//! Fixed-point virtual time (S3): integer tags that may wrap around.
//!
//! A tag advances by `len * inverse(weight)` where `inverse(w) = 2^FRAC_BITS / w` is
//! computed once when a weight changes, so the per-packet path multiplies and never
//! divides. Tags are compared by the sign of their wrapping difference, which is exact
//! as long as the live tags of one level stay within 2^63 of each other; the spread of
//! active start tags is at most one maximal increment (`65535 * 2^40 < 2^56`).

/// Fractional bits of the fixed-point inverse weights.
pub(crate) const FRAC_BITS: u32 = 40;

/// `true` when tag `a` is strictly earlier than tag `b`, across wraparound.
#[inline(always)]
pub(crate) fn before(a: u64, b: u64) -> bool {
    (a.wrapping_sub(b) as i64) < 0
}

/// Fixed-point inverse of a weight (`weight >= 1`), exact up to truncation. Used when
/// a policy is compiled; the hot path uses [`fast_inverse`].
pub(crate) fn inverse(weight: u64) -> u64 {
    ((1u64 << FRAC_BITS) / weight.max(1)).max(1)
}

const TABLE_BITS: u32 = 12;
const TABLE_LEN: usize = 1 << TABLE_BITS;

/// `2^40 / w` for `w` in `0..4096` (entry 0 unused), built at compile time.
static INVERSES: [u64; TABLE_LEN] = {
    let mut t = [0u64; TABLE_LEN];
    let mut w = 1;
    while w < TABLE_LEN {
        t[w] = (1u64 << FRAC_BITS) / w as u64;
        w += 1;
    }
    t
};

/// Fixed-point inverse of a weight sum without a division: exact for sums below 4096,
/// otherwise from the sum's 12 leading bits (relative error below 2^-11, 0.05%). Group
/// weight sums change on every stream activation, so this runs per packet in the worst
/// case, where a 64-bit division would cost tens of cycles.
#[inline(always)]
pub(crate) fn fast_inverse(weight: u64) -> u64 {
    let w = weight.max(1);
    if w < TABLE_LEN as u64 {
        return INVERSES[w as usize];
    }
    let shift = (64 - w.leading_zeros()) - TABLE_BITS;
    (INVERSES[(w >> shift) as usize] >> shift).max(1)
}

/// Largest lead a tag may keep over the virtual time when its owner becomes backlogged
/// again: one maximal packet at weight 1 (`65535 * 2^40 < 2^56`), with room to spare.
const MAX_LEAD: u64 = 1 << 57;

/// Start tag of an entity that becomes backlogged again (S3): its previous finish tag
/// if that lies ahead of `vtime` by at most one maximal packet (it used more than its
/// share just before going idle), otherwise `vtime`. Idle entities bank no credit, and a
/// tag left stale for long enough to wrap cannot park its owner far in the future.
#[inline]
pub(crate) fn resume(tag: u64, vtime: u64) -> u64 {
    let lead = tag.wrapping_sub(vtime);
    if lead != 0 && lead <= MAX_LEAD {
        tag
    } else {
        vtime
    }
}

/// Virtual service of `len` bytes at the weight whose inverse is `inv`.
#[inline(always)]
pub(crate) fn cost(len: u32, inv: u64) -> u64 {
    u64::from(len).wrapping_mul(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_tags_compare_across_wraparound() {
        let near_max = u64::MAX - 10;
        let wrapped = near_max.wrapping_add(100);
        assert!(before(near_max, wrapped));
        assert!(!before(wrapped, near_max));
        assert!(!before(5, 5));
    }

    #[test]
    fn s3_resume_banks_no_credit_and_bounds_lead() {
        assert_eq!(resume(10, 100), 100, "behind: start at vtime");
        assert_eq!(resume(150, 100), 150, "a small lead is kept");
        assert_eq!(
            resume(100 + (1 << 60), 100),
            100,
            "a stale wrapped tag is forgotten"
        );
    }

    #[test]
    fn s3_inverse_weights_keep_ratios() {
        let (a, b) = (inverse(25), inverse(60));
        let ratio = a as f64 / b as f64;
        assert!((ratio - 60.0 / 25.0).abs() < 1e-9, "{ratio}");
        assert_eq!(cost(1500, inverse(1)), 1500u64 << FRAC_BITS);
    }

    #[test]
    fn s3_fast_inverse_is_exact_below_4096_and_within_0_05_percent_above() {
        for w in 1..4096u64 {
            assert_eq!(fast_inverse(w), inverse(w));
        }
        for w in [
            4096u64,
            4097,
            65_535,
            65_536,
            1 << 27,
            (1 << 27) + 12_345,
            3 << 33,
        ] {
            let (fast, exact) = (fast_inverse(w) as f64, inverse(w) as f64);
            assert!(
                (fast / exact - 1.0).abs() < 1.0 / 2048.0,
                "w={w}: {fast} vs {exact}"
            );
        }
    }
}
