//! The walkthrough's step checks, fed the outcomes a wrong route would give.
use std::time::Duration;

use super::{fixed_delay, within_binomial, Api, Expect, PageLoad, Tally, GATEWAY_STEPS};

/// `n` page loads showing `reviews` after `ms`.
fn loads(n: usize, reviews: &str, ms: u64) -> Vec<PageLoad> {
    let stars = match reviews {
        "v2" => "black",
        "v3" => "red",
        "v1" => "none",
        other => other,
    };
    let l = PageLoad { status: 200, reviews: reviews.into(), stars: stars.into(), latency: Duration::from_millis(ms) };
    vec![l; n]
}

fn tally(parts: &[(usize, &str, u64)]) -> Tally {
    Tally { loads: parts.iter().flat_map(|&(n, v, ms)| loads(n, v, ms)).collect() }
}

/// The gateway walkthrough's checks fail on the outcomes a wrong route would give.
#[test]
fn gateway_step_checks_fail_on_wrong_outcomes() {
    let none = Tally::default();
    let split = Expect::Split { first: "v1", second: "v2", second_share: 0.1 };
    assert!(split.check(&tally(&[(360, "v1", 2), (40, "v2", 2)]), &none, Duration::ZERO).is_ok());
    // 75/25 (a wrong weight), or a third version, fails.
    assert!(split.check(&tally(&[(300, "v1", 2), (100, "v2", 2)]), &none, Duration::ZERO).is_err());
    assert!(split.check(&tally(&[(355, "v1", 2), (40, "v2", 2), (5, "v3", 2)]), &none, Duration::ZERO).is_err());
    // A failed page fails any step.
    let mut failed = tally(&[(10, "v1", 2)]);
    failed.loads[0].status = 503;
    assert!(Expect::All("v1").check(&failed, &none, Duration::ZERO).is_err());

    let jason = Expect::Jason { jason: "v2", others: "v1" };
    assert!(jason.check(&tally(&[(20, "v1", 2)]), &tally(&[(20, "v2", 2)]), Duration::ZERO).is_ok());
    assert!(jason.check(&tally(&[(20, "v1", 2)]), &tally(&[(20, "v1", 2)]), Duration::ZERO).is_err());
    assert!(jason.check(&tally(&[(19, "v1", 2), (1, "v2", 2)]), &tally(&[(20, "v2", 2)]), Duration::ZERO).is_err());

    let delayed = Expect::JasonDelayed { others: "v1" };
    let others = tally(&[(20, "v1", 2)]);
    // Below productpage's 3 s timeout: v2 after the delay, once.
    let one = Duration::from_secs(1);
    assert!(delayed.check(&others, &tally(&[(3, "v2", 1100)]), one).is_ok());
    assert!(delayed.check(&others, &tally(&[(3, "v2", 2100)]), one).is_err(), "the delay applied twice");
    assert!(delayed.check(&others, &tally(&[(3, "v2", 20)]), one).is_err(), "no delay");
    assert!(delayed.check(&tally(&[(20, "v1", 1200)]), &tally(&[(3, "v2", 1100)]), one).is_err(), "everybody delayed");
    // At or above it: unavailable after productpage's two 3 s tries, before the delay ends.
    let seven = Duration::from_secs(7);
    assert!(delayed.check(&others, &tally(&[(4, "unavailable", 6007)]), seven).is_ok());
    assert!(delayed.check(&others, &tally(&[(4, "unavailable", 3007)]), seven).is_err(), "one try only");
    assert!(delayed.check(&others, &tally(&[(4, "v2", 7010)]), seven).is_err());

    assert!(Expect::Spread
        .check(&tally(&[(20, "v1", 2), (20, "v2", 2), (20, "v3", 2)]), &none, Duration::ZERO)
        .is_ok());
    assert!(Expect::Spread.check(&tally(&[(60, "v1", 2)]), &none, Duration::ZERO).is_err());
}

/// The delay the fault step checks is the one in Istio's file (7 s), read, not assumed.
#[test]
fn fault_step_delay_is_read_from_its_file() {
    let step = GATEWAY_STEPS.iter().find(|s| s.name == "jason-delay").expect("fault step");
    assert_eq!(fixed_delay(&Api::Gateway.networking(), step.files), Some(Duration::from_secs(7)));
    let other = GATEWAY_STEPS.iter().find(|s| s.name == "all-v1").expect("all-v1");
    assert_eq!(fixed_delay(&Api::Gateway.networking(), other.files), None);
    let dir = std::env::temp_dir().join(format!("mesh-e2e-fixed-delay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("d.yaml"), "fault:\n  delay:\n    fixedDelay: 1500ms\n").expect("write");
    assert_eq!(fixed_delay(&dir, &["d.yaml"]), Some(Duration::from_millis(1500)));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Successes of `n` draws with probability `p` from a fixed-seed xorshift generator.
fn draws(state: &mut u64, n: usize, p: f64) -> usize {
    (0..n)
        .filter(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            (*state >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
        })
        .count()
}

/// The 50/50 checks (Bookinfo e2e, the bench's routing gate) use n = 1000: a fair split
/// passes and a 60/40 one fails, nearly always.
#[test]
fn binomial_bound_at_1000_passes_50_50_and_fails_60_40() {
    let mut state = 0x9e37_79b9_7f4a_7c15;
    let runs = 2000;
    let fair = (0..runs).filter(|_| within_binomial(draws(&mut state, 1000, 0.5), 1000, 0.5)).count();
    let skewed = (0..runs).filter(|_| within_binomial(draws(&mut state, 1000, 0.6), 1000, 0.5)).count();
    assert!(fair >= runs * 99 / 100, "a fair split passed only {fair} of {runs}");
    assert!(skewed <= runs / 100, "a 60/40 split passed {skewed} of {runs}");
    // The old n = 200 let most 60/40 runs through.
    let skewed_200 = (0..runs).filter(|_| within_binomial(draws(&mut state, 200, 0.6), 200, 0.5)).count();
    assert!(skewed_200 > runs / 10, "{skewed_200}");
}
