//! Thousands of seeded runs in CI. `SIM_SEEDS=N` runs more (a soak); `SIM_SEED=S` runs exactly
//! the one seed a failure printed.

use orderflow_sim::{Config, run};

fn seeds() -> Vec<u64> {
    if let Ok(one) = std::env::var("SIM_SEED") {
        return vec![one.parse().expect("SIM_SEED is a number")];
    }
    let n: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000);
    (0..n).collect()
}

#[test]
fn every_seed_keeps_the_books() {
    let config = Config::default();
    let mut totals = orderflow_sim::Faults::default();
    let mut statuses = std::collections::BTreeMap::new();
    for seed in seeds() {
        let report = run(seed, &config).unwrap_or_else(|failure| panic!("{failure}"));
        totals.crashes += report.faults.crashes;
        totals.duplicates += report.faults.duplicates;
        totals.lost += report.faults.lost;
        totals.transient += report.faults.transient;
        totals.cancels += report.faults.cancels;
        totals.redeliveries += report.faults.redeliveries;
        for (s, n) in report.statuses {
            *statuses.entry(s).or_insert(0) += n;
        }
    }
    println!("faults injected: {totals:?}\nfinal statuses: {statuses:?}");
    // The runs really exercised both paths and every kind of fault.
    assert!(statuses.get("completed").copied().unwrap_or(0) > 0);
    assert!(statuses.get("compensated").copied().unwrap_or(0) > 0);
    assert!(
        totals.crashes > 0 && totals.duplicates > 0 && totals.lost > 0 && totals.redeliveries > 0
    );
}

#[test]
fn a_seed_reproduces_its_run_exactly() {
    let config = Config::default();
    for seed in [1, 42, 1_234] {
        assert_eq!(run(seed, &config), run(seed, &config));
    }
}

#[test]
fn the_checker_catches_an_activity_that_is_not_idempotent() {
    // A broken activity that repeats its effect on redelivery must be caught (a double charge).
    let config = Config {
        idempotent_activities: false,
        ..Config::default()
    };
    let failure = (0..200)
        .find_map(|seed| run(seed, &config).err())
        .expect("some seed redelivers a task and exposes the double effect");
    assert!(failure.message.contains("double effect"), "{failure}");
    assert!(
        failure
            .to_string()
            .contains(&format!("SIM_SEED={}", failure.seed))
    );
}
