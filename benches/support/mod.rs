//! What every micro-benchmark shares: the mode it runs in and a timer that
//! prints ns/op beside a naive baseline's.
//!
//! `cargo bench` passes `--bench`: each case then runs long enough to time.
//! Without it (`cargo test --all-targets` runs these binaries too) each case
//! runs a few iterations, so the test suite checks that they still agree
//! with their baselines without spending time measuring.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// How long a case is timed for under `cargo bench`.
const TIMED: Duration = Duration::from_millis(300);
/// Iterations of a case in smoke mode.
const SMOKE_ITERATIONS: u64 = 50;

/// The mode this run is in.
pub struct Bench {
    timed: bool,
}

impl Bench {
    /// Reads the mode from the command line (`--bench` times the cases).
    pub fn from_args() -> Bench {
        let timed = std::env::args().any(|arg| arg == "--bench");
        if !timed {
            println!("smoke run (cargo bench times these)");
        }
        Bench { timed }
    }

    /// Times `ours` and `naive` (each one operation per call) and prints
    /// both in ns/op with the ratio naive / ours.
    pub fn compare<A, B>(
        &self,
        case: &str,
        mut ours: impl FnMut() -> A,
        mut naive: impl FnMut() -> B,
    ) {
        let ours_ns = self.time(&mut ours);
        let naive_ns = self.time(&mut naive);
        if self.timed {
            println!(
                "{case:<40} {ours_ns:>9.1} ns/op   naive {naive_ns:>9.1} ns/op   {:>6.1}x faster",
                naive_ns / ours_ns
            );
        } else {
            println!("{case}: ok");
        }
    }

    fn time<T>(&self, op: &mut impl FnMut() -> T) -> f64 {
        if !self.timed {
            for _ in 0..SMOKE_ITERATIONS {
                black_box(op());
            }
            return 1.0;
        }
        // Warm up, then grow the batch until one batch takes a measurable time.
        let mut batch = 64u64;
        loop {
            let started = Instant::now();
            for _ in 0..batch {
                black_box(op());
            }
            if started.elapsed() > TIMED / 10 {
                break;
            }
            batch *= 2;
        }
        let (mut ops, started) = (0u64, Instant::now());
        while started.elapsed() < TIMED {
            for _ in 0..batch {
                black_box(op());
            }
            ops += batch;
        }
        started.elapsed().as_nanos() as f64 / ops as f64
    }
}
