//! The single writer: group commit in three steps.
//!
//! Appends arrive already validated and encrypted (encryption stays off this thread). The writer
//! takes a batch (up to `batch_events_max` events, optionally waiting `batch_wait_us` for more),
//! reads what the batch touches (customers, event ids, stream heads: `gather`), and then:
//!
//! 1. **plan** (`crate::plan::plan`, pure): each append's outcome, positions, versions, records,
//!    leaves, the new frontier and root, and every row to write;
//! 2. **commit** (`Writer::commit_plan`): the new customers' keys into the [`KeyStore`], then the
//!    rows into the [`CommitLog`] as one durable batch (one fsync per batch locally). Only after
//!    that returns does any append in the batch get its answer;
//! 3. **apply** (`Writer::apply`): the caches the writer and the readers use, the published tree
//!    state, and the batch to live subscribers; then the answers.
//!
//! A failed commit poisons the store: it refuses writes until restart, because the medium's state
//! after a failed sync is unknown.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::error::LedgerError;
use crate::keys::KeyCache;
use crate::limits::EngineTuning;
use crate::merkle::{Frontier, Hash};
use crate::plan::{Accepted, CustomerStatus, Plan, PlanAppend, PlanState, PlannerMutation};
use crate::storage::{Batch, CommitLog, KeyStore, Space, WrappedKey};
use crate::store::{self, CustomerRecord, CustomerState, TreeState};
use crate::types::{CustomerId, EventId, ExpectedVersion, Position, StreamName, StreamVersion};

/// A message to the writer thread.
pub(crate) enum WriterMsg {
    /// Commit an append.
    Append(AppendCommand),
    /// Commit the appends queued before this, then change key rows (erasure, rewrapping).
    Control(Control),
    /// Commit everything queued before this, then stop.
    Shutdown,
}

/// Changes to `customers` and `keys` that are not appends. They go through the writer because it
/// is the only writer of those rows: an append sealed under a key erased meanwhile is refused
/// when the writer stages it, since it reads the customer's state after the erasure committed.
pub(crate) enum Control {
    /// Delete a customer's wrapped data key and mark the customer erased, in one synced batch.
    EraseKey { customer: CustomerId, reply: oneshot::Sender<Result<ErasedKey, LedgerError>> },
    /// Replace key rows that still hold the expected bytes (rewrapping under a new KEK). A row
    /// that changed meanwhile (erased) is left alone.
    Rewrap { rows: Vec<(CustomerId, WrappedKey, WrappedKey)>, reply: oneshot::Sender<Result<usize, LedgerError>> },
    /// Find the customer any of the identity keys belongs to and link the others to it; with
    /// `create` and no match, create that customer with all of them, in one synced batch. Being
    /// on the writer makes concurrent first messages from one new identifier create one customer.
    Identify {
        keys: Vec<Vec<u8>>,
        create: Option<(CustomerId, NewCustomer)>,
        reply: oneshot::Sender<Result<Option<(CustomerId, bool)>, LedgerError>>,
    },
    /// Attach identity keys to an existing, active customer. Refused if one belongs to another.
    Link { customer: CustomerId, keys: Vec<Vec<u8>>, reply: oneshot::Sender<Result<(), LedgerError>> },
}

/// Identity requests grouped into one synced batch, at most.
const IDENTIFY_GROUP_MAX: usize = 1024;

/// One queued identity request: identity keys, the customer to create if none matches, the reply.
type IdentifyRequest = (Vec<Vec<u8>>, Option<(CustomerId, NewCustomer)>, oneshot::Sender<Result<Option<(CustomerId, bool)>, LedgerError>>);

/// What erasing a customer's key found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErasedKey {
    /// The customer's region.
    pub region: crate::types::Region,
    /// SHA-256 of the destroyed `keys` row (KEK version and wrapped DEK), naming the key without
    /// revealing it; `None` when the customer was already erased.
    pub fingerprint: Option<Hash>,
    /// The customer had been erased before this call.
    pub already_erased: bool,
}

/// A validated, encrypted append.
pub(crate) struct AppendCommand {
    pub customer: CustomerId,
    /// Present when the caller did not find the customer and made a key for it.
    pub new_customer: Option<NewCustomer>,
    pub stream: StreamName,
    pub expected: ExpectedVersion,
    pub events: Vec<SealedEvent>,
    pub reply: oneshot::Sender<Result<AppendOutcome, Rejection>>,
}

