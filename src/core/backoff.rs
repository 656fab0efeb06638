//! Exponential backoff: a wait that doubles from `base` with each step up to
//! `cap`, spread by a fraction `jitter` either way so that many waiters do
//! not wake in step. Retries wait by it between tries; a circuit breaker
//! waits by it before probing a replica again.

use std::fmt;
use std::time::Duration;

use rand::Rng;

/// A validated exponential backoff: `min(base * 2^step, cap)`, spread by `jitter`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: f64,
}

/// Why a [`Backoff`] cannot be made from the values given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BackoffError {
    /// The jitter is not a fraction in [0, 1] (or is not a number).
    Jitter(f64),
    /// The first wait is longer than the cap it doubles up to.
    BaseAboveCap {
        /// The first wait asked for.
        base: Duration,
        /// The cap asked for.
        cap: Duration,
    },
}

impl fmt::Display for BackoffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Jitter(jitter) => write!(f, "jitter must be between 0 and 1, got {jitter}"),
            Self::BaseAboveCap { base, cap } => {
                write!(
                    f,
                    "the first wait ({base:?}) is longer than the cap ({cap:?})"
                )
            }
        }
    }
}

impl std::error::Error for BackoffError {}

impl Backoff {
    /// A backoff from `base` doubling up to `cap`, each wait spread by up to
    /// `jitter` of itself either way. `jitter` must be in [0, 1] (1 lets a
    /// wait shrink to nothing or double) and `base` must not exceed `cap`.
    pub fn new(base: Duration, cap: Duration, jitter: f64) -> Result<Self, BackoffError> {
        if !(0.0..=1.0).contains(&jitter) {
            return Err(BackoffError::Jitter(jitter));
        }
        if base > cap {
            return Err(BackoffError::BaseAboveCap { base, cap });
        }
        Ok(Backoff { base, cap, jitter })
    }

    /// The same wait every time, without jitter (a backoff that never backs off).
    pub fn constant(wait: Duration) -> Self {
        Backoff {
            base: wait,
            cap: wait,
            jitter: 0.0,
        }
    }

    /// The wait after `step` doublings, before jitter: `min(base * 2^step, cap)`.
    pub fn delay(&self, step: u32) -> Duration {
        let doubling = 2u32.saturating_pow(step.min(31));
        self.base.saturating_mul(doubling).min(self.cap)
    }

    /// The wait after `step` doublings, spread by a sample drawn from `rng`.
    /// Without jitter nothing is drawn and the wait is exact.
    pub fn sample(&self, step: u32, rng: &mut impl Rng) -> Duration {
        if self.jitter == 0.0 {
            return self.delay(step);
        }
        self.spread(step, rng.random_range(-1.0..=1.0))
    }

    /// The wait after `step` doublings, spread by `sample` (clamped to [-1, 1])
    /// times the jitter.
    fn spread(&self, step: u32, sample: f64) -> Duration {
        let factor = (1.0 + self.jitter * sample.clamp(-1.0, 1.0)).max(0.0);
        // At most twice the cap; a cap near Duration::MAX stays there.
        Duration::try_from_secs_f64(self.delay(step).as_secs_f64() * factor)
            .unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn backoff(jitter: f64) -> Backoff {
        Backoff::new(ms(50), ms(2000), jitter).expect("valid")
    }

    #[test]
    fn it_doubles_from_the_base_up_to_the_cap() {
        let backoff = backoff(0.0);
        let delays: Vec<Duration> = (0..8).map(|step| backoff.delay(step)).collect();
        assert_eq!(
            delays,
            [50, 100, 200, 400, 800, 1600, 2000, 2000].map(ms).to_vec()
        );
        assert_eq!(
            backoff.delay(200),
            ms(2000),
            "huge step numbers stay at the cap"
        );
        let huge = Backoff::new(Duration::MAX, Duration::MAX, 0.5).expect("valid");
        assert_eq!(huge.delay(3), Duration::MAX, "doubling saturates");
        assert_eq!(huge.spread(3, 1.0), Duration::MAX, "and so does jitter");
    }

    #[test]
    fn jitter_spreads_each_delay_within_its_fraction() {
        let backoff = backoff(0.25);
        assert_eq!(backoff.spread(0, -1.0), Duration::from_micros(37_500));
        assert_eq!(backoff.spread(0, 1.0), Duration::from_micros(62_500));
        assert_eq!(backoff.spread(2, 0.5), ms(225));
        assert_eq!(
            backoff.spread(0, 7.0),
            Duration::from_micros(62_500),
            "samples are clamped"
        );
        assert_eq!(backoff.delay(0), ms(50), "delay is before jitter");
    }

    #[test]
    fn samples_stay_within_the_jitter_and_are_exact_without_it() {
        let mut rng = SmallRng::seed_from_u64(7);
        let spread = backoff(0.1);
        for step in 0..8 {
            let delay = spread.delay(step);
            let sample = spread.sample(step, &mut rng);
            assert!(
                sample >= delay.mul_f64(0.9) && sample <= delay.mul_f64(1.1),
                "{sample:?} for {delay:?}"
            );
        }
        let exact = backoff(0.0);
        for step in 0..8 {
            assert_eq!(exact.sample(step, &mut rng), exact.delay(step));
        }
        let full = backoff(1.0);
        assert!(full.spread(0, -1.0).is_zero(), "full jitter may not wait");
    }

    #[test]
    fn nonsense_is_refused() {
        for jitter in [-0.1, 1.5, f64::NAN] {
            assert!(matches!(
                Backoff::new(ms(50), ms(2000), jitter),
                Err(BackoffError::Jitter(_))
            ));
        }
        assert_eq!(
            Backoff::new(ms(3000), ms(2000), 0.0),
            Err(BackoffError::BaseAboveCap {
                base: ms(3000),
                cap: ms(2000)
            })
        );
        assert!(Backoff::new(ms(2000), ms(2000), 1.0).is_ok());
        assert!(Backoff::new(Duration::ZERO, Duration::ZERO, 0.0).is_ok());
    }
}
