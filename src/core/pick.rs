//! Pure replica selection. Each function gets the replicas and a way to read
//! each one's figure, `None` meaning "its breaker refuses traffic", and
//! returns the index of the chosen one. Nothing here allocates.
//! [`past_ejection_cap`] decides when open breakers take early probes.

use rand::Rng;

use crate::core::breaker::BreakerState;

/// The replica with the fewest in-flight requests; ties broken at random.
pub fn least_load<T>(
    items: &[T],
    rng: &mut impl Rng,
    load: impl Fn(&T) -> Option<u32>,
) -> Option<usize> {
    let mut best: Option<(usize, u32)> = None;
    let mut ties = 0u32;
    for (index, item) in items.iter().enumerate() {
        let Some(load) = load(item) else { continue };
        match best {
            Some((_, best_load)) if load > best_load => {}
            Some((_, best_load)) if load == best_load => {
                // Reservoir sampling keeps each tied replica equally likely.
                ties += 1;
                if rng.random_range(0..ties) == 0 {
                    best = Some((index, load));
                }
            }
            _ => {
                best = Some((index, load));
                ties = 1;
            }
        }
    }
    best.map(|(index, _)| index)
}

/// Power of two choices: two admitted replicas at random, the lower score wins.
pub fn p2c<T>(items: &[T], rng: &mut impl Rng, score: impl Fn(&T) -> Option<f64>) -> Option<usize> {
    let admitted = items.iter().filter(|item| score(item).is_some()).count();
    let nth_admitted = |n: usize| {
        items
            .iter()
            .enumerate()
            .filter(|(_, item)| score(item).is_some())
            .nth(n)
            .map(|(index, _)| index)
    };
    match admitted {
        0 => None,
        1 => nth_admitted(0),
        _ => {
            let first = rng.random_range(0..admitted);
            let second = (first + rng.random_range(1..admitted)) % admitted;
            let (a, b) = (nth_admitted(first)?, nth_admitted(second)?);
            let (score_a, score_b) = (score(&items[a])?, score(&items[b])?);
            Some(if score_b < score_a { b } else { a })
        }
    }
}

/// The next admitted replica at or after `cursor`, in turn.
pub fn round_robin<T>(items: &[T], cursor: usize, admits: impl Fn(&T) -> bool) -> Option<usize> {
    let len = items.len();
    (0..len)
        .map(|step| (cursor + step) % len)
        .find(|&index| admits(&items[index]))
}

/// Whether a service's open replicas should take early probes (before
/// their cooldowns end): only while more than `max_ejection_percent` of the
/// `states` are open and at least one replica is still closed and serving.
/// Then the cap protects capacity: the replicas left carry the ejected
/// ones' share, so a recovered one should rejoin soon. When no replica is
/// closed, the service is failing as a whole and there is no capacity to
/// protect: open breakers refuse every call until their cooldowns end.
pub fn past_ejection_cap(
    states: impl IntoIterator<Item = BreakerState>,
    max_ejection_percent: u32,
) -> bool {
    let (mut open, mut closed, mut total) = (0usize, 0usize, 0usize);
    for state in states {
        total += 1;
        match state {
            BreakerState::Open => open += 1,
            BreakerState::Closed => closed += 1,
            BreakerState::HalfOpen => {}
        }
    }
    closed > 0 && open * 100 > total * max_ejection_percent as usize
}

/// The `p2c_ewma` score: latency times load, so a fast busy replica and a
/// slow idle one are weighed against each other.
pub fn ewma_score(ewma_micros: f64, in_flight: u32) -> f64 {
    (ewma_micros + 1.0) * f64::from(in_flight + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn rng() -> SmallRng {
        SmallRng::seed_from_u64(7)
    }

    #[test]
    fn least_load_takes_the_least_loaded_admitted_replica() {
        let loads = [Some(3), None, Some(1), Some(2)];
        assert_eq!(least_load(&loads, &mut rng(), |l| *l), Some(2));
        let refused: [Option<u32>; 2] = [None, None];
        assert_eq!(least_load(&refused, &mut rng(), |l| *l), None);
        assert_eq!(least_load::<Option<u32>>(&[], &mut rng(), |l| *l), None);
    }

    #[test]
    fn least_load_breaks_ties_evenly() {
        let loads = [Some(0), Some(5), Some(0), Some(0)];
        let mut counts = [0u32; 4];
        let mut rng = rng();
        for _ in 0..3000 {
            counts[least_load(&loads, &mut rng, |l| *l).expect("some")] += 1;
        }
        assert_eq!(counts[1], 0);
        for index in [0, 2, 3] {
            assert!((850..1150).contains(&counts[index]), "{counts:?}");
        }
    }

    #[test]
    fn p2c_prefers_the_lower_score_and_skips_refused_replicas() {
        let scores = [Some(10.0), Some(1.0), None];
        let mut counts = [0u32; 3];
        let mut rng = rng();
        for _ in 0..1000 {
            counts[p2c(&scores, &mut rng, |s| *s).expect("some")] += 1;
        }
        assert_eq!(
            counts,
            [0, 1000, 0],
            "with two admitted, the better one always wins"
        );
        assert_eq!(p2c(&[None, Some(4.0)], &mut rng, |s| *s), Some(1));
        assert_eq!(p2c::<Option<f64>>(&[None, None], &mut rng, |s| *s), None);
    }

    #[test]
    fn p2c_spreads_over_equal_replicas() {
        let scores = [Some(1.0); 4];
        let mut counts = [0u32; 4];
        let mut rng = rng();
        for _ in 0..4000 {
            counts[p2c(&scores, &mut rng, |s| *s).expect("some")] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn round_robin_goes_in_turn_and_skips_refused_replicas() {
        let admits = [true, false, true];
        assert_eq!(round_robin(&admits, 0, |a| *a), Some(0));
        assert_eq!(round_robin(&admits, 1, |a| *a), Some(2));
        assert_eq!(round_robin(&admits, 5, |a| *a), Some(2));
        assert_eq!(round_robin(&[false, false], 0, |a| *a), None);
        assert_eq!(round_robin::<bool>(&[], 0, |a| *a), None);
    }

    #[test]
    fn open_replicas_are_probed_early_only_past_the_cap_while_one_still_serves() {
        use crate::core::breaker::BreakerState::{Closed, HalfOpen, Open};
        assert!(!past_ejection_cap([Open], 50), "one replica, failing");
        assert!(
            !past_ejection_cap([Open, Open], 50),
            "every replica failing"
        );
        assert!(
            !past_ejection_cap([Open, Open, HalfOpen], 50),
            "none closed: a half-open one is on trial, not serving"
        );
        assert!(
            !past_ejection_cap([Open, Closed], 50),
            "at the cap, not past it"
        );
        assert!(past_ejection_cap([Open, Open, Closed], 50));
        assert!(past_ejection_cap([Open, Open, Open, Closed], 50));
        assert!(
            !past_ejection_cap([Open, Open, Open, Closed], 100),
            "100: never"
        );
        assert!(
            past_ejection_cap([Open, Closed, Closed, Closed], 0),
            "0: always"
        );
        assert!(!past_ejection_cap([Closed, Closed], 0), "nothing open");
        assert!(!past_ejection_cap([], 0), "no replicas");
    }

    #[test]
    fn ewma_score_weighs_latency_by_load() {
        assert!(ewma_score(100.0, 0) < ewma_score(100.0, 1));
        assert!(ewma_score(1000.0, 0) > ewma_score(100.0, 2));
    }
}
