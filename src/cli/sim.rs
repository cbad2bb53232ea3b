//! `ledgerd sim`: one seed of the engine's deterministic simulation (`ledger::sim`), for as many
//! steps as wanted. A failure prints the invariant that broke and the command that replays it.

use std::time::Instant;

use ledger::sim::{run_with_progress, SimConfig};
use ledger::PlannerMutation;

/// Arguments of `ledgerd sim`.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// The seed: it fixes the operations, their interleaving, the faults, the clock and every
    /// random byte.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Steps to run (each submits one to four concurrent operations).
    #[arg(long, default_value_t = 10_000)]
    pub steps: u64,
    /// Run this many seeds, from `--seed` on.
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// Plant a deliberate bug, to see the simulation find it.
    #[arg(long, value_enum)]
    pub mutation: Option<Mutation>,
}

/// A bug `--mutation` plants.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Mutation {
    /// The planner accepts an exact expected version older than the stream's head.
    StaleExpectedVersion,
    /// The writer answers appends before their batch is committed.
    AckBeforeCommit,
}

/// Runs the seeds; false if one failed.
pub fn run(args: SimArgs) -> bool {
    let mutation = args.mutation.map(|m| match m {
        Mutation::StaleExpectedVersion => PlannerMutation::AcceptStaleExpectedVersion,
        Mutation::AckBeforeCommit => PlannerMutation::AckBeforeCommit,
    });
    for seed in args.seed..args.seed.saturating_add(args.seeds.max(1)) {
        let started = Instant::now();
        let config = SimConfig { seed, steps: args.steps, mutation };
        let result = run_with_progress(&config, &mut |step, report| {
            eprintln!("sim seed {seed}: step {step}/{}: {} events, {} crashes, {} failed fsyncs", args.steps, report.events, report.crashes, report.fsync_failures);
        });
        match result {
            Ok(report) => println!("sim seed {seed}: ok in {:.2} s: {report}", started.elapsed().as_secs_f64()),
            Err(failure) => {
                println!("{failure}");
                println!("(found after {:.2} s)", started.elapsed().as_secs_f64());
                return false;
            }
        }
    }
    true
}
