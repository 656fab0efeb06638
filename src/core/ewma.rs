//! Latency tracking of one replica: an exponentially weighted moving average
//! the `p2c_ewma` balancer reads. (The replica actor keeps one per replica
//! and publishes it with its in-flight count.)

use std::time::Duration;

/// Weight of the newest sample.
const ALPHA: f64 = 0.3;

/// An exponentially weighted moving average of call latency, in microseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Ewma {
    micros: Option<f64>,
}

impl Ewma {
    /// Folds one latency sample in; the first sample is taken as is.
    pub fn observe(&mut self, latency: Duration) {
        let sample = latency.as_secs_f64() * 1e6;
        self.micros = Some(match self.micros {
            None => sample,
            Some(average) => ALPHA * sample + (1.0 - ALPHA) * average,
        });
    }

    /// The average so far, in microseconds (0 before any sample).
    pub fn micros(&self) -> f64 {
        self.micros.unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_sample_is_the_average() {
        let mut ewma = Ewma::default();
        assert_eq!(ewma.micros(), 0.0);
        ewma.observe(Duration::from_micros(1000));
        assert_eq!(ewma.micros(), 1000.0);
    }

    #[test]
    fn later_samples_move_it_by_alpha() {
        let mut ewma = Ewma::default();
        ewma.observe(Duration::from_micros(1000));
        ewma.observe(Duration::from_micros(2000));
        assert!((ewma.micros() - 1300.0).abs() < 1e-6);
        for _ in 0..50 {
            ewma.observe(Duration::from_micros(100));
        }
        assert!(
            (ewma.micros() - 100.0).abs() < 1.0,
            "converges to a steady latency"
        );
    }
}
