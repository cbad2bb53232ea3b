//! The deterministic simulation (`ledger::sim`) over fixed seeds, and proof that it catches bugs:
//! with a planner bug planted, some seed of the same set must fail.

use ledger::sim::{run, SimConfig};
use ledger::PlannerMutation;

/// Seeds and steps `make test` runs.
const SEEDS: u64 = 200;
const STEPS: u64 = 1000;

#[test]
fn fixed_seeds_hold_every_invariant() {
    let started = std::time::Instant::now();
    let mut totals = ledger::sim::SimReport::default();
    for seed in 1..=SEEDS {
        match run(&SimConfig { seed, steps: STEPS, mutation: None }) {
            Ok(r) => totals.add(&r),
            Err(failure) => panic!("{failure}"),
        }
    }
    eprintln!("{SEEDS} seeds x {STEPS} steps in {:.1} s: {totals}", started.elapsed().as_secs_f64());
    // The faults and paths the invariants are meant to be checked under did happen.
    assert!(totals.crashes > 0 && totals.fsync_failures > 0 && totals.torn_bytes > 0, "{totals}");
    assert!(totals.in_doubt_resolved > 0 && totals.erasures > 0 && totals.replays > 0 && totals.refusals > 0, "{totals}");
}

#[test]
fn the_same_seed_runs_the_same_way() {
    let a = run(&SimConfig { seed: 7, steps: 300, mutation: None }).unwrap();
    let b = run(&SimConfig { seed: 7, steps: 300, mutation: None }).unwrap();
    assert_eq!(a.to_string(), b.to_string());
}

fn first_failure(mutation: PlannerMutation) -> Option<ledger::sim::SimFailure> {
    (1..=SEEDS).find_map(|seed| run(&SimConfig { seed, steps: STEPS, mutation: Some(mutation) }).err())
}

#[test]
fn a_planner_that_accepts_a_stale_expected_version_is_caught() {
    let failure = first_failure(PlannerMutation::AcceptStaleExpectedVersion).expect("some seed catches the planted bug");
    eprintln!("caught: {failure}");
    assert!(failure.what.contains("expecting"), "{failure}");
    assert!(failure.replay_command().contains(&format!("--seed {} --steps {}", failure.seed, failure.step)));
}

#[test]
fn a_writer_that_acknowledges_before_the_commit_is_caught() {
    let failure = first_failure(PlannerMutation::AckBeforeCommit).expect("some seed catches the planted bug");
    eprintln!("caught: {failure}");
    assert!(failure.what.contains("acknowledged"), "{failure}");
}
