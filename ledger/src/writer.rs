//! The single writer thread: group commit.
//!
//! Appends arrive already validated and encrypted (encryption stays off this thread). The writer
//! takes a batch (up to `batch_events_max` events, optionally waiting `batch_wait_us` for more),
//! and for each append in order: creates the customer if this append brought a new key, checks
//! idempotency and the expected version against the store plus everything earlier in the batch,
//! assigns positions and stream versions, computes leaf hashes and extends the Merkle frontier.
//! Everything, including the new tree state, goes into one `WriteBatch` written with `sync = true`
//! (one WAL fsync per batch). Only after that returns does any append in the batch get its answer.
//! A failed write or sync poisons the store: it refuses writes until restart, because RocksDB's
//! state after a failed sync is unknown.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rocksdb::{WriteBatch, WriteOptions, DB};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::codec::{commit_suffix, encode_record};
use crate::error::LedgerError;
use crate::keys::KeyCache;
use crate::limits::EngineTuning;
use crate::merkle::{leaf_hash, Frontier, Hash};
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
    Rewrap { rows: Vec<(CustomerId, Vec<u8>, Vec<u8>)>, reply: oneshot::Sender<Result<usize, LedgerError>> },
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
    /// Test-only fault injection: the next batch write fails as if the disk did.
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
    pub db: Arc<DB>,
    pub shared: Arc<Shared>,
    pub frontier: Frontier,
    pub tuning: EngineTuning,
    /// Stream prefix -> last version; the writer is the only writer, so this is authoritative.
    stream_heads: HashMap<Vec<u8>, Option<StreamVersion>>,
    /// Customers known to exist and be active.
    known_customers: HashSet<CustomerId>,
}

/// Per-batch view of what earlier appends in the same batch changed.
#[derive(Default)]
struct BatchOverlay {
    stream_heads: HashMap<Vec<u8>, Option<StreamVersion>>,
    event_ids: HashMap<EventId, (Position, [u8; 32])>,
    /// Customers created by this batch.
    customers: HashSet<CustomerId>,
    /// Existing customers this batch found active in the store.
    seen_customers: HashSet<CustomerId>,
}

struct Staged {
    reply: oneshot::Sender<Result<AppendOutcome, Rejection>>,
    result: Result<(Position, StreamVersion, bool), Rejection>,
}

impl Writer {
    pub fn new(db: Arc<DB>, shared: Arc<Shared>, frontier: Frontier, tuning: EngineTuning) -> Self {
        Writer { db, shared, frontier, tuning, stream_heads: HashMap::new(), known_customers: HashSet::new() }
    }

    /// Runs until a `Shutdown` message or until every sender is gone.
    pub fn run(mut self, mut rx: mpsc::Receiver<WriterMsg>) {
        let mut batch: Vec<AppendCommand> = Vec::new();
        // A message taken off the queue while grouping identity requests, handled next round.
        let mut carry: Option<WriterMsg> = None;
        loop {
            let mut stop = false;
            let mut control = None;
            let first = match carry.take() {
                Some(m) => Some(m),
                None => rx.blocking_recv(),
            };
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
                self.commit(std::mem::take(&mut batch));
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
                                carry = Some(other);
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
            if stop {
                break;
            }
        }
        tracing::info!(tree_size = self.frontier.size(), "writer stopped");
    }

