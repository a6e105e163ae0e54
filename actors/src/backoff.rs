//! Reconnect backoff: exponential with jitter, capped. Pure; randomness injected.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff: `initial`, doubling on every failure up to `max`; each delay is drawn
/// uniformly from the upper half of the current step ("equal jitter"), so followers that lost
/// the same leader do not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Option<Duration>,
}

impl Backoff {
    /// A backoff starting at `initial` and capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max: max.max(initial), step: None }
    }

    /// The current step before jitter (None before the first failure).
    pub fn step(&self) -> Option<Duration> {
        self.step
    }

    /// The delay before the next attempt, after one more failure.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let step = match self.step {
            None => self.initial,
            Some(s) => (s * 2).min(self.max),
        };
        self.step = Some(step);
        let half = step / 2;
        let jitter_ns = rng.gen_range(0..=half.as_nanos().min(u64::MAX as u128) as u64);
        half + Duration::from_nanos(jitter_ns)
    }

    /// A success: the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.step = None;
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn doubles_and_caps_with_jitter_in_the_upper_half() {
        let ms = Duration::from_millis;
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(ms(100), ms(30_000));
        let mut expected = ms(100);
        for _ in 0..20 {
            let d = b.next_delay(&mut rng);
            assert_eq!(b.step(), Some(expected));
            assert!(
                d >= expected / 2 && d <= expected,
                "{d:?} outside [{:?}, {expected:?}]",
                expected / 2
            );
            expected = (expected * 2).min(ms(30_000));
        }
        assert_eq!(b.step(), Some(ms(30_000)));
        b.reset();
        b.next_delay(&mut rng);
        assert_eq!(b.step(), Some(ms(100)));
    }

    #[test]
    fn jitter_spreads_delays() {
        let ms = Duration::from_millis;
        let mut rng = StdRng::seed_from_u64(1);
        let delays: std::collections::BTreeSet<_> = (0..50)
            .map(|_| {
                let mut b = Backoff::new(ms(100), ms(1000));
                b.next_delay(&mut rng)
            })
            .collect();
        assert!(delays.len() > 10, "jitter should vary the delay");
    }
}
