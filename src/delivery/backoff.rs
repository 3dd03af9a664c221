//! Exponential backoff with full jitter: attempt n waits a uniformly random
//! time in [0, min(max, initial * 2^(n-1))], so retrying sinks spread out.

use std::time::Duration;

pub fn delay(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let ceiling = initial.saturating_mul(1u32 << exponent).min(max);
    ceiling.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_the_growing_ceiling() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 1..40 {
            let ceiling = (initial * 2u32.pow((attempt - 1).min(20))).min(max);
            for _ in 0..50 {
                assert!(delay(attempt, initial, max) <= ceiling);
            }
        }
        // Jitter: not always the same value.
        let samples: std::collections::HashSet<u128> =
            (0..20).map(|_| delay(5, initial, max).as_nanos()).collect();
        assert!(samples.len() > 1);
    }
}