/// A customer to create together with the first append.
pub(crate) struct NewCustomer {
    pub record: CustomerRecord,
    pub kek_version: u32,
    pub wrapped_dek: Vec<u8>,
}

/// One encrypted event waiting for its position.
pub(crate) struct SealedEvent {
    pub event_id: EventId,
    pub content_mac: [u8; 32],
    /// The pre-commit header; the writer appends position and version.
    pub header: Vec<u8>,
    pub sealed: Vec<u8>,
    pub sealed_hash: Hash,
}

/// Why the writer did not commit an append.
pub(crate) enum Rejection {
    /// A clear error for the caller.
    Error(LedgerError),
    /// Another append created this customer first; encrypt again under the stored key.
    CustomerCreatedConcurrently,
}

/// What a committed (or idempotently replayed) append returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Position of the first event; the rest follow contiguously.
    pub first_position: Position,
    /// The version the stream's next event will get.
    pub next_stream_version: StreamVersion,
    /// Tree size after the commit.
    pub tree_size: u64,
    /// Merkle root at `tree_size`.
    pub root: Hash,
    /// True when nothing new was written because every event id was already appended.
    pub idempotent_replay: bool,
}

/// Events committed together, as stored, for live subscribers.
#[derive(Debug)]
pub struct CommittedBatch {
    /// Position of `records[0]`.
    pub first_position: Position,
    /// Stored event records in position order.
    pub records: Vec<Vec<u8>>,
}

/// State the writer publishes to readers.
pub(crate) struct Shared {
    pub poisoned: AtomicBool,
    pub committed_size: AtomicU64,
    pub tree: RwLock<TreeState>,
    pub batches: broadcast::Sender<Arc<CommittedBatch>>,
    /// Test-only fault injection: the next batch commit fails as if the disk did.
    pub inject_write_fault: AtomicBool,
    /// Test-only fault injection: the writer thread panics when it next wakes.
    pub inject_writer_panic: AtomicBool,
    /// Test-only fault injection: the writer panics staging an append to this stream.
    pub writer_panic_on_stream: Option<String>,
    /// The unwrapped-key cache; the writer advances its erasure epoch when an erasure commits.
    pub keys: Arc<KeyCache>,
    /// Turns true once, when the store is poisoned, for whoever must stop looking ready.
    pub poisoned_watch: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    /// Poisons the store: from now on every write is refused until restart, `is_ready` is false
    /// and watchers of `poisoned_watch` are told. `why` names the cause for the log.
    pub fn poison(&self, why: &'static str, error: &dyn std::fmt::Display) {
        if !self.poisoned.swap(true, Ordering::AcqRel) {
            tracing::error!(cause = why, error = %error, "store poisoned; refusing writes until restart");
            metrics::gauge!("ledger_store_poisoned").set(1.0);
            metrics::counter!("ledger_store_poisoned_total", "cause" => why).increment(1);
            self.poisoned_watch.send_replace(true);
        }
    }
}

pub(crate) struct Writer {
    pub log: Arc<dyn CommitLog>,
    pub key_store: Arc<dyn KeyStore>,
    pub shared: Arc<Shared>,
    pub frontier: Frontier,
    pub tuning: EngineTuning,
    /// A deliberate bug, for the simulator's self-test; `None` in production.
    pub mutation: Option<PlannerMutation>,
    /// Stream prefix -> last version; the writer is the only writer, so this is authoritative.
    stream_heads: HashMap<Vec<u8>, Option<StreamVersion>>,
    /// Customers known to exist and be active.
    known_customers: HashSet<CustomerId>,
    /// A message taken off the queue while grouping identity requests, handled next round.
    carry: Option<WriterMsg>,
}

/// The answer owed to each append of a batch.
type Replies = Vec<oneshot::Sender<Result<AppendOutcome, Rejection>>>;

impl Writer {
    pub fn new(
        log: Arc<dyn CommitLog>,
        key_store: Arc<dyn KeyStore>,
        shared: Arc<Shared>,
        frontier: Frontier,
        tuning: EngineTuning,
        mutation: Option<PlannerMutation>,
    ) -> Self {
        Writer { log, key_store, shared, frontier, tuning, mutation, stream_heads: HashMap::new(), known_customers: HashSet::new(), carry: None }
    }

