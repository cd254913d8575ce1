//! [`Backoff`]: the one exponential backoff behind DNS retries, health re-probes and breaker
//! ejections.

use std::time::Duration;

/// Waits that double from `base`, never above `max` (nor below `base`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) base: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// The wait before the `attempt`-th retry in a row (1 for the first, and 0 counts as 1):
    /// `base × 2^(attempt − 1)`, capped. Saturates rather than overflows.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(31);
        self.base
            .saturating_mul(1 << exponent)
            .min(self.max.max(self.base))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_from_the_base_up_to_the_maximum() {
        let b = Backoff {
            base: S,
            max: 8 * S,
        };
        let waits: Vec<u64> = (0..8).map(|a| b.delay(a).as_secs()).collect();
        assert_eq!(waits, [1, 1, 2, 4, 8, 8, 8, 8]);
    }

    #[test]
    fn a_maximum_below_the_base_means_the_base_and_huge_counts_saturate() {
        assert_eq!(
            Backoff {
                base: S,
                max: S / 2
            }
            .delay(5),
            S
        );
        let wide = Backoff {
            base: S,
            max: Duration::MAX,
        };
        assert_eq!(wide.delay(u32::MAX), S * (1 << 31));
        let huge = Backoff {
            base: Duration::MAX,
            max: Duration::MAX,
        };
        assert_eq!(huge.delay(40), Duration::MAX);
    }
}
