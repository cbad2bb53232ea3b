//! A deterministic simulation of the engine on the in-memory log and key store, with storage
//! faults (TigerBeetle's VOPR is the model). One seed fixes everything: the operations, their
//! interleaving, the faults, the clock and every random byte the engine draws.
//!
//! Each step submits a few concurrent operations (appends with any / no-stream / exact expected
//! versions, right or stale or ahead; idempotent retries; reuse of an id with other content;
//! first appends racing to create one customer; erasures), then runs the writer by hand round by
//! round, polling every operation's future after each round, or (a slow commit) does not run it
//! at all this step. Faults are queued on the media: a failed fsync (the batch may or may not
//! survive), or a crash before the write, in the middle of it (a torn last frame), or after it
//! before anyone is told. A poisoned or crashed ledger is dropped and reopened from the media,
//! which runs the startup check; operations whose answer never came are then resolved from what
//! the log holds.
//!
//! After every round and every step the simulation checks, against a model built only from
//! acknowledged answers:
//! - every acknowledged event is present, at its position, with its content, across restarts;
//! - positions are contiguous, and the acknowledged appends tile the log exactly: nothing is
//!   committed that no one was told about (outside an unanswered, in-doubt append);
//! - each accepted append's expected version held at its position, and each refusal was right;
//! - the root equals the RFC 9162 root of the leaves read back, and live batches arrive in order;
//! - no erased customer's payload is readable, and their key is gone from the key store's medium;
//! - idempotency is permanent: a retry of an acknowledged append replays it, forever;
//! - an append in doubt is all there or not there at all;
//! - after a failed fsync the store is poisoned and nothing more is acknowledged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use rand::{Rng as _, SeedableRng};

use crate::codec::{EventHeader, RecordRef};
use crate::env::{ManualClock, SeededRng};
use crate::merkle::{root_of, Frontier, Hash};
use crate::storage::memory::{Fault, Faults, KeyMedium, LogMedium, MemoryKeys, MemoryLog};
use crate::types::*;
use crate::{AppendInput, AppendOutcome, Backends, ErasedKey, ErrorCode, EventFilter, Ledger, LedgerConfig, LedgerError, NewEvent, Payload, PlannerMutation, StartupCheck};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Fixes everything.
    pub seed: u64,
    /// Steps to run.
    pub steps: u64,
    /// A deliberate bug to plant, to show the simulation finds it.
    pub mutation: Option<PlannerMutation>,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// Steps run.
    pub steps: u64,
    /// Operations submitted.
    pub operations: u64,
    /// Appends acknowledged as committed.
    pub appends_committed: u64,
    /// Events in the log at the end.
    pub events: u64,
    /// Retries answered as idempotent replays.
    pub replays: u64,
    /// Refusals checked (wrong expected version, duplicate id, erased customer).
    pub refusals: u64,
    /// Customers erased.
    pub erasures: u64,
    /// Crashes injected (before, during, after a write).
    pub crashes: u64,
    /// Failed fsyncs injected.
    pub fsync_failures: u64,
    /// Torn frame bytes recovery cut off.
    pub torn_bytes: u64,
    /// Reopenings of the media.
    pub restarts: u64,
    /// Appends left in doubt by a crash or a failed fsync and resolved from the log.
    pub in_doubt_resolved: u64,
    /// Steps in which the writer did not run (slow commits).
    pub slow_steps: u64,
}

impl SimReport {
    /// Adds `other`'s counts to these (totals over seeds).
    pub fn add(&mut self, other: &SimReport) {
        let SimReport { steps, operations, appends_committed, events, replays, refusals, erasures, crashes, fsync_failures, torn_bytes, restarts, in_doubt_resolved, slow_steps } = other;
        for (total, n) in [
            (&mut self.steps, steps),
            (&mut self.operations, operations),
            (&mut self.appends_committed, appends_committed),
            (&mut self.events, events),
            (&mut self.replays, replays),
            (&mut self.refusals, refusals),
            (&mut self.erasures, erasures),
            (&mut self.crashes, crashes),
            (&mut self.fsync_failures, fsync_failures),
            (&mut self.torn_bytes, torn_bytes),
            (&mut self.restarts, restarts),
            (&mut self.in_doubt_resolved, in_doubt_resolved),
            (&mut self.slow_steps, slow_steps),
        ] {
            *total += n;
        }
    }
}