    /// Runs until a `Shutdown` message or until every sender is gone.
    pub fn run(mut self, mut rx: mpsc::Receiver<WriterMsg>) {
        loop {
            let first = match self.carry.take() {
                Some(m) => Some(m),
                None => rx.blocking_recv(),
            };
            if self.round(first, &mut rx) {
                break;
            }
        }
        tracing::info!(tree_size = self.frontier.size(), "writer stopped");
    }

    /// One round without blocking, for a writer driven by hand (the simulator): takes what is
    /// queued and handles it like `run` would. Returns false when nothing was queued.
    pub fn step(&mut self, rx: &mut mpsc::Receiver<WriterMsg>) -> bool {
        let first = match self.carry.take() {
            Some(m) => m,
            None => match rx.try_recv() {
                Ok(m) => m,
                Err(_) => return false,
            },
        };
        self.round(Some(first), rx);
        true
    }

    /// Handles `first` and whatever joins it in the same batch. Returns true to stop.
    fn round(&mut self, first: Option<WriterMsg>, rx: &mut mpsc::Receiver<WriterMsg>) -> bool {
        let mut batch: Vec<AppendCommand> = Vec::new();
        let mut stop = false;
        let mut control = None;
        if self.shared.inject_writer_panic.swap(false, Ordering::AcqRel) {
            panic!("injected writer panic");
        }
        match first {
            Some(WriterMsg::Append(cmd)) => batch.push(cmd),
            Some(WriterMsg::Control(c)) => control = Some(c),
            Some(WriterMsg::Shutdown) | None => stop = true,
        }
        let mut events: usize = batch.iter().map(|c| c.events.len()).sum();
        let deadline = Instant::now() + Duration::from_micros(self.tuning.batch_wait_us);
        while !stop && control.is_none() && events < self.tuning.batch_events_max {
            match rx.try_recv() {
                Ok(WriterMsg::Append(cmd)) => {
                    events += cmd.events.len();
                    batch.push(cmd);
                }
                Ok(WriterMsg::Control(c)) => control = Some(c),
                Ok(WriterMsg::Shutdown) => stop = true,
                Err(mpsc::error::TryRecvError::Empty) if Instant::now() < deadline => std::thread::yield_now(),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            self.group_commit(batch);
        }
        match control {
            Some(Control::Identify { keys, create, reply }) => {
                // Identity requests that queued up together share one synced batch: a burst
                // of first messages from new numbers costs one fsync, not one each.
                let mut group = vec![(keys, create, reply)];
                while group.len() < IDENTIFY_GROUP_MAX {
                    match rx.try_recv() {
                        Ok(WriterMsg::Control(Control::Identify { keys, create, reply })) => group.push((keys, create, reply)),
                        Ok(other) => {
                            self.carry = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                self.identify_group(group);
            }
            Some(c) => self.control(c),
            None => {}
        }
        stop
    }

    /// Gathers, plans, commits and applies one batch of appends, then answers them.
    fn group_commit(&mut self, batch: Vec<AppendCommand>) {
        if self.shared.poisoned.load(Ordering::Acquire) {
            for cmd in batch {
                let _ = cmd.reply.send(Err(Rejection::Error(LedgerError::Poisoned)));
            }
            return;
        }
        let started = Instant::now();
        let mut replies: Replies = Vec::with_capacity(batch.len());
        let mut appends = Vec::with_capacity(batch.len());
        for cmd in batch {
            if self.shared.writer_panic_on_stream.as_deref() == Some(cmd.stream.as_str()) {
                panic!("injected writer panic (an append to the fault-injection stream)");
            }
            let prefix = store::stream_prefix(cmd.customer, &cmd.stream);
            replies.push(cmd.reply);
            appends.push(PlanAppend { customer: cmd.customer, new_customer: cmd.new_customer, prefix, expected: cmd.expected, events: cmd.events });
        }
        let (customers, event_ids, heads) = match self.gather(&appends) {
            Ok(state) => state,
            Err(e) => {
                // A read of the store failed: nothing of the batch is decided, so nothing is written.
                tracing::error!(error = %e, "reading the state a batch needs failed");
                for reply in replies {
                    let _ = reply.send(Err(Rejection::Error(LedgerError::Internal("reading the store failed".into()))));
                }
                return;
            }
        };
        let state = PlanState { customers: &customers, event_ids: &event_ids, heads: &heads, frontier: &self.frontier };
        let mut plan = crate::plan::plan(&state, appends, self.mutation);
        if plan.writes_nothing() {
            // Every append was refused or an idempotent replay.
            let tree = self.shared.tree.read().expect("tree lock").clone();
            answer(replies, std::mem::take(&mut plan.outcomes), &tree);
            return;
        }
        if self.mutation == Some(PlannerMutation::AckBeforeCommit) {
            // The deliberate bug: the answers go out before the commit.
            answer(replies, std::mem::take(&mut plan.outcomes), &plan.tree);
            replies = Vec::new();
        }
        if let Err(e) = self.commit_plan(&plan) {
            self.shared.poison("batch commit failed", &e);
            for reply in replies {
                let _ = reply.send(Err(Rejection::Error(LedgerError::Poisoned)));
            }
            return;
        }
        let commit_seconds = started.elapsed().as_secs_f64();
        let (outcomes, tree, events) = (std::mem::take(&mut plan.outcomes), plan.tree.clone(), plan.records.len());
        self.apply(plan);
        metrics::counter!("ledger_events_appended_total").increment(events as u64);
        metrics::counter!("ledger_batches_committed_total").increment(1);
        metrics::histogram!("ledger_batch_events").record(events as f64);
        metrics::histogram!("ledger_batch_commit_seconds").record(commit_seconds);
        metrics::gauge!("ledger_tree_size").set(tree.size as f64);
        answer(replies, outcomes, &tree);
    }

    /// Reads what planning the batch needs: the customers' states (active ones the writer knows
    /// are not read), the event ids already stored, and the streams' heads.
    #[allow(clippy::type_complexity)]
    fn gather(
        &self,
        appends: &[PlanAppend],
    ) -> Result<(HashMap<CustomerId, CustomerStatus>, HashMap<EventId, (Position, [u8; 32])>, HashMap<Vec<u8>, Option<StreamVersion>>), LedgerError> {
        let mut customers = HashMap::with_capacity(appends.len());
        let mut event_ids = HashMap::new();
        let mut heads = HashMap::with_capacity(appends.len());
        for a in appends {
            if !customers.contains_key(&a.customer) {
                let status = if self.known_customers.contains(&a.customer) {
                    Some(CustomerStatus::Active)
                } else {
                    self.log.get_map(Space::Customers, a.customer.as_bytes(), CustomerRecord::decode)?.map(|rec| match rec.state {
                        CustomerState::Active => CustomerStatus::Active,
                        CustomerState::Erased => CustomerStatus::Erased,
                    })
                };
                if let Some(status) = status {
                    customers.insert(a.customer, status);
                }
            }
            for ev in &a.events {
                if let Some(found) = self.log.get_map(Space::EventIds, ev.event_id.as_bytes(), store::decode_event_id_record)? {
                    event_ids.insert(ev.event_id, found);
                }
            }
            if !heads.contains_key(&a.prefix) {
                let head = match self.stream_heads.get(&a.prefix) {
                    Some(h) => *h,
                    None => store::stream_head(&*self.log, &a.prefix)?,
                };
                heads.insert(a.prefix.clone(), head);
            }
        }
        Ok((customers, event_ids, heads))
    }

    /// Step 2: the new customers' keys, then the rows, durably. Keys go first: a key whose
    /// customer never committed is harmless (and replaced), a customer without a key is not.
    // On the writer thread: durable changes block, and are made only here.
    #[allow(clippy::disallowed_methods)]
    fn commit_plan(&self, plan: &Plan) -> Result<(), LedgerError> {
        if self.shared.inject_write_fault.swap(false, Ordering::AcqRel) {
            return Err(LedgerError::Integrity("injected write fault".into()));
        }
        let sync_started = Instant::now();
        if !plan.new_keys.is_empty() {
            self.key_store.put_new(&plan.new_keys)?;
        }
        let result = self.log.commit(&plan.batch);
        metrics::histogram!("ledger_wal_write_sync_seconds").record(sync_started.elapsed().as_secs_f64());
        result
    }

    /// Step 3: what the next batch and the readers see, and the batch to subscribers.
    fn apply(&mut self, plan: Plan) {
        self.frontier = plan.frontier;
        if self.stream_heads.len() + plan.heads.len() > self.tuning.stream_cache_entries_max {
            self.stream_heads.clear();
        }
        self.stream_heads.extend(plan.heads);
        if self.known_customers.len() + plan.active.len() > self.tuning.stream_cache_entries_max {
            self.known_customers.clear();
        }
        self.known_customers.extend(plan.active);
        *self.shared.tree.write().expect("tree lock") = plan.tree.clone();
        self.shared.committed_size.store(plan.tree.size, Ordering::Release);
        if !plan.records.is_empty() {
            // No receiver is fine: nobody is subscribed.
            let _ = self.shared.batches.send(Arc::new(CommittedBatch { first_position: plan.first_position, records: plan.records }));
        }
    }

    fn control(&mut self, control: Control) {
        match control {
            Control::EraseKey { customer, reply } => {
                let erased = self.erase_key(customer);
                // Advance the cache's erasure epoch after the erasure is durable and before the
                // answer (also when it failed: a cached key must not outlive an erasure
                // attempt). See `KeyCache` for why this makes re-caching impossible.
                self.shared.keys.erased(&customer);
                let _ = reply.send(erased);
            }
            Control::Rewrap { rows, reply } => {
                let _ = reply.send(self.rewrap(rows));
            }
            Control::Identify { keys, create, reply } => self.identify_group(vec![(keys, create, reply)]),
            Control::Link { customer, keys, reply } => {
                let _ = reply.send(self.link(customer, keys));
            }
        }
    }

    fn identity_owner(&self, key: &[u8]) -> Result<Option<CustomerId>, LedgerError> {
        self.log.get_map(Space::Identity, key, |bytes| {
            Ok(CustomerId(uuid::Uuid::from_slice(bytes).map_err(|_| LedgerError::Corrupt("identity row with a bad customer id".into()))?))
        })
    }

    fn put_identity(batch: &mut Batch, customer: CustomerId, key: &[u8]) {
        batch.put(Space::Identity, key, customer.as_bytes());
        batch.put(Space::IdentityByCustomer, &store::identity_by_customer_key(customer, key), &[]);
    }

    /// Resolves a group of identity requests in order, in one durable commit. `assigned` holds
    /// the rows earlier requests of the group added, so two requests for one new identifier in the
    /// same group still make one customer.
    fn identify_group(&mut self, group: Vec<IdentifyRequest>) {
        let mut batch = Batch::default();
        let mut new_keys = Vec::new();
        let mut assigned: HashMap<Vec<u8>, CustomerId> = HashMap::new();
        let mut answers = Vec::with_capacity(group.len());
        let mut created_any = Vec::new();
        let mut changed = false;
        for (keys, create, reply) in group {
            let result = (|| -> Result<Option<(CustomerId, bool)>, LedgerError> {
                let mut owner = None;
                for key in &keys {
                    let found = match assigned.get(key) {
                        Some(c) => Some(*c),
                        None => self.identity_owner(key)?,
                    };
                    if found.is_some() {
                        owner = found;
                        break;
                    }
                }
                let (customer, created) = match (owner, create) {
                    (Some(c), _) => (c, false),
                    (None, Some((c, nc))) => {
                        batch.put(Space::Customers, c.as_bytes(), &nc.record.encode());
                        new_keys.push((c, WrappedKey { kek_version: nc.kek_version, wrapped: nc.wrapped_dek }));
                        (c, true)
                    }
                    (None, None) => return Ok(None),
                };
                for key in &keys {
                    if !assigned.contains_key(key) && self.identity_owner(key)?.is_none() {
                        Self::put_identity(&mut batch, customer, key);
                        assigned.insert(key.clone(), customer);
                        changed = true;
                    }
                }
                Ok(Some((customer, created)))
            })();
            if let Ok(Some((c, true))) = &result {
                created_any.push(*c);
                changed = true;
            }
            answers.push((reply, result));
        }
        let written = if changed { self.commit_control(&new_keys, &batch) } else { Ok(()) };
        if written.is_ok() {
            self.known_customers.extend(created_any);
        }
        for (reply, result) in answers {
            let _ = reply.send(match &written {
                Ok(()) => result,
                Err(_) => Err(LedgerError::Poisoned),
            });
        }
    }

    fn link(&mut self, customer: CustomerId, keys: Vec<Vec<u8>>) -> Result<(), LedgerError> {
        let record = self.log.get_map(Space::Customers, customer.as_bytes(), CustomerRecord::decode)?.ok_or(LedgerError::NotFound { what: "customer" })?;
        if record.state == CustomerState::Erased {
            return Err(LedgerError::CustomerErased { customer: customer.to_string() });
        }
        let mut batch = Batch::default();
        for key in &keys {
            match self.identity_owner(key)? {
                Some(c) if c == customer => {}
                Some(_) => return Err(LedgerError::invalid("identifier", "already belongs to another customer")),
                None => Self::put_identity(&mut batch, customer, key),
            }
        }
        if !batch.is_empty() {
            self.commit_control(&[], &batch)?;
        }
        Ok(())
    }

    /// Commits a control change (keys first, like appends); a failure poisons the store like a
    /// failed append.
    // On the writer thread: durable changes block, and are made only here.
    #[allow(clippy::disallowed_methods)]
    fn commit_control(&self, new_keys: &[(CustomerId, WrappedKey)], batch: &Batch) -> Result<(), LedgerError> {
        if self.shared.poisoned.load(Ordering::Acquire) {
            return Err(LedgerError::Poisoned);
        }
        let result = if new_keys.is_empty() { Ok(()) } else { self.key_store.put_new(new_keys) };
        if let Err(e) = result.and_then(|()| if batch.is_empty() { Ok(()) } else { self.log.commit(batch) }) {
            self.shared.poison("control commit failed", &e);
            return Err(LedgerError::Poisoned);
        }
        Ok(())
    }

    /// Erasure: the key is destroyed first (durably), then the customer is marked erased and its
    /// identity rows are deleted. A crash in between leaves an active customer without a key,
    /// which every read already treats as erased; erasing again completes it.
    // On the writer thread: durable changes block, and are made only here.
    #[allow(clippy::disallowed_methods)]
    fn erase_key(&mut self, customer: CustomerId) -> Result<ErasedKey, LedgerError> {
        let mut record = self.log.get_map(Space::Customers, customer.as_bytes(), CustomerRecord::decode)?.ok_or(LedgerError::NotFound { what: "customer" })?;
        if self.shared.poisoned.load(Ordering::Acquire) {
            return Err(LedgerError::Poisoned);
        }
        // `destroy` reads the key and writes only if there is one to destroy.
        let destroyed = match self.key_store.destroy(customer) {
            Ok(d) => d,
            Err(e) => {
                self.shared.poison("key destruction failed", &e);
                return Err(LedgerError::Poisoned);
            }
        };
        if record.state == CustomerState::Erased && destroyed.is_none() {
            return Ok(ErasedKey { region: record.region, fingerprint: None, already_erased: true });
        }
        let fingerprint = destroyed.as_ref().map(WrappedKey::fingerprint);
        record.state = CustomerState::Erased;
        let mut batch = Batch::default();
        batch.put(Space::Customers, customer.as_bytes(), &record.encode());
        // The blind-index rows go in the same commit: nothing leads from an identifier to the
        // customer any more.
        self.log.scan_prefix(Space::IdentityByCustomer, customer.as_bytes(), &mut |key, _| {
            batch.delete(Space::Identity, &key[16..]);
            batch.delete(Space::IdentityByCustomer, key);
            Ok(std::ops::ControlFlow::Continue(()))
        })?;
        self.commit_control(&[], &batch)?;
        self.known_customers.remove(&customer);
        Ok(ErasedKey { region: record.region, fingerprint, already_erased: false })
    }

    // On the writer thread: durable changes block, and are made only here.
    #[allow(clippy::disallowed_methods)]
    fn rewrap(&mut self, rows: Vec<(CustomerId, WrappedKey, WrappedKey)>) -> Result<usize, LedgerError> {
        if self.shared.poisoned.load(Ordering::Acquire) {
            return Err(LedgerError::Poisoned);
        }
        self.key_store.rewrap(&rows).inspect_err(|e| self.shared.poison("key rewrap failed", e)).map_err(|_| LedgerError::Poisoned)
    }
}

/// Sends each append its answer: its outcome with the tree after the batch.
fn answer(replies: Replies, outcomes: Vec<Result<Accepted, Rejection>>, tree: &TreeState) {
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        let _ = reply.send(outcome.map(|(first_position, next_stream_version, idempotent_replay)| AppendOutcome {
            first_position,
            next_stream_version,
            tree_size: tree.size,
            root: tree.root,
            idempotent_replay,
        }));
    }
}