    // The writer thread: the one place synced batches are made.
    #[allow(clippy::disallowed_methods)]
    fn commit(&mut self, batch: Vec<AppendCommand>) {
        if self.shared.poisoned.load(Ordering::Acquire) {
            for cmd in batch {
                let _ = cmd.reply.send(Err(Rejection::Error(LedgerError::Poisoned)));
            }
            return;
        }
        let started = Instant::now();
        let mut wb = WriteBatch::default();
        let mut frontier = self.frontier.clone();
        let mut overlay = BatchOverlay::default();
        let mut staged = Vec::with_capacity(batch.len());
        let mut records = Vec::new();
        let first_position = Position(frontier.size());
        for cmd in batch {
            let AppendCommand { customer, new_customer, stream, expected, events, reply } = cmd;
            let result =
                self.stage(customer, new_customer, &stream, expected, events, &mut wb, &mut frontier, &mut overlay, &mut records);
            staged.push(Staged { reply, result });
        }
        if frontier.size() == self.frontier.size() {
            // Nothing to write: every append was rejected or an idempotent replay.
            self.reply_all(staged);
            return;
        }
        let tree = TreeState { size: frontier.size(), root: frontier.root() };
        wb.put_cf(self.cf(store::CF_META), store::META_TREE, tree.encode());
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        let sync_started = Instant::now();
        let write_result = if self.shared.inject_write_fault.swap(false, Ordering::AcqRel) {
            Err(LedgerError::Integrity("injected write fault".into()))
        } else {
            self.db.write_opt(wb, &opts).map_err(LedgerError::from)
        };
        metrics::histogram!("ledger_wal_write_sync_seconds").record(sync_started.elapsed().as_secs_f64());
        if let Err(e) = write_result {
            self.shared.poison("batch write failed", &e);
            for s in staged {
                let _ = s.reply.send(Err(Rejection::Error(LedgerError::Poisoned)));
            }
            return;
        }
        let sync_seconds = started.elapsed().as_secs_f64();
        // Committed: publish the new state, then answer.
        self.frontier = frontier;
        if self.stream_heads.len() + overlay.stream_heads.len() > self.tuning.stream_cache_entries_max {
            self.stream_heads.clear();
        }
        self.stream_heads.extend(overlay.stream_heads);
        if self.known_customers.len() + overlay.customers.len() > self.tuning.stream_cache_entries_max {
            self.known_customers.clear();
        }
        self.known_customers.extend(overlay.customers);
        self.known_customers.extend(overlay.seen_customers);
        *self.shared.tree.write().expect("tree lock") = tree.clone();
        self.shared.committed_size.store(tree.size, Ordering::Release);
        let batch_events = records.len();
        if !records.is_empty() {
            // No receiver is fine: nobody is subscribed.
            let _ = self.shared.batches.send(Arc::new(CommittedBatch { first_position, records }));
        }
        metrics::counter!("ledger_events_appended_total").increment(batch_events as u64);
        metrics::counter!("ledger_batches_committed_total").increment(1);
        metrics::histogram!("ledger_batch_events").record(batch_events as f64);
        metrics::histogram!("ledger_batch_commit_seconds").record(sync_seconds);
        metrics::gauge!("ledger_tree_size").set(tree.size as f64);
        self.reply_all(staged);
    }