impl std::fmt::Display for SimReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} steps, {} operations: {} appends committed ({} events), {} replays, {} refusals checked, {} erasures; \
             faults: {} crashes, {} failed fsyncs, {} torn bytes cut, {} restarts, {} appends in doubt resolved, {} slow steps",
            self.steps,
            self.operations,
            self.appends_committed,
            self.events,
            self.replays,
            self.refusals,
            self.erasures,
            self.crashes,
            self.fsync_failures,
            self.torn_bytes,
            self.restarts,
            self.in_doubt_resolved,
            self.slow_steps
        )
    }
}

/// An invariant that broke.
#[derive(Clone, Debug)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// The step it broke in (1-based).
    pub step: u64,
    /// The steps the run was asked for.
    pub steps: u64,
    /// The planted bug, if any.
    pub mutation: Option<PlannerMutation>,
    /// What broke.
    pub what: String,
}

impl SimFailure {
    /// The one command that replays this run exactly.
    pub fn replay_command(&self) -> String {
        let mutation = match self.mutation {
            Some(PlannerMutation::AcceptStaleExpectedVersion) => " --mutation stale-expected-version",
            Some(PlannerMutation::AckBeforeCommit) => " --mutation ack-before-commit",
            None => "",
        };
        format!("cargo run --release --bin ledgerd -- sim --seed {} --steps {}{mutation}", self.seed, self.step)
    }
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "simulation seed {} failed at step {}: {}\nreplay: {}", self.seed, self.step, self.what, self.replay_command())
    }
}

const CUSTOMERS_MAX: usize = 6;
const STREAMS: usize = 3;
const REGION: &str = "eu";

type Fut<T> = Pin<Box<dyn Future<Output = Result<T, LedgerError>>>>;

enum Kind {
    /// A fresh append (`retry_of: None`), a retry of acknowledged append `retry_of`, or an
    /// append reusing its ids with other content (`conflict`).
    Append { input: AppendInput, customer: usize, stream: usize, submitted_head: u64, retry_of: Option<usize>, conflict: bool },
    Erase { customer: usize },
}

enum Running {
    Append(Fut<AppendOutcome>),
    Erase(Fut<ErasedKey>),
}

struct Pending {
    kind: Kind,
    running: Running,
}

struct Event {
    customer: usize,
    stream: usize,
    id: EventId,
    payload: Vec<u8>,
    leaf: Option<Hash>,
}

#[derive(Clone)]
struct Acked {
    input: AppendInput,
    customer: usize,
    stream: usize,
    first: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    /// No committed event yet.
    New,
    Active,
    Erased,
}

struct Model {
    customers: Vec<(CustomerId, Status)>,
    log: Vec<Event>,
    acked: Vec<Acked>,
    /// Customers an erasure was submitted for.
    erase_submitted: BTreeSet<usize>,
    /// Events in each stream.
    heads: BTreeMap<(usize, usize), u64>,
    frontier: Frontier,
    /// Positions read back and checked.
    checked: u64,
    /// Next position a live batch must start at.
    live_next: u64,
}

struct World {
    dir: std::path::PathBuf,
    log_medium: LogMedium,
    key_medium: KeyMedium,
    faults: Arc<Faults>,
    clock: Arc<ManualClock>,
    seed: u64,
    incarnation: u64,
    mutation: Option<PlannerMutation>,
    ledger: Option<Ledger>,
    live: Option<tokio::sync::broadcast::Receiver<Arc<crate::CommittedBatch>>>,
}

