//! The core's only source of randomness: a SplitMix64 generator seeded by the
//! driver (`Config::seed`), so a run replays exactly for a given seed.

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough to
/// spread election timeouts. Not for anything cryptographic.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `low..high` (`high > low`). The modulo bias is irrelevant
    /// for election timeouts of a few dozen ticks.
    pub(crate) fn in_range(&mut self, low: u32, high: u32) -> u32 {
        assert!(high > low, "empty range {low}..{high}");
        low + (self.next_u64() % u64::from(high - low)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut c = SplitMix64::new(43);
        assert_ne!(SplitMix64::new(42).next_u64(), c.next_u64());
    }

    #[test]
    fn range_is_respected() {
        let mut rng = SplitMix64::new(7);
        for _ in 0..1000 {
            let value = rng.in_range(10, 20);
            assert!((10..20).contains(&value));
        }
    }
}