    fn control(&mut self, control: Control) {
        match control {
            Control::EraseKey { customer, reply } => {
                let erased = self.erase_key(customer);
                // Advance the cache's erasure epoch after the batch is synced and before the
                // answer (also when the write failed: a cached key must not outlive an erasure
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
        match self.db.get_pinned_cf(self.cf(store::CF_IDENTITY), key)? {
            Some(bytes) => Ok(Some(CustomerId(
                uuid::Uuid::from_slice(&bytes).map_err(|_| LedgerError::Corrupt("identity row with a bad customer id".into()))?,
            ))),
            None => Ok(None),
        }
    }

    fn put_identity(&self, wb: &mut WriteBatch, customer: CustomerId, key: &[u8]) {
        wb.put_cf(self.cf(store::CF_IDENTITY), key, customer.as_bytes());
        wb.put_cf(self.cf(store::CF_IDENTITY_BY_CUSTOMER), store::identity_by_customer_key(customer, key), []);
    }

    /// Resolves a group of identity requests in order, in one synced batch. `assigned` holds the
    /// rows earlier requests of the group added, so two requests for one new identifier in the
    /// same group still make one customer.
    fn identify_group(&mut self, group: Vec<IdentifyRequest>) {
        let mut wb = WriteBatch::default();
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
                        wb.put_cf(self.cf(store::CF_CUSTOMERS), c.as_bytes(), nc.record.encode());
                        wb.put_cf(self.cf(store::CF_KEYS), c.as_bytes(), store::encode_key_record(nc.kek_version, &nc.wrapped_dek));
                        (c, true)
                    }
                    (None, None) => return Ok(None),
                };
                for key in &keys {
                    if !assigned.contains_key(key) && self.identity_owner(key)?.is_none() {
                        self.put_identity(&mut wb, customer, key);
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
        let written = if changed { self.write_synced(wb) } else { Ok(()) };
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
        let bytes = self.db.get_cf(self.cf(store::CF_CUSTOMERS), customer.as_bytes())?.ok_or(LedgerError::NotFound { what: "customer" })?;
        if CustomerRecord::decode(&bytes)?.state == CustomerState::Erased {
            return Err(LedgerError::CustomerErased { customer: customer.to_string() });
        }
        let mut wb = WriteBatch::default();
        let mut changed = false;
        for key in &keys {
            match self.identity_owner(key)? {
                Some(c) if c == customer => {}
                Some(_) => return Err(LedgerError::invalid("identifier", "already belongs to another customer")),
                None => {
                    self.put_identity(&mut wb, customer, key);
                    changed = true;
                }
            }
        }
        if changed {
            self.write_synced(wb)?;
        }
        Ok(())
    }

    /// Writes a control batch with sync; a failure poisons the store like a failed append.
    #[allow(clippy::disallowed_methods)]
    fn write_synced(&self, wb: WriteBatch) -> Result<(), LedgerError> {
        if self.shared.poisoned.load(Ordering::Acquire) {
            return Err(LedgerError::Poisoned);
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        if let Err(e) = self.db.write_opt(wb, &opts) {
            self.shared.poison("control batch write failed", &e);
            return Err(LedgerError::Poisoned);
        }
        Ok(())
    }

    fn erase_key(&mut self, customer: CustomerId) -> Result<ErasedKey, LedgerError> {
        let customers_cf = self.cf(store::CF_CUSTOMERS);
        let keys_cf = self.cf(store::CF_KEYS);
        let bytes = self.db.get_cf(customers_cf, customer.as_bytes())?.ok_or(LedgerError::NotFound { what: "customer" })?;
        let mut record = CustomerRecord::decode(&bytes)?;
        let key_row = self.db.get_cf(keys_cf, customer.as_bytes())?;
        if record.state == CustomerState::Erased && key_row.is_none() {
            return Ok(ErasedKey { region: record.region, fingerprint: None, already_erased: true });
        }
        let fingerprint = key_row.as_deref().map(crate::merkle::sha256);
        record.state = CustomerState::Erased;
        let mut wb = WriteBatch::default();
        // A plain delete, not SingleDelete: KEK rotation rewrites the row, and SingleDelete is
        // only defined for a key written once. The forced bottommost compaction that follows
        // drops the tombstone and every older version alike.
        wb.delete_cf(keys_cf, customer.as_bytes());
        wb.put_cf(customers_cf, customer.as_bytes(), record.encode());
        // The blind-index rows go in the same batch: nothing leads from an identifier to the
        // customer any more.
        for item in self.db.prefix_iterator_cf(self.cf(store::CF_IDENTITY_BY_CUSTOMER), customer.as_bytes()) {
            let (key, _) = item?;
            if !key.starts_with(customer.as_bytes()) {
                break;
            }
            wb.delete_cf(self.cf(store::CF_IDENTITY), &key[16..]);
            wb.delete_cf(self.cf(store::CF_IDENTITY_BY_CUSTOMER), &key);
        }
        self.write_synced(wb)?;
        self.known_customers.remove(&customer);
        Ok(ErasedKey { region: record.region, fingerprint, already_erased: false })
    }

    fn rewrap(&mut self, rows: Vec<(CustomerId, Vec<u8>, Vec<u8>)>) -> Result<usize, LedgerError> {
        let keys_cf = self.cf(store::CF_KEYS);
        let mut wb = WriteBatch::default();
        let mut count = 0;
        for (customer, old, new) in rows {
            if self.db.get_pinned_cf(keys_cf, customer.as_bytes())?.as_deref() == Some(&old[..]) {
                wb.put_cf(keys_cf, customer.as_bytes(), new);
                count += 1;
            }
        }
        if count > 0 {
            self.write_synced(wb)?;
        }
        Ok(count)
    }

    fn reply_all(&self, staged: Vec<Staged>) {
        let tree = self.shared.tree.read().expect("tree lock").clone();
        for s in staged {
            let answer = s.result.map(|(first_position, next_stream_version, idempotent_replay)| AppendOutcome {
                first_position,
                next_stream_version,
                tree_size: tree.size,
                root: tree.root,
                idempotent_replay,
            });
            let _ = s.reply.send(answer);
        }
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column family exists")
    }

    /// Checks one append against the store and the batch so far and, if it goes through, adds its
    /// rows to `wb`. Returns (first position, next stream version, idempotent replay). Nothing is
    /// added to `wb`, `frontier` or `overlay` for a rejected append.
    #[allow(clippy::too_many_arguments)]
    fn stage(
        &self,
        customer: CustomerId,
        new_customer: Option<NewCustomer>,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<SealedEvent>,
        wb: &mut WriteBatch,
        frontier: &mut Frontier,
        overlay: &mut BatchOverlay,
        records: &mut Vec<Vec<u8>>,
    ) -> Result<(Position, StreamVersion, bool), Rejection> {
        if self.shared.writer_panic_on_stream.as_deref() == Some(stream.as_str()) {
            panic!("injected writer panic (an append to the fault-injection stream)");
        }
        let err = |e: LedgerError| Rejection::Error(e);
        // 1. The customer.
        let exists = overlay.customers.contains(&customer)
            || overlay.seen_customers.contains(&customer)
            || self.known_customers.contains(&customer)
            || {
            match self.db.get_pinned_cf(self.cf(store::CF_CUSTOMERS), customer.as_bytes()).map_err(|e| err(e.into()))? {
                Some(bytes) => {
                    let rec = CustomerRecord::decode(&bytes).map_err(err)?;
                    if rec.state == CustomerState::Erased {
                        return Err(err(LedgerError::CustomerErased { customer: customer.to_string() }));
                    }
                    overlay.seen_customers.insert(customer);
                    true
                }
                None => false,
            }
        };
        if exists && new_customer.is_some() {
            return Err(Rejection::CustomerCreatedConcurrently);
        }
        if !exists && new_customer.is_none() {
            return Err(err(LedgerError::NotFound { what: "customer" }));
        }

        // 2. Idempotency: all ids known with the same content is a replay; any other overlap is refused.
        let prefix = store::stream_prefix(customer, stream);
        let mut known = 0usize;
        let mut first_known: Option<EventId> = None;
        let mut replay_first: Option<Position> = None;
        for (i, ev) in events.iter().enumerate() {
            let found = match overlay.event_ids.get(&ev.event_id) {
                Some(v) => Some(*v),
                None => match self.db.get_pinned_cf(self.cf(store::CF_EVENT_IDS), ev.event_id.as_bytes()).map_err(|e| err(e.into()))? {
                    Some(bytes) => Some(store::decode_event_id_record(&bytes).map_err(err)?),
                    None => None,
                },
            };
            if let Some((position, mac)) = found {
                if mac != ev.content_mac {
                    return Err(err(LedgerError::DuplicateEventId { event_id: ev.event_id.to_string() }));
                }
                if i == 0 {
                    replay_first = Some(position);
                }
                // A replay must be the same append again: its events sit contiguously.
                if replay_first.map(|f| f.0 + i as u64) != Some(position.0) {
                    return Err(err(LedgerError::DuplicateEventId { event_id: ev.event_id.to_string() }));
                }
                first_known.get_or_insert(ev.event_id);
                known += 1;
            }
        }
        let head = self.head(&prefix, overlay).map_err(err)?;
        if known == events.len() {
            let first = replay_first.expect("at least one event");
            let next = head.map_or(0, |v| v.0 + 1);
            return Ok((first, StreamVersion(next), true));
        }
        if known > 0 {
            let id = first_known.expect("a known id was counted");
            return Err(err(LedgerError::DuplicateEventId { event_id: id.to_string() }));
        }

        // 3. Expected version.
        let ok = match expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => head.is_none(),
            ExpectedVersion::Exact(v) => head == Some(v),
        };
        if !ok {
            return Err(err(LedgerError::WrongExpectedVersion {
                expected: match expected {
                    ExpectedVersion::Any => "any".into(),
                    ExpectedVersion::NoStream => "no stream".into(),
                    ExpectedVersion::Exact(v) => v.0.to_string(),
                },
                actual: head.map_or_else(|| "none".to_owned(), |v| v.0.to_string()),
                actual_version: head.map(|v| v.0),
            }));
        }

        // 4. Commit into the batch.
        if let Some(nc) = new_customer {
            wb.put_cf(self.cf(store::CF_CUSTOMERS), customer.as_bytes(), nc.record.encode());
            wb.put_cf(self.cf(store::CF_KEYS), customer.as_bytes(), store::encode_key_record(nc.kek_version, &nc.wrapped_dek));
            overlay.customers.insert(customer);
        }
        let first = Position(frontier.size());
        let mut version = head.map_or(0, |v| v.0 + 1);
        let events_cf = self.cf(store::CF_EVENTS);
        let streams_cf = self.cf(store::CF_STREAMS);
        let ids_cf = self.cf(store::CF_EVENT_IDS);
        let merkle_cf = self.cf(store::CF_MERKLE);
        for mut ev in events {
            let position = Position(frontier.size());
            commit_suffix(&mut ev.header, position, StreamVersion(version));
            let leaf = leaf_hash(&ev.header, &ev.sealed_hash);
            let record = encode_record(&ev.header, &ev.sealed, &leaf);
            wb.put_cf(events_cf, store::event_key(position), &record);
            wb.put_cf(streams_cf, store::stream_key(&prefix, StreamVersion(version)), position.0.to_be_bytes());
            wb.put_cf(ids_cf, ev.event_id.as_bytes(), store::encode_event_id_record(position, &ev.content_mac));
            frontier.push(leaf, |level, index, hash| wb.put_cf(merkle_cf, store::merkle_key(level, index), hash));
            overlay.event_ids.insert(ev.event_id, (position, ev.content_mac));
            records.push(record);
            version += 1;
        }
        overlay.stream_heads.insert(prefix, Some(StreamVersion(version - 1)));
        Ok((first, StreamVersion(version), false))
    }

    fn head(&self, prefix: &[u8], overlay: &BatchOverlay) -> Result<Option<StreamVersion>, LedgerError> {
        if let Some(v) = overlay.stream_heads.get(prefix) {
            return Ok(*v);
        }
        if let Some(v) = self.stream_heads.get(prefix) {
            return Ok(*v);
        }
        let head = store::stream_head(&self.db, prefix)?;
        Ok(head)
    }
}
