//! The `Priority` newtype: 0..=7, checked once at the API boundary.

use std::fmt;

/// A stream priority, 0 (lowest) ..= 7 (highest). It selects the tier (S1) and, by
/// default, the WFQ weight `2^priority` inside the tier (S3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(u8);

/// A value outside 0..=7 was offered as a [`Priority`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("priority: {0}, expected 0..=7")]
pub struct PriorityOutOfRange(pub u8);

impl Priority {
    /// The highest priority.
    pub const MAX: Priority = Priority(7);
    /// Every priority, lowest first.
    pub const ALL: [Priority; 8] = [
        Priority(0),
        Priority(1),
        Priority(2),
        Priority(3),
        Priority(4),
        Priority(5),
        Priority(6),
        Priority(7),
    ];

    /// `Some` for 0..=7.
    pub const fn new(value: u8) -> Option<Priority> {
        if value <= 7 {
            Some(Priority(value))
        } else {
            None
        }
    }

    /// `value` clamped to 7.
    pub const fn saturating(value: u8) -> Priority {
        Priority(if value > 7 { 7 } else { value })
    }

    /// The numeric priority (0..=7).
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The default WFQ weight `2^priority`.
    pub const fn default_weight(self) -> u16 {
        1 << self.0
    }

    /// Index into per-priority tables.
    pub(crate) const fn index(self) -> usize {
        self.0 as usize
    }
}

impl TryFrom<u8> for Priority {
    type Error = PriorityOutOfRange;
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        Priority::new(value).ok_or(PriorityOutOfRange(value))
    }
}

impl From<Priority> for u8 {
    fn from(p: Priority) -> u8 {
        p.0
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "P{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_rejects_out_of_range() {
        assert_eq!(Priority::new(7).map(Priority::get), Some(7));
        assert_eq!(Priority::new(8), None);
        assert_eq!(Priority::try_from(255), Err(PriorityOutOfRange(255)));
        assert_eq!(Priority::saturating(200), Priority::MAX);
        assert_eq!(Priority::ALL[4].default_weight(), 16);
    }
}
