//! The panic threshold that the health gate and the load-aware channel's breakers share.

/// How many of `total` endpoints may be out of rotation at once: `⌊share × total⌋`, and at
/// least one (`build()` keeps `share` within `0.0..=1.0`).
pub(crate) fn ejection_cap(share: f64, total: usize) -> usize {
    ((share * total as f64).floor() as usize).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_of_the_endpoints_and_at_least_one() {
        let cases = [
            (0.5, 4, 2),
            (0.5, 3, 1),
            (0.5, 1, 1),
            (0.0, 10, 1),
            (1.0, 7, 7),
            (0.3, 10, 3),
        ];
        for (share, total, want) in cases {
            assert_eq!(ejection_cap(share, total), want, "{share} of {total}");
        }
    }
}