impl World {
    fn open(&mut self) -> Result<(Ledger, crate::storage::memory::Recovery), LedgerError> {
        self.incarnation += 1;
        self.faults.reset();
        let (log, recovery) = MemoryLog::recover(self.log_medium.clone(), self.faults.clone())?;
        let mut config = LedgerConfig::new(&self.dir, vec![Region::parse(REGION, "region").expect("region")]);
        config.startup_check = StartupCheck::Full;
        // Small queues and batches, so backpressure and batch splits happen.
        config.tuning.write_queue_appends_max = 8;
        config.tuning.batch_events_max = 24;
        config.tuning.batch_wait_us = 0;
        config.tuning.stream_cache_entries_max = 16;
        let backends = Backends {
            log: Arc::new(log),
            keys: Arc::new(MemoryKeys::open(self.key_medium.clone(), self.faults.clone())),
            clock: self.clock.clone(),
            rng: Arc::new(SeededRng::new(self.seed ^ self.incarnation.wrapping_mul(0x9e37_79b9_7f4a_7c15))),
            manual_writer: true,
            mutation: self.mutation,
        };
        let (ledger, _) = Ledger::open_with(config, backends)?;
        self.live = Some(ledger.subscribe_batches());
        self.ledger = Some(ledger.clone());
        Ok((ledger, recovery))
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.live = None;
        self.ledger = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs one seed. `Err` says which invariant broke, where, and how to replay it.
pub fn run(config: &SimConfig) -> Result<SimReport, SimFailure> {
    run_with_progress(config, &mut |_, _| {})
}

/// [`run`], calling `progress` with the step number and the report so far every 1,000 steps.
pub fn run_with_progress(config: &SimConfig, progress: &mut dyn FnMut(u64, &SimReport)) -> Result<SimReport, SimFailure> {
    let mut sim = Sim::new(config).map_err(|what| SimFailure { seed: config.seed, step: 0, steps: config.steps, mutation: config.mutation, what })?;
    for step in 1..=config.steps {
        if step % 1000 == 0 {
            sim.report.events = sim.model.log.len() as u64;
            progress(step, &sim.report);
        }
        sim.step_no = step;
        if let Err(what) = sim.step() {
            return Err(SimFailure { seed: config.seed, step, steps: config.steps, mutation: config.mutation, what });
        }
    }
    sim.final_check().map_err(|what| SimFailure { seed: config.seed, step: config.steps, steps: config.steps, mutation: config.mutation, what })?;
    sim.report.steps = config.steps;
    sim.report.events = sim.model.log.len() as u64;
    Ok(sim.report)
}

struct Sim {
    rng: rand::rngs::StdRng,
    world: World,
    ledger: Ledger,
    model: Model,
    pending: Vec<Pending>,
    /// Appends and erasures whose answer never came, to resolve after a restart.
    in_doubt: Vec<Kind>,
    report: SimReport,
    step_no: u64,
    next_event: u64,
    /// Set when the ledger was seen poisoned: no answer after this may be a success.
    poisoned: bool,
}

fn ok_or<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

impl Sim {
    fn new(config: &SimConfig) -> Result<Sim, String> {
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ledger-sim-{}-{}-{run}", std::process::id(), config.seed));
        let mut world = World {
            dir,
            log_medium: LogMedium::default(),
            key_medium: KeyMedium::default(),
            faults: Arc::new(Faults::default()),
            clock: Arc::new(ManualClock::new(UnixMillis(1_767_225_600_000))),
            seed: config.seed,
            incarnation: 0,
            mutation: config.mutation,
            ledger: None,
            live: None,
        };
        let (ledger, _) = ok_or(world.open(), "opening a fresh ledger")?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
        let customers = (0..3).map(|_| (CustomerId(uuid::Uuid::from_u128(rng.r#gen::<u128>() | 1 << 127)), Status::New)).collect();
        Ok(Sim {
            rng,
            world,
            ledger,
            model: Model {
                customers,
                log: Vec::new(),
                acked: Vec::new(),
                erase_submitted: BTreeSet::new(),
                heads: BTreeMap::new(),
                frontier: Frontier::default(),
                checked: 0,
                live_next: 0,
            },
            pending: Vec::new(),
            in_doubt: Vec::new(),
            report: SimReport::default(),
            step_no: 0,
            next_event: 0,
            poisoned: false,
        })
    }

    fn stream_name(s: usize) -> StreamName {
        StreamName::parse(&format!("conversation-{s}"), "stream", &Default::default()).expect("stream name")
    }

    fn step(&mut self) -> Result<(), String> {
        self.world.clock.advance(self.rng.gen_range(1..50));
        // Faults for this step's commits.
        let roll = self.rng.gen_range(0..1000);
        if roll < 25 {
            let fault = match self.rng.gen_range(0..3) {
                0 => Fault::CrashBeforeWrite,
                1 => Fault::CrashTorn { keep: self.rng.gen_range(1..400) },
                _ => Fault::CrashAfterWrite,
            };
            if self.rng.gen_bool(0.8) { self.world.faults.next_commit(fault) } else { self.world.faults.next_key_change(fault) }
        } else if roll < 40 {
            let fault = Fault::FsyncFailure { persisted: self.rng.gen_bool(0.5) };
            if self.rng.gen_bool(0.8) { self.world.faults.next_commit(fault) } else { self.world.faults.next_key_change(fault) }
        }
        // Reads against the model, before anything new.
        self.check_reads()?;
        // This step's operations, submitted concurrently.
        let ops = self.rng.gen_range(1..=4);
        for _ in 0..ops {
            self.submit()?;
        }
        if self.rng.gen_bool(0.15) {
            // A slow commit: the writer does not get to run this step; the queue fills.
            self.report.slow_steps += 1;
            self.poll_all()?;
            return Ok(());
        }
        self.run_writer()
    }

    fn submit(&mut self) -> Result<(), String> {
        self.report.operations += 1;
        let roll = self.rng.gen_range(0..100);
        let kind = if roll < 12 && !self.model.acked.is_empty() {
            let i = self.rng.gen_range(0..self.model.acked.len());
            let a = self.model.acked[i].clone();
            let head = self.head(a.customer, a.stream);
            Kind::Append { input: a.input, customer: a.customer, stream: a.stream, submitted_head: head, retry_of: Some(i), conflict: false }
        } else if roll < 17 && !self.model.acked.is_empty() {
            let i = self.rng.gen_range(0..self.model.acked.len());
            let mut a = self.model.acked[i].clone();
            let e = self.rng.gen_range(0..a.input.events.len());
            a.input.events[e].payload.push(0xee);
            let head = self.head(a.customer, a.stream);
            Kind::Append { input: a.input, customer: a.customer, stream: a.stream, submitted_head: head, retry_of: None, conflict: true }
        } else if roll < 19 {
            let active: Vec<usize> = (0..self.model.customers.len()).filter(|c| self.model.customers[*c].1 == Status::Active).collect();
            if active.is_empty() {
                return Ok(());
            }
            let customer = active[self.rng.gen_range(0..active.len())];
            self.model.erase_submitted.insert(customer);
            Kind::Erase { customer }
        } else {
            let live = self.model.customers.iter().filter(|c| c.1 != Status::Erased).count();
            if live == 0 || (roll < 24 && live < CUSTOMERS_MAX) {
                let id = CustomerId(uuid::Uuid::from_u128(self.rng.r#gen::<u128>() | 1 << 127));
                self.model.customers.push((id, Status::New));
            }
            // Mostly customers that are not erased; sometimes an erased one, to be refused.
            let mut customer = self.rng.gen_range(0..self.model.customers.len());
            while self.model.customers[customer].1 == Status::Erased && self.rng.gen_bool(0.9) {
                customer = self.rng.gen_range(0..self.model.customers.len());
            }
            let stream = self.rng.gen_range(0..STREAMS);
            let head = self.head(customer, stream);
            let expected = match self.rng.gen_range(0..6) {
                0 | 1 => ExpectedVersion::Any,
                2 => ExpectedVersion::NoStream,
                3 => head.checked_sub(1).map_or(ExpectedVersion::NoStream, |v| ExpectedVersion::Exact(StreamVersion(v))),
                4 => ExpectedVersion::Exact(StreamVersion(head.saturating_sub(2))),
                _ => ExpectedVersion::Exact(StreamVersion(head)),
            };
            let events = (0..self.rng.gen_range(1..=3))
                .map(|_| {
                    self.next_event += 1;
                    let len = self.rng.gen_range(1..40);
                    NewEvent {
                        event_id: EventId(uuid::Uuid::from_u128(u128::from(self.world.seed) << 64 | u128::from(self.next_event))),
                        event_type: EventType::parse("MessageReceived", "event_type", &Default::default()).expect("type"),
                        channel: Channel::Whatsapp,
                        direction: Direction::Inbound,
                        occurred_at: None,
                        metadata: Metadata::new(),
                        payload: (0..len).map(|_| self.rng.r#gen::<u8>()).collect(),
                        schema_version: 1,
                    }
                })
                .collect();
            let region = Some(Region::parse(REGION, "region").expect("region"));
            let input = AppendInput { customer: self.model.customers[customer].0, region, stream: Self::stream_name(stream), expected, events };
            Kind::Append { input, customer, stream, submitted_head: head, retry_of: None, conflict: false }
        };
        self.start(kind);
        self.poll_all()
    }

    fn start(&mut self, kind: Kind) {
        let l = self.ledger.clone();
        let running = match &kind {
            Kind::Append { input, .. } => {
                let input = input.clone();
                Running::Append(Box::pin(async move { l.append(input).await }))
            }
            Kind::Erase { customer } => {
                let c = self.model.customers[*customer].0;
                Running::Erase(Box::pin(async move { l.erase_key(c).await }))
            }
        };
        self.pending.push(Pending { kind, running });
    }

    fn head(&self, customer: usize, stream: usize) -> u64 {
        self.model.heads.get(&(customer, stream)).copied().unwrap_or(0)
    }

    /// Runs the writer round by round, polling after each, until nothing is left to do; restarts
    /// the ledger if a fault poisoned or crashed it.
    fn run_writer(&mut self) -> Result<(), String> {
        loop {
            let worked = self.ledger.step_writer();
            self.poll_all()?;
            if self.world.faults.crashed() {
                return self.restart();
            }
            if self.ledger.is_poisoned() {
                // A failed fsync: the node stays up, poisoned, for a little while; everything
                // asked of it meanwhile must be refused. Then it restarts.
                for _ in 0..self.rng.gen_range(1..=3) {
                    self.submit()?;
                }
                while self.ledger.step_writer() {
                    self.poll_all()?;
                }
                self.poll_all()?;
                return self.restart();
            }
            if !worked {
                return Ok(());
            }
        }
    }

    /// Polls every pending operation once and checks each answer that came.
    fn poll_all(&mut self) -> Result<(), String> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut done = Vec::new();
        let mut still = Vec::new();
        for mut p in std::mem::take(&mut self.pending) {
            let ready = match &mut p.running {
                Running::Append(f) => match f.as_mut().poll(&mut cx) {
                    Poll::Ready(r) => Some(Ok(r)),
                    Poll::Pending => None,
                },
                Running::Erase(f) => match f.as_mut().poll(&mut cx) {
                    Poll::Ready(r) => Some(Err(r)),
                    Poll::Pending => None,
                },
            };
            match ready {
                Some(answer) => done.push((p.kind, answer)),
                None => still.push(p),
            }
        }
        self.pending = still;
        let poisoned_before = self.poisoned;
        self.poisoned |= self.ledger.is_poisoned();
        // Committed appends in position order: they must tile the log. Refusals are checked
        // after, against the heads those commits made.
        let mut committed = Vec::new();
        let mut refused = Vec::new();
        for (kind, answer) in done {
            match (kind, answer) {
                (Kind::Append { input, customer, stream, submitted_head, retry_of, conflict }, Ok(result)) => match result {
                    Ok(out) => {
                        if poisoned_before {
                            return Err(format!("an append was acknowledged after the store was poisoned (position {})", out.first_position.0));
                        }
                        if out.idempotent_replay {
                            let Some(i) = retry_of else {
                                return Err(format!("a fresh append (conflict: {conflict}) was answered as a replay at {}", out.first_position.0));
                            };
                            if out.first_position.0 != self.model.acked[i].first {
                                return Err(format!("a retry replayed at {} but the append was at {}", out.first_position.0, self.model.acked[i].first));
                            }
                            self.report.replays += 1;
                        } else if retry_of.is_some() || conflict {
                            return Err(format!(
                                "a {} of an acknowledged append committed again at {}: idempotency is not permanent",
                                if conflict { "conflicting reuse" } else { "retry" },
                                out.first_position.0
                            ));
                        } else {
                            committed.push((out, input, customer, stream));
                        }
                    }
                    Err(e) => refused.push((e, input, customer, stream, submitted_head, retry_of, conflict)),
                },
                (Kind::Erase { customer }, Err(result)) => match result {
                    Ok(_) => {
                        if poisoned_before {
                            return Err("an erasure was acknowledged after the store was poisoned".into());
                        }
                        self.erased(customer)?;
                    }
                    Err(e) if e.code() == ErrorCode::StorePoisoned || matches!(e, LedgerError::Internal(_)) => {
                        self.in_doubt.push(Kind::Erase { customer });
                    }
                    Err(e) => return Err(format!("erasing an active customer failed: {e}")),
                },
                (kind @ Kind::Append { .. }, Err(_)) | (kind @ Kind::Erase { .. }, Ok(_)) => {
                    unreachable!("answers match their kind: {}", matches!(kind, Kind::Append { .. }))
                }
            }
        }
        committed.sort_by_key(|c| c.0.first_position);
        for (out, input, customer, stream) in committed {
            self.add_committed(out.first_position.0, &input, customer, stream, Some(&out))?;
        }
        for (e, input, customer, stream, submitted_head, retry_of, conflict) in refused {
            self.check_refusal(&e, &input, customer, stream, submitted_head, retry_of, conflict)?;
        }
        if !self.world.faults.crashed() && !self.ledger.is_poisoned() {
            let size = self.ledger.committed_size();
            if size != self.model.log.len() as u64 {
                return Err(format!("the log holds {size} events but {} were acknowledged", self.model.log.len()));
            }
            self.check_live()?;
        }
        Ok(())
    }

    /// Adds an append committed at `first` to the model, checking it tiles the log and that its
    /// expected version held there.
    fn add_committed(&mut self, first: u64, input: &AppendInput, customer: usize, stream: usize, out: Option<&AppendOutcome>) -> Result<(), String> {
        if first != self.model.log.len() as u64 {
            return Err(format!("an append committed at position {first} but the log so far ends at {}", self.model.log.len()));
        }
        let head = self.head(customer, stream);
        let held = match input.expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => head == 0,
            ExpectedVersion::Exact(v) => head == v.0 + 1,
        };
        if !held {
            return Err(format!("an append expecting {:?} committed at {first} where its stream had {head} events", input.expected));
        }
        let n = input.events.len() as u64;
        if let Some(out) = out {
            if out.next_stream_version.0 != head + n {
                return Err(format!("next stream version {} after an append to a stream of {head} events plus {n}", out.next_stream_version.0));
            }
        }
        for ev in &input.events {
            self.model.log.push(Event { customer, stream, id: ev.event_id, payload: ev.payload.clone(), leaf: None });
        }
        self.model.heads.insert((customer, stream), head + n);
        if self.model.customers[customer].1 == Status::New {
            self.model.customers[customer].1 = Status::Active;
        }
        self.model.acked.push(Acked { input: input.clone(), customer, stream, first });
        self.report.appends_committed += 1;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn check_refusal(
        &mut self,
        e: &LedgerError,
        input: &AppendInput,
        customer: usize,
        stream: usize,
        submitted_head: u64,
        retry_of: Option<usize>,
        conflict: bool,
    ) -> Result<(), String> {
        let code = e.code();
        let crashed = self.world.faults.crashed();
        let right = match code {
            ErrorCode::StorePoisoned | ErrorCode::Internal if crashed || code == ErrorCode::StorePoisoned => {
                // Its fate is unknown until the log is read after a restart.
                if !self.ledger.is_poisoned() && !crashed {
                    return Err("an append was refused as poisoned by a store that is not".into());
                }
                self.in_doubt.push(Kind::Append { input: input.clone(), customer, stream, submitted_head, retry_of, conflict });
                return Ok(());
            }
            ErrorCode::CustomerErased => self.model.erase_submitted.contains(&customer),
            ErrorCode::DuplicateEventId => conflict,
            ErrorCode::WrongExpectedVersion => {
                let actual = match e {
                    LedgerError::WrongExpectedVersion { actual_version, .. } => actual_version.map_or(0, |v| v + 1),
                    _ => unreachable!("the code says so"),
                };
                // The head it was planned against lies between the one at submission and now.
                let now = self.head(customer, stream);
                let consistent = (submitted_head..=now).contains(&actual);
                let wrong = match input.expected {
                    ExpectedVersion::Any => false,
                    ExpectedVersion::NoStream => actual > 0,
                    ExpectedVersion::Exact(v) => actual != v.0 + 1,
                };
                retry_of.is_none() && !conflict && consistent && wrong
            }
            _ => false,
        };
        if !right {
            return Err(format!(
                "an append (retry: {}, conflict: {conflict}, expecting {:?}) was refused wrongly: {e}",
                retry_of.is_some(),
                input.expected
            ));
        }
        self.report.refusals += 1;
        Ok(())
    }

    fn erased(&mut self, customer: usize) -> Result<(), String> {
        if self.model.customers[customer].1 != Status::Erased {
            self.report.erasures += 1;
        }
        self.model.customers[customer].1 = Status::Erased;
        let id = self.model.customers[customer].0;
        if self.world.key_medium.lock().expect("medium lock").contains_key(&id) {
            return Err("an erased customer's wrapped key is still on the key store's medium".into());
        }
        for s in 0..STREAMS {
            let events = ok_or(self.ledger.read_stream(id, &Self::stream_name(s), None, false, 1000), "reading an erased customer's stream")?;
            if let Some(ev) = events.iter().find(|e| e.payload != Payload::Erased) {
                return Err(format!("an erased customer's event at {} reads as {:?}", ev.header.position.0, ev.payload));
            }
        }
        Ok(())
    }

    /// Live batches: in order, contiguous, and the events the model has at those positions.
    fn check_live(&mut self) -> Result<(), String> {
        let Some(rx) = self.world.live.as_mut() else { return Ok(()) };
        loop {
            match rx.try_recv() {
                Ok(batch) => {
                    if batch.first_position.0 != self.model.live_next {
                        return Err(format!("a live batch starts at {} where {} was next", batch.first_position.0, self.model.live_next));
                    }
                    for (i, record) in batch.records.iter().enumerate() {
                        let position = batch.first_position.0 + i as u64;
                        let header = RecordRef::decode(record).and_then(|r| EventHeader::decode(r.header)).map_err(|e| e.to_string())?;
                        let want = self.model.log.get(position as usize).map(|e| e.id);
                        if Some(header.event_id) != want || header.position.0 != position {
                            return Err(format!("the live batch's event at {position} is not the one acknowledged there"));
                        }
                    }
                    self.model.live_next += batch.records.len() as u64;
                }
                Err(tokio::sync::broadcast::error::TryRecvError::Empty) => return Ok(()),
                Err(e) => return Err(format!("live batches: {e}")),
            }
        }
    }

    /// Reads the log back: new positions every step, everything every 64 steps.
    fn check_reads(&mut self) -> Result<(), String> {
        let from = if self.step_no % 64 == 0 { 0 } else { self.model.checked };
        self.check_range(from)?;
        // One stream, both ways.
        let customer = self.rng.gen_range(0..self.model.customers.len());
        let stream = self.rng.gen_range(0..STREAMS);
        let (id, status) = self.model.customers[customer];
        let want: Vec<&Event> = self.model.log.iter().filter(|e| e.customer == customer && e.stream == stream).collect();
        let got = ok_or(self.ledger.read_stream(id, &Self::stream_name(stream), None, false, 1000), "reading a stream")?;
        if got.len() != want.len() {
            return Err(format!("a stream reads back {} events but {} were acknowledged", got.len(), want.len()));
        }
        for (g, w) in got.iter().zip(&want) {
            if g.header.event_id != w.id || !Self::payload_ok(&g.payload, status, &w.payload) {
                return Err(format!("a stream's event at {} is not what was acknowledged", g.header.position.0));
            }
        }
        if let Some(last) = want.last() {
            let back = ok_or(self.ledger.read_stream(id, &Self::stream_name(stream), None, true, 1), "reading a stream backward")?;
            if back.first().map(|e| e.header.event_id) != Some(last.id) {
                return Err("a stream read backward does not start at its last event".into());
            }
        }
        Ok(())
    }

    fn payload_ok(got: &Payload, status: Status, want: &[u8]) -> bool {
        match (got, status) {
            (Payload::Erased, Status::Erased) => true,
            (Payload::Available(p), Status::Active) => p == want,
            _ => false,
        }
    }

    fn check_range(&mut self, from: u64) -> Result<(), String> {
        let size = self.model.log.len() as u64;
        if from >= size {
            return Ok(());
        }
        let (events, next) = ok_or(
            self.ledger.read_range(Position(from), Position(size), usize::MAX, usize::MAX, &EventFilter::default()),
            "reading the log",
        )?;
        if next.0 != size || events.len() as u64 != size - from {
            return Err(format!("the log reads back to {} of {size} acknowledged events", next.0));
        }
        for ev in events {
            let p = ev.header.position.0;
            let want = &self.model.log[p as usize];
            let status = self.model.customers[want.customer].1;
            if ev.header.event_id != want.id
                || ev.header.customer != self.model.customers[want.customer].0
                || ev.header.stream != Self::stream_name(want.stream).as_str()
                || !Self::payload_ok(&ev.payload, status, &want.payload)
            {
                return Err(format!("the event at position {p} is not the one acknowledged there (payload {:?}, customer {status:?})", ev.payload));
            }
            match want.leaf {
                Some(leaf) if leaf != ev.leaf => return Err(format!("the leaf at position {p} changed")),
                Some(_) => {}
                None => {
                    self.model.log[p as usize].leaf = Some(ev.leaf);
                    self.model.frontier.push(ev.leaf, |_, _, _| {});
                }
            }
        }
        self.model.checked = size;
        let tree = self.ledger.tree();
        if tree.size != size || tree.root != self.model.frontier.root() {
            return Err(format!("the tree head (size {}) does not match the root of the {size} leaves read back", tree.size));
        }
        Ok(())
    }

    /// Drops the ledger (a crash or a poisoned store restarting), reopens it from the media and
    /// resolves every operation left in doubt from what the log holds.
    fn restart(&mut self) -> Result<(), String> {
        if self.world.faults.crashed() {
            self.report.crashes += 1;
        } else {
            self.report.fsync_failures += 1;
        }
        for p in std::mem::take(&mut self.pending) {
            self.in_doubt.push(p.kind);
        }
        self.world.live = None;
        self.world.ledger = None;
        let (ledger, recovery) = ok_or(self.world.open(), "reopening after a fault: the startup check refused the store")?;
        self.ledger = ledger;
        self.poisoned = false;
        self.report.restarts += 1;
        self.report.torn_bytes += recovery.torn_bytes as u64;
        // Everything acknowledged survived.
        let acked = self.model.log.len() as u64;
        let size = self.ledger.committed_size();
        if size < acked {
            return Err(format!("after a restart the log holds {size} events but {acked} were acknowledged"));
        }
        self.model.checked = 0;
        self.model.frontier = Frontier::default();
        for e in &mut self.model.log {
            e.leaf = None;
        }
        // Appends in doubt: all there or none, at the positions past the acknowledged ones.
        let (tail, _) = ok_or(self.ledger.read_range(Position(acked), Position(size), usize::MAX, usize::MAX, &EventFilter::default()), "reading the log's tail")?;
        let at: HashMap<EventId, u64> = tail.iter().map(|e| (e.header.event_id, e.header.position.0)).collect();
        let mut resolved = Vec::new();
        let mut erases = Vec::new();
        for kind in std::mem::take(&mut self.in_doubt) {
            match kind {
                Kind::Append { input, customer, stream, retry_of, conflict, .. } => {
                    let found: Vec<Option<u64>> = input.events.iter().map(|e| at.get(&e.event_id).copied()).collect();
                    if found.iter().all(Option::is_none) {
                        continue;
                    }
                    if retry_of.is_some() || conflict {
                        return Err("a retry or conflicting reuse of an acknowledged append was committed again".into());
                    }
                    let first = found[0].ok_or("an append in doubt is partly in the log")?;
                    if found.iter().enumerate().any(|(i, p)| *p != Some(first + i as u64)) {
                        return Err("an append in doubt is partly in the log, or not contiguous".into());
                    }
                    resolved.push((first, input, customer, stream));
                }
                Kind::Erase { customer } => erases.push(customer),
            }
        }
        resolved.sort_by_key(|r| r.0);
        for (first, input, customer, stream) in resolved {
            self.add_committed(first, &input, customer, stream, None)?;
            self.report.in_doubt_resolved += 1;
        }
        if self.ledger.committed_size() != self.model.log.len() as u64 {
            return Err(format!(
                "after a restart the log holds {} events: {} acknowledged or in doubt",
                self.ledger.committed_size(),
                self.model.log.len()
            ));
        }
        self.model.live_next = self.model.log.len() as u64;
        // Erasures in doubt are asked again (a DPO's retry) and must complete.
        for customer in erases {
            if self.model.customers[customer].1 == Status::New {
                continue;
            }
            self.start(Kind::Erase { customer });
        }
        self.poll_all()?;
        while self.ledger.step_writer() {
            self.poll_all()?;
        }
        if !self.pending.is_empty() {
            return Err("an erasure asked again after a restart did not finish".into());
        }
        self.check_range(0)
    }

    fn final_check(&mut self) -> Result<(), String> {
        // Let everything queued finish, then read everything back.
        self.world.faults.reset();
        self.run_writer()?;
        for _ in 0..100 {
            if self.pending.is_empty() {
                break;
            }
            self.run_writer()?;
        }
        if !self.pending.is_empty() {
            return Err(format!("{} operations never finished", self.pending.len()));
        }
        self.check_range(0)?;
        let leaves: Vec<Hash> = self.model.log.iter().map(|e| e.leaf.expect("checked")).collect();
        if self.ledger.tree().root != root_of(&leaves) {
            return Err("the root is not the RFC 9162 root of the leaves".into());
        }
        for c in 0..self.model.customers.len() {
            if self.model.customers[c].1 == Status::Erased {
                self.erased(c)?;
            }
        }
        Ok(())
    }
}
