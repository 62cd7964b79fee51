//! Fixed-point virtual time (S3): integer tags that may wrap around.
//!
//! A tag advances by `len * inverse(share)` where `inverse(w) = 2^FRAC_BITS / w` is
//! computed once when a policy is adopted, so the per-packet path multiplies and never
//! divides. Tags are compared by the sign of their wrapping difference, which is exact
//! as long as the tags compared lie within 2^63 of each other: backlogged classes are
//! within one maximal increment (`65535 * 2^40 < 2^56`) of the virtual time, and `wfq`
//! keeps idle ones within `2^61 + 2^56` (its periodic refresh).

/// Fractional bits of the fixed-point inverse weights.
pub(crate) const FRAC_BITS: u32 = 40;

/// `true` when tag `a` is strictly earlier than tag `b`, across wraparound.
#[inline(always)]
pub(crate) fn before(a: u64, b: u64) -> bool {
    (a.wrapping_sub(b) as i64) < 0
}

/// Fixed-point inverse of a weight (`weight >= 1`), exact up to truncation. Used when
/// a policy is compiled.
pub(crate) fn inverse(weight: u64) -> u64 {
    ((1u64 << FRAC_BITS) / weight.max(1)).max(1)
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
    fn s3_inverse_weights_keep_ratios() {
        let (a, b) = (inverse(25), inverse(60));
        let ratio = a as f64 / b as f64;
        assert!((ratio - 60.0 / 25.0).abs() < 1e-9, "{ratio}");
        assert_eq!(cost(1500, inverse(1)), 1500u64 << FRAC_BITS);
    }
}
