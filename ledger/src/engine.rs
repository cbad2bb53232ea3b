//! The `Ledger`: opening and checking the store, the append path up to the writer queue, reads,
//! live batches for subscriptions, and shutdown.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use std::ops::ControlFlow;

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::access::{AccessRecord, ACCESS_EVENT_TYPE, ACCESS_SCHEMA_VERSION, ACCESS_STREAM, SYSTEM_CUSTOMER};
use crate::codec::{EventHeader, PrecommitHeader, RecordRef};
use crate::error::LedgerError;
use crate::env::{Clock, Rng, SystemClock, SystemRng};
use crate::keys::{generate_dek_with, CustomerKey, KeyCache, Keyring, SigningKey};
use crate::limits::{EngineTuning, Limits};
use crate::merkle::{frontier_coordinates, leaf_hash, sha256, Frontier, Hash};
use crate::plan::PlannerMutation;
use crate::storage::{CommitLog, Dir, KeyStore, Space};
use crate::store::{self, CustomerRecord, CustomerState, TreeState};
use crate::types::*;
use crate::writer::{AppendCommand, AppendOutcome, CommittedBatch, NewCustomer, Rejection, SealedEvent, Shared, Writer, WriterMsg};

/// How much the startup check verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartupCheck {
    /// The persisted root against the Merkle frontier, the last position against the tree size,
    /// and the newest `quick_check_events` events re-hashed. Constant time in the log's size.
    Quick,
    /// Every event re-hashed, positions checked contiguous, and the root rebuilt from the leaves.
    Full,
}

/// Everything needed to open a ledger.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// Holds `db/` (RocksDB), and by default the keyring and signing key.
    pub data_dir: PathBuf,
    /// The KEK keyring file; defaults to `<data_dir>/keyring.json`.
    pub keyring_path: Option<PathBuf>,
    /// The Ed25519 signing key file; defaults to `<data_dir>/signing.key`.
    pub signing_key_path: Option<PathBuf>,
    /// Regions this node may hold data for.
    pub regions: Vec<Region>,
    /// Request limits.
    pub limits: Limits,
    /// Queue, batch and cache bounds.
    pub tuning: EngineTuning,
    /// What to verify on open.
    pub startup_check: StartupCheck,
    /// The log's origin line in signed tree heads (and the signing key's name); defaults to
    /// `ledgerd/<first 8 bytes of the public key in hex>`.
    pub origin: Option<String>,
    /// Test-only: called at the points where a read or an append races an erasure.
    #[doc(hidden)]
    pub hooks: Hooks,
    /// Test-only fault injection: the writer thread panics when it stages an append to this
    /// stream (`ledgerd serve --inject-writer-panic-on-stream`, hidden), so a dead writer can be
    /// tested end to end.
    #[doc(hidden)]
    pub writer_panic_on_stream: Option<String>,
}

/// A point on a read or append path where a concurrent erasure matters; tests park a thread
/// there to force an interleaving deterministically.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookPoint {
    /// A reader unwrapped a customer's key from rows it loaded, and is about to cache it.
    KeyUnwrapped,
    /// A reader decrypted a payload and is about to re-check the erasure epoch.
    Decrypted,
    /// An append was answered by the writer, and its caller is about to cache the key.
    AppendAnswered,
}

/// Test-only hooks (none in production). Cloning shares them.
#[doc(hidden)]
#[derive(Clone, Default)]
pub struct Hooks(pub Option<Arc<dyn Fn(HookPoint, CustomerId) + Send + Sync>>);

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Hooks(set)" } else { "Hooks(none)" })
    }
}

impl Hooks {
    #[inline]
    fn at(&self, point: HookPoint, customer: CustomerId) {
        if let Some(f) = &self.0 {
            f(point, customer);
        }
    }
}

impl LedgerConfig {
    /// A configuration with defaults for everything but the data directory and regions.
    pub fn new(data_dir: impl Into<PathBuf>, regions: Vec<Region>) -> Self {
        LedgerConfig {
            data_dir: data_dir.into(),
            keyring_path: None,
            signing_key_path: None,
            regions,
            limits: Limits::default(),
            tuning: EngineTuning::default(),
            startup_check: StartupCheck::Quick,
            origin: None,
            hooks: Hooks::default(),
            writer_panic_on_stream: None,
        }
    }
    /// Where the RocksDB files live.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("db")
    }
    /// Where the keyring lives.
    pub fn keyring_path(&self) -> PathBuf {
        self.keyring_path.clone().unwrap_or_else(|| self.data_dir.join("keyring.json"))
    }
    /// Where the signing key lives.
    pub fn signing_key_path(&self) -> PathBuf {
        self.signing_key_path.clone().unwrap_or_else(|| self.data_dir.join("signing.key"))
    }
}

/// What opening the ledger found and did.
#[derive(Clone, Debug)]
pub struct OpenReport {
    /// The keyring file was created or gained a region.
    pub keyring_written: bool,
    /// The signing key was created.
    pub signing_key_created: bool,
    /// The committed tree.
    pub tree_size: u64,
    /// Events whose leaves were re-hashed by the startup check.
    pub events_checked: u64,
}

/// One event to append, as parsed at the API edge.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// Unique id; the idempotency key.
    pub event_id: EventId,
    /// The event type.
    pub event_type: EventType,
    /// The channel.
    pub channel: Channel,
    /// The direction.
    pub direction: Direction,
    /// When it happened at its source; defaults to now.
    pub occurred_at: Option<UnixMillis>,
    /// Opaque metadata.
    pub metadata: Metadata,
    /// The plaintext body.
    pub payload: Vec<u8>,
    /// The payload's schema version; 0 becomes 1.
    pub schema_version: u32,
}

/// An append of one or more events to one stream.
#[derive(Clone, Debug)]
pub struct AppendInput {
    /// The customer.
    pub customer: CustomerId,
    /// Required for a new customer; checked for an existing one.
    pub region: Option<Region>,
    /// The stream.
    pub stream: StreamName,
    /// Optimistic concurrency check.
    pub expected: ExpectedVersion,
    /// The events, in order.
    pub events: Vec<NewEvent>,
}

impl NewEvent {
    /// An internal event (channel and direction `internal`) with no metadata, schema version 1,
    /// happening now; struct update syntax changes the rest.
    pub fn internal(event_id: EventId, event_type: EventType, payload: Vec<u8>) -> NewEvent {
        NewEvent {
            event_id,
            event_type,
            channel: Channel::Internal,
            direction: Direction::Internal,
            occurred_at: None,
            metadata: Metadata::new(),
            payload,
            schema_version: 1,
        }
    }
}

impl AppendInput {
    /// One event to `stream` of `customer` in `region`, at any expected version, the stream name
    /// and event type parsed against `limits`: what system records, the connectors, the router
    /// and agents' decisions append. `event` builds the event from its parsed type.
    pub fn single(
        customer: CustomerId,
        region: Region,
        stream: &str,
        event_type: &str,
        limits: &Limits,
        event: impl FnOnce(EventType) -> NewEvent,
    ) -> Result<AppendInput, LedgerError> {
        let event_type = EventType::parse(event_type, "event_type", limits)?;
        let stream = StreamName::parse(stream, "stream", limits)?;
        Ok(AppendInput { customer, region: Some(region), stream, expected: ExpectedVersion::Any, events: vec![event(event_type)] })
    }
}

/// A recorded event's body as a reader gets it.
#[derive(Clone, PartialEq, Eq)]
pub enum Payload {
    /// Decrypted.
    Available(Vec<u8>),
    /// The customer's key is destroyed.
    Erased,
    /// The customer's region is not served here.
    RegionNotServed,
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Available(p) => write!(f, "Available(<{} bytes>)", p.len()),
            Payload::Erased => f.write_str("Erased"),
            Payload::RegionNotServed => f.write_str("RegionNotServed"),
        }
    }
}

/// An event as read back.
#[derive(Clone, Debug)]
pub struct RecordedEvent {
    /// The committed header.
    pub header: EventHeader,
    /// The body.
    pub payload: Payload,
    /// The Merkle leaf hash, verified against the header and ciphertext.
    pub leaf: Hash,
}

impl RecordedEvent {
    /// About how many bytes the event takes on the wire, for bounding message sizes.
    pub fn approx_bytes(&self) -> usize {
        let payload = match &self.payload {
            Payload::Available(p) => p.len(),
            _ => 0,
        };
        let metadata: usize = self.header.metadata.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
        payload + metadata + self.header.stream.len() + self.header.event_type.len() + 192
    }
}

/// An event with what an offline verifier needs to recompute its leaf and check it against a
/// signed tree head: the canonical committed header, the ciphertext's hash and the inclusion proof.
#[derive(Clone, Debug)]
pub struct ProvenEvent {
    /// The event, decrypted if its key exists.
    pub event: RecordedEvent,
    /// The canonical committed header bytes the leaf hash covers.
    pub header: Vec<u8>,
    /// SHA-256 of nonce, ciphertext and tag.
    pub sealed_hash: Hash,
    /// The RFC 9162 inclusion proof, leaf to root.
    pub proof: Vec<Hash>,
}

/// The roots of proof ranges `[start, end)` already computed during one replay or export, for one
/// tree size. Neighbouring events share all but the lowest few. Bounded: cleared when full.
#[derive(Debug, Default)]
pub struct NodeCache {
    ranges: std::collections::HashMap<(u64, u64), Hash>,
}

impl NodeCache {
    const ENTRIES_MAX: usize = 1 << 16;

    fn range(&mut self, start: u64, end: u64, compute: impl FnOnce() -> Result<Hash, LedgerError>) -> Result<Hash, LedgerError> {
        if let Some(h) = self.ranges.get(&(start, end)) {
            return Ok(*h);
        }
        let h = compute()?;
        if self.ranges.len() >= Self::ENTRIES_MAX {
            self.ranges.clear();
        }
        self.ranges.insert((start, end), h);
        Ok(h)
    }
}

/// Narrows reads and subscriptions. Empty fields match everything.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Only this customer.
    pub customer: Option<CustomerId>,
    /// Only these types.
    pub event_types: Vec<String>,
    /// Only these channels.
    pub channels: Vec<Channel>,
}

impl EventFilter {
    fn matches(&self, h: &EventHeader) -> bool {
        self.customer.is_none_or(|c| c == h.customer)
            && (self.event_types.is_empty() || self.event_types.iter().any(|t| *t == h.event_type))
            && (self.channels.is_empty() || self.channels.contains(&h.channel))
    }
}

/// A key lookup for reading, with the erasure epoch taken before it.
enum KeyLookup {
    Key(Arc<CustomerKey>),
    Erased,
    RegionNotServed,
    Unknown,
}

/// What a ledger runs on: its two storage seams, its clock and its randomness.
pub struct Backends {
    /// Where committed batches are made durable and read back.
    pub log: Arc<dyn CommitLog>,
    /// Where wrapped data keys live.
    pub keys: Arc<dyn KeyStore>,
    /// The time the ledger records.
    pub clock: Arc<dyn Clock>,
    /// Data keys, nonces and generated ids.
    pub rng: Arc<dyn Rng>,
    /// No writer thread: the owner drives the writer with [`Ledger::step_writer`] (the
    /// simulator does, to decide every interleaving itself).
    pub manual_writer: bool,
    /// A deliberate planner bug for the simulator's self-test.
    #[doc(hidden)]
    pub mutation: Option<PlannerMutation>,
}

impl Backends {
    /// The production backends: RocksDB at `config.db_path()` for both seams, the system clock
    /// and the OS-seeded CSPRNG, a writer thread.
    pub fn local(config: &LedgerConfig) -> Result<Backends, LedgerError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| LedgerError::Io { path: config.data_dir.display().to_string(), source: e })?;
        let store = crate::storage::rocks::RocksStore::open(&config.db_path())?;
        Ok(Backends { log: store.clone(), keys: store, clock: Arc::new(SystemClock), rng: Arc::new(SystemRng), manual_writer: false, mutation: None })
    }
}

/// A writer driven by hand, with its queue.
type ManualWriter = (Writer, mpsc::Receiver<WriterMsg>);

pub(crate) struct Inner {
    pub(crate) log: Arc<dyn CommitLog>,
    pub(crate) key_store: Arc<dyn KeyStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) rng: Arc<dyn Rng>,
    pub(crate) config: LedgerConfig,
    pub(crate) served: HashSet<Region>,
    /// Written only by KEK rotation and destruction.
    pub(crate) keyring: RwLock<Keyring>,
    /// Serializes writers of the keyring file (rotation, destruction), which write it under a
    /// read lock of `keyring`.
    pub(crate) key_file_writes: Mutex<()>,
    pub(crate) signing: SigningKey,
    pub(crate) keys: Arc<KeyCache>,
    shared: Arc<Shared>,
    pub(crate) tx: mpsc::Sender<WriterMsg>,
    writer: Mutex<Option<JoinHandle<()>>>,
    manual: Mutex<Option<ManualWriter>>,
    closing: AtomicBool,
}

/// A handle to an open ledger. Cheap to clone; all clones share one store and one writer.
#[derive(Clone)]
pub struct Ledger {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("data_dir", &self.inner.config.data_dir).finish_non_exhaustive()
    }
}

impl Ledger {
    /// Opens the ledger: creates the data directory, keyring and signing key on first start,
    /// opens RocksDB, runs the startup check and starts the writer. A store that fails the check
    /// is refused with an error that says what is wrong.
    pub fn open(config: LedgerConfig) -> Result<(Ledger, OpenReport), LedgerError> {
        Self::validate_config(&config)?;
        let backends = Backends::local(&config)?;
        Self::open_with(config, backends)
    }

    fn validate_config(config: &LedgerConfig) -> Result<(), LedgerError> {
        if config.regions.is_empty() {
            return Err(LedgerError::invalid("regions", "at least one region must be served"));
        }
        config.limits.validate().map_err(|reason| LedgerError::InvalidArgument { field: "limits", reason })?;
        Ok(())
    }

    /// Opens the ledger on the given backends: as [`Ledger::open`], with the commit log, key
    /// store, clock and randomness chosen by the caller.
    pub fn open_with(config: LedgerConfig, backends: Backends) -> Result<(Ledger, OpenReport), LedgerError> {
        Self::validate_config(&config)?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| LedgerError::Io { path: config.data_dir.display().to_string(), source: e })?;
        let (keyring, keyring_written) = Keyring::open_or_create(&config.keyring_path(), &config.regions)?;
        let (signing, signing_key_created) = SigningKey::open_or_create(&config.signing_key_path())?;
        let Backends { log, keys: key_store, clock, rng, manual_writer, mutation } = backends;
        let tree = match log.get_map(Space::Meta, store::META_TREE, TreeState::decode)? {
            Some(tree) => tree,
            None => TreeState { size: 0, root: crate::merkle::empty_root() },
        };
        let (frontier, events_checked) = check_store(&*log, &tree, config.startup_check, config.tuning.quick_check_events)?;
        let (batches, _) = broadcast::channel(config.tuning.subscription_buffer_batches.max(1));
        let keys = Arc::new(KeyCache::new(config.tuning.key_cache_entries_max, Duration::from_secs(config.tuning.key_cache_ttl_secs)));
        let shared = Arc::new(Shared {
            poisoned: AtomicBool::new(false),
            committed_size: AtomicU64::new(tree.size),
            tree: RwLock::new(tree.clone()),
            batches,
            inject_write_fault: AtomicBool::new(false),
            inject_writer_panic: AtomicBool::new(false),
            writer_panic_on_stream: config.writer_panic_on_stream.clone(),
            keys: keys.clone(),
            poisoned_watch: tokio::sync::watch::channel(false).0,
        });
        let (tx, rx) = mpsc::channel(config.tuning.write_queue_appends_max.max(1));
        let writer = Writer::new(log.clone(), key_store.clone(), shared.clone(), frontier, config.tuning.clone(), mutation);
        let (handle, manual) = if manual_writer {
            (None, Some((writer, rx)))
        } else {
            install_writer_panic_hook();
            let thread_shared = Arc::downgrade(&shared);
            let handle = std::thread::Builder::new()
                .name("ledger-writer".into())
                .spawn(move || {
                    WRITER_SHARED.with(|w| *w.borrow_mut() = Some(thread_shared));
                    writer.run(rx)
                })
                .map_err(|e| LedgerError::Io { path: "writer thread".into(), source: e })?;
            (Some(handle), None)
        };
        metrics::gauge!("ledger_tree_size").set(tree.size as f64);
        metrics::gauge!("ledger_store_poisoned").set(0.0);
        let served = config.regions.iter().cloned().collect();
        let ledger = Ledger {
            inner: Arc::new(Inner {
                log,
                key_store,
                clock,
                rng,
                served,
                keyring: RwLock::new(keyring),
                key_file_writes: Mutex::new(()),
                signing,
                keys,
                shared,
                tx,
                writer: Mutex::new(handle),
                manual: Mutex::new(manual),
                closing: AtomicBool::new(false),
                config,
            }),
        };
        Ok((ledger, OpenReport { keyring_written, signing_key_created, tree_size: tree.size, events_checked }))
    }

    /// The configuration the ledger was opened with.
    pub fn config(&self) -> &LedgerConfig {
        &self.inner.config
    }

    /// The ledger's public signing key.
    pub fn public_key(&self) -> ed25519_dalek::VerifyingKey {
        self.inner.signing.verifying_key()
    }

    /// The origin line of this log's checkpoints.
    pub fn origin(&self) -> String {
        default_origin(self.inner.config.origin.as_deref(), &self.public_key())
    }

    /// The C2SP verifier key auditors use to check this log's signed tree heads.
    pub fn verifier_key(&self) -> String {
        crate::checkpoint::verifier_key(&self.origin(), self.public_key().as_bytes())
    }

    /// The current tree head, signed as a C2SP checkpoint. Returns the checkpoint and the note.
    pub fn signed_tree_head(&self) -> (crate::checkpoint::Checkpoint, String) {
        let tree = self.tree();
        let cp = crate::checkpoint::Checkpoint { origin: self.origin(), size: tree.size, root: tree.root, timestamp_ms: self.inner.clock.now().0 };
        let note = self.inner.signing.sign_note(&cp.to_text(), &cp.origin);
        (cp, note)
    }

    /// The stored leaf hash of the event at `position`.
    pub fn leaf_at(&self, position: Position) -> Result<Hash, LedgerError> {
        if position.0 >= self.committed_size() {
            return Err(LedgerError::OutOfRange { what: "position", reason: format!("must be below {}", self.committed_size()) });
        }
        self.inner
            .log
            .get_map(Space::Events, &store::event_key(position), |bytes| Ok(RecordRef::decode(bytes)?.leaf))?
            .ok_or_else(|| integrity(position, "event is missing"))
    }

    /// Number of committed events.
    pub fn committed_size(&self) -> u64 {
        self.inner.shared.committed_size.load(Ordering::Acquire)
    }

    /// The committed tree size and root.
    pub fn tree(&self) -> TreeState {
        self.inner.shared.tree.read().expect("tree lock").clone()
    }

    /// Whether the ledger accepts writes: open, not shutting down, not poisoned.
    pub fn is_ready(&self) -> bool {
        !self.inner.shared.poisoned.load(Ordering::Acquire) && !self.inner.closing.load(Ordering::Acquire)
    }

    /// Whether a failed write has poisoned the store.
    pub fn is_poisoned(&self) -> bool {
        self.inner.shared.poisoned.load(Ordering::Acquire)
    }

    /// Makes the next batch write fail as if the disk had, to test the poisoning path.
    #[doc(hidden)]
    pub fn inject_write_fault(&self) {
        self.inner.shared.inject_write_fault.store(true, Ordering::Release);
    }

    /// Makes the writer thread panic when it next wakes, to test that a dead writer poisons.
    #[doc(hidden)]
    pub fn inject_writer_panic(&self) {
        self.inner.shared.inject_writer_panic.store(true, Ordering::Release);
    }

    /// Turns true when the store is poisoned (a failed write or sync, or a dead writer thread).
    pub fn poisoned_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.shared.poisoned_watch.subscribe()
    }

    /// Why an answer from the writer never came: a poisoned store (its thread died) or shutdown.
    pub(crate) fn writer_gone(&self) -> LedgerError {
        if self.is_poisoned() { LedgerError::Poisoned } else { LedgerError::ShuttingDown }
    }

    /// Live committed batches, for subscriptions.
    pub fn subscribe_batches(&self) -> broadcast::Receiver<Arc<CommittedBatch>> {
        self.inner.shared.batches.subscribe()
    }

    /// Bytes the store takes on disk, for the metrics endpoint.
    pub fn store_size_bytes(&self) -> u64 {
        self.inner.log.size_bytes()
    }

    /// Runs the writer by hand, for a ledger opened with `manual_writer`: handles what is queued
    /// (one batch, or one control change) and returns whether there was anything. Never blocks.
    #[doc(hidden)]
    pub fn step_writer(&self) -> bool {
        let mut manual = self.inner.manual.lock().expect("writer lock");
        match manual.as_mut() {
            Some((writer, rx)) => writer.step(rx),
            None => false,
        }
    }

    /// Appends events to one stream atomically. Returns only after the batch holding them is
    /// synced; an error means nothing of this append was acknowledged. The system customer's
    /// streams are the ledger's own and refused here.
    pub async fn append(&self, input: AppendInput) -> Result<AppendOutcome, LedgerError> {
        if crate::access::is_system_customer(input.customer) {
            return Err(LedgerError::invalid("customer_id", "is reserved for the ledger's system streams (ids whose first 8 bytes are zero)"));
        }
        self.append_unchecked(input).await
    }

    /// The region whose KEK wraps the system customer's data key: the first served region.
    pub fn system_region(&self) -> &Region {
        &self.inner.config.regions[0]
    }

    /// Appends an access record to the system stream `audit.access` and returns its position once
    /// it is durable. Callers write it before they send any decrypted data, so a read that
    /// happened always has its record; if the record cannot be written the read must not happen.
    pub async fn record_access(&self, record: &AccessRecord) -> Result<Position, LedgerError> {
        let limits = &self.inner.config.limits;
        let payload = serde_json::to_vec(record).expect("an access record serializes");
        let mut metadata = Metadata::new();
        metadata.insert("action".into(), truncate(&record.action, limits.metadata_value_bytes_max));
        metadata.insert("outcome".into(), truncate(&record.outcome, limits.metadata_value_bytes_max));
        if let Some(c) = record.customer {
            metadata.insert("customer".into(), c.to_string());
        }
        // A record about one customer goes to the system customer of that customer's region, so
        // only principals of that region (or unscoped ones) can read it; the rest to the global one.
        let region = match record.customer {
            Some(c) if !crate::access::is_system_customer(c) => match self.load_customer(c)? {
                Some(rec) if self.inner.served.contains(&rec.region) => Some(rec.region),
                _ => None,
            },
            _ => None,
        };
        let outcome = match region {
            Some(region) => {
                let input = self.system_input(crate::access::system_customer_of(&region), region, ACCESS_STREAM, ACCESS_EVENT_TYPE, ACCESS_SCHEMA_VERSION, self.inner.rng.event_id(), metadata, payload)?;
                self.append_unchecked(input).await.map(|o| o.first_position)
            }
            None => self.append_system(ACCESS_STREAM, ACCESS_EVENT_TYPE, ACCESS_SCHEMA_VERSION, self.inner.rng.event_id(), metadata, payload).await,
        };
        metrics::counter!("ledger_access_records_total", "written" => if outcome.is_ok() { "yes" } else { "no" }).increment(1);
        outcome
    }

    /// Appends one event to a system stream of the system customer and returns its position once
    /// it is durable. The payload must hold no personal data. The event id makes it idempotent.
    pub async fn append_system(
        &self,
        stream: &str,
        event_type: &str,
        schema_version: u32,
        event_id: EventId,
        metadata: Metadata,
        payload: Vec<u8>,
    ) -> Result<Position, LedgerError> {
        let input = self.system_input(SYSTEM_CUSTOMER, self.system_region().clone(), stream, event_type, schema_version, event_id, metadata, payload)?;
        Ok(self.append_unchecked(input).await?.first_position)
    }

    /// One system event for `customer` (a system customer) of `region`.
    #[allow(clippy::too_many_arguments)]
    fn system_input(
        &self,
        customer: CustomerId,
        region: Region,
        stream: &str,
        event_type: &str,
        schema_version: u32,
        event_id: EventId,
        metadata: Metadata,
        payload: Vec<u8>,
    ) -> Result<AppendInput, LedgerError> {
        AppendInput::single(customer, region, stream, event_type, &self.inner.config.limits, |t| NewEvent {
            metadata,
            schema_version,
            ..NewEvent::internal(event_id, t, payload)
        })
    }

    async fn append_unchecked(&self, input: AppendInput) -> Result<AppendOutcome, LedgerError> {
        let limits = &self.inner.config.limits;
        validate_append(&input, limits)?;
        if !self.is_ready() {
            return Err(if self.is_poisoned() { LedgerError::Poisoned } else { LedgerError::ShuttingDown });
        }
        // At most two rounds: the second runs only if another append created the customer first.
        for _ in 0..2 {
            // Taken before any key row is read, so the key is cached only if no erasure
            // completed since (see `KeyCache`).
            let epoch = self.inner.keys.epoch();
            let (key, new_customer) = self.resolve_key_for_append(input.customer, input.region.as_ref())?;
            let events = self.seal_events(&input, &key)?;
            let (reply, answer) = oneshot::channel();
            let cmd = AppendCommand {
                customer: input.customer,
                new_customer,
                stream: input.stream.clone(),
                expected: input.expected,
                events,
                reply,
            };
            self.inner.tx.send(WriterMsg::Append(cmd)).await.map_err(|_| self.writer_gone())?;
            match answer.await {
                Ok(Ok(outcome)) => {
                    if !outcome.idempotent_replay {
                        self.inner.config.hooks.at(HookPoint::AppendAnswered, input.customer);
                        self.inner.keys.insert(input.customer, key, epoch);
                    }
                    metrics::counter!("ledger_appends_total", "outcome" => "ok").increment(1);
                    return Ok(outcome);
                }
                Ok(Err(Rejection::CustomerCreatedConcurrently)) => continue,
                Ok(Err(Rejection::Error(e))) => {
                    metrics::counter!("ledger_appends_total", "outcome" => e.code().as_str()).increment(1);
                    return Err(e);
                }
                // The writer stopped (or died) before answering: not acknowledged.
                Err(_) => return Err(self.writer_gone()),
            }
        }
        Err(LedgerError::Integrity("customer creation raced twice".into()))
    }

    pub(crate) fn check_served(&self, region: &Region) -> Result<(), LedgerError> {
        if self.inner.served.contains(region) {
            Ok(())
        } else {
            let mut served: Vec<&str> = self.inner.served.iter().map(Region::as_str).collect();
            served.sort_unstable();
            Err(LedgerError::RegionNotServed { region: region.to_string(), served: served.join(",") })
        }
    }

    pub(crate) fn load_customer(&self, customer: CustomerId) -> Result<Option<CustomerRecord>, LedgerError> {
        self.inner.log.get_map(Space::Customers, customer.as_bytes(), CustomerRecord::decode)
    }

    /// The customer's key for reading, from the cache or unwrapped from the store. The caller
    /// takes `epoch` from the cache before calling, and re-checks it after using the key.
    fn key_for_read(&self, customer: CustomerId, epoch: crate::keys::Epoch) -> Result<KeyLookup, LedgerError> {
        if let Some(k) = self.inner.keys.get(&customer) {
            return Ok(if self.inner.served.contains(&k.region) { KeyLookup::Key(k) } else { KeyLookup::RegionNotServed });
        }
        let Some(rec) = self.load_customer(customer)? else { return Ok(KeyLookup::Unknown) };
        if !self.inner.served.contains(&rec.region) {
            return Ok(KeyLookup::RegionNotServed);
        }
        if rec.state == CustomerState::Erased {
            return Ok(KeyLookup::Erased);
        }
        let Some(wrapped) = self.inner.key_store.get(customer)? else {
            // No wrapped key: the key was shredded.
            return Ok(KeyLookup::Erased);
        };
        let dek = self.inner.keyring.read().expect("keyring lock").unwrap(&rec.region, customer, wrapped.kek_version, &wrapped.wrapped)?;
        let key = Arc::new(CustomerKey::new(rec.region, rec.key_version, &dek));
        self.inner.config.hooks.at(HookPoint::KeyUnwrapped, customer);
        self.inner.keys.insert(customer, key.clone(), epoch);
        Ok(KeyLookup::Key(key))
    }

    fn resolve_key_for_append(
        &self,
        customer: CustomerId,
        region: Option<&Region>,
    ) -> Result<(Arc<CustomerKey>, Option<NewCustomer>), LedgerError> {
        let existing = match self.inner.keys.get(&customer) {
            Some(k) => Some((k.region.clone(), Some(k))),
            None => self.load_customer(customer)?.map(|rec| (rec.region, None)),
        };
        match existing {
            Some((actual, cached)) => {
                if let Some(given) = region {
                    if *given != actual {
                        return Err(LedgerError::RegionMismatch { actual: actual.to_string() });
                    }
                }
                self.check_served(&actual)?;
                if let Some(k) = cached {
                    return Ok((k, None));
                }
                match self.key_for_read(customer, self.inner.keys.epoch())? {
                    KeyLookup::Key(k) => Ok((k, None)),
                    KeyLookup::Erased => Err(LedgerError::CustomerErased { customer: customer.to_string() }),
                    // Both were ruled out above from the same row; only a concurrent change gets here.
                    KeyLookup::RegionNotServed | KeyLookup::Unknown => Err(LedgerError::NotFound { what: "customer" }),
                }
            }
            None => {
                let region = region.ok_or_else(|| LedgerError::invalid("region", "is required for a new customer"))?;
                self.check_served(region)?;
                let dek = generate_dek_with(&*self.inner.rng);
                let (kek_version, wrapped_dek) = self.inner.keyring.read().expect("keyring lock").wrap_with(&*self.inner.rng, region, customer, &dek)?;
                let record = CustomerRecord {
                    region: region.clone(),
                    state: CustomerState::Active,
                    key_version: 1,
                    created_unix_ms: self.inner.clock.now().0,
                };
                let key = Arc::new(CustomerKey::new(region.clone(), 1, &dek));
                Ok((key, Some(NewCustomer { record, kek_version, wrapped_dek })))
            }
        }
    }

    fn seal_events(&self, input: &AppendInput, key: &CustomerKey) -> Result<Vec<SealedEvent>, LedgerError> {
        let recorded_at = self.inner.clock.now();
        let mut out = Vec::with_capacity(input.events.len());
        let mut content = Vec::new();
        for ev in &input.events {
            let schema_version = ev.schema_version.max(1);
            let header = |occurred_at, recorded_at, key_version| PrecommitHeader {
                customer: input.customer,
                event_id: ev.event_id,
                stream: input.stream.as_str(),
                event_type: ev.event_type.as_str(),
                channel: ev.channel,
                direction: ev.direction,
                occurred_at,
                recorded_at,
                key_version,
                schema_version,
                metadata: &ev.metadata,
            };
            // The idempotency MAC covers what the caller supplied (not the server's clock), so a
            // retry of the same request matches.
            content.clear();
            header(ev.occurred_at.unwrap_or(UnixMillis(0)), UnixMillis(0), 0).encode_into(&mut content);
            content.extend_from_slice(&ev.payload);
            let content_mac = key.content_mac(&content);
            let mut header_bytes = Vec::with_capacity(content.len() - ev.payload.len() + crate::codec::COMMIT_SUFFIX_BYTES);
            header(ev.occurred_at.unwrap_or(recorded_at), recorded_at, key.key_version).encode_into(&mut header_bytes);
            let header = header_bytes;
            let sealed = key.seal_with(&*self.inner.rng, &header, &ev.payload)?;
            let sealed_hash = sha256(&sealed);
            out.push(SealedEvent { event_id: ev.event_id, content_mac, header, sealed, sealed_hash });
        }
        Ok(out)
    }

    /// Decodes and verifies one stored record at `position`; decrypts it if the filter matches.
    fn decode_record(&self, position: Position, bytes: &[u8], filter: Option<&EventFilter>) -> Result<Option<RecordedEvent>, LedgerError> {
        Ok(self.decode_record_parts(position, bytes, filter)?.map(|(ev, _)| ev))
    }

    /// `decode_record`, also returning the ciphertext's hash.
    fn decode_record_parts(
        &self,
        position: Position,
        bytes: &[u8],
        filter: Option<&EventFilter>,
    ) -> Result<Option<(RecordedEvent, Hash)>, LedgerError> {
        let rec = RecordRef::decode(bytes).map_err(|e| integrity(position, &e.to_string()))?;
        let header = EventHeader::decode(rec.header).map_err(|e| integrity(position, &e.to_string()))?;
        if filter.is_some_and(|f| !f.matches(&header)) {
            return Ok(None);
        }
        if header.position != position {
            return Err(integrity(position, "header position does not match its key"));
        }
        let sealed_hash = sha256(rec.sealed);
        if leaf_hash(rec.header, &sealed_hash) != rec.leaf {
            return Err(integrity(position, "leaf hash does not match header and ciphertext"));
        }
        let epoch = self.inner.keys.epoch();
        let payload = match self.key_for_read(header.customer, epoch)? {
            KeyLookup::Key(k) => {
                let plain = k.open(rec.aad(), rec.sealed).map_err(|_| integrity(position, "payload failed authentication"))?;
                self.inner.config.hooks.at(HookPoint::Decrypted, header.customer);
                // An erasure that completed after the key was looked up wins: this payload is
                // not answered (the plaintext is dropped here).
                if self.inner.keys.unchanged_since(epoch) || !self.erased_now(header.customer)? {
                    Payload::Available(plain)
                } else {
                    Payload::Erased
                }
            }
            KeyLookup::Erased => Payload::Erased,
            KeyLookup::RegionNotServed => Payload::RegionNotServed,
            KeyLookup::Unknown => return Err(integrity(position, "event of an unknown customer")),
        };
        Ok(Some((RecordedEvent { header, payload, leaf: rec.leaf }, sealed_hash)))
    }

    /// Whether the customer is erased, from the store (not the cache).
    fn erased_now(&self, customer: CustomerId) -> Result<bool, LedgerError> {
        Ok(self.load_customer(customer)?.is_none_or(|rec| rec.state == CustomerState::Erased))
    }

    /// Reads one page of a stream. Blocking: call from a blocking context.
    pub fn read_stream(
        &self,
        customer: CustomerId,
        stream: &StreamName,
        from: Option<StreamVersion>,
        backward: bool,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, LedgerError> {
        let limits = &self.inner.config.limits;
        let count = if max_count == 0 { limits.page_size_default } else { max_count };
        if count > limits.page_size_max {
            return Err(LedgerError::limit("max_count", &format!("page_size_max {}", limits.page_size_max)));
        }
        if let Some(rec) = self.load_customer(customer)? {
            self.check_served(&rec.region)?;
        }
        let prefix = store::stream_prefix(customer, stream);
        let start = match (from, backward) {
            (Some(v), _) => store::stream_key(&prefix, v),
            (None, false) => store::stream_key(&prefix, StreamVersion(0)),
            (None, true) => store::stream_key(&prefix, StreamVersion(u64::MAX)),
        };
        let mut positions = Vec::with_capacity(count.min(1024));
        let dir = if backward { Dir::Reverse } else { Dir::Forward };
        self.inner.log.scan(Space::Streams, Some(&start), dir, &mut |key, value| {
            if key.len() != prefix.len() + 8 || !key.starts_with(&prefix) || positions.len() >= count {
                return Ok(ControlFlow::Break(()));
            }
            positions.push(Position(store::be_u64(value)?));
            Ok(ControlFlow::Continue(()))
        })?;
        let values = self.events_at(&positions)?;
        let mut out = Vec::with_capacity(positions.len());
        for (position, value) in positions.into_iter().zip(values) {
            let bytes = value.ok_or_else(|| integrity(position, "stream index points at a missing event"))?;
            let ev = self.decode_record(position, &bytes, None)?.expect("no filter");
            if ev.header.customer != customer || ev.header.stream != stream.as_str() {
                return Err(integrity(position, "stream index points at another stream's event"));
            }
            out.push(ev);
        }
        Ok(out)
    }

    /// Reads events in global order from `from`, stopping before `end`, after examining
    /// `examine_max` positions, or once the matching events reach about `bytes_max` bytes (at least
    /// one is returned). Returns them and the position to continue from.
    /// Blocking: call from a blocking context.
    pub fn read_range(
        &self,
        from: Position,
        end: Position,
        examine_max: usize,
        bytes_max: usize,
        filter: &EventFilter,
    ) -> Result<(Vec<RecordedEvent>, Position), LedgerError> {
        let mut next = from;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let stop = end.0.min(from.0.saturating_add(examine_max as u64));
        if next.0 < stop && bytes < bytes_max {
            self.inner.log.scan(Space::Events, Some(&store::event_key(from)), Dir::Forward, &mut |key, value| {
                if store::be_u64(key)? != next.0 {
                    return Err(integrity(next, "event is missing"));
                }
                if let Some(ev) = self.decode_record(next, value, Some(filter))? {
                    bytes += ev.approx_bytes();
                    out.push(ev);
                }
                next = Position(next.0 + 1);
                Ok(if next.0 < stop && bytes < bytes_max { ControlFlow::Continue(()) } else { ControlFlow::Break(()) })
            })?;
            if next.0 < stop && bytes < bytes_max {
                return Err(integrity(next, "event is missing"));
            }
        }
        Ok((out, next))
    }

    /// Decodes the events of a live batch from `from` on that match `filter`.
    pub fn decode_batch(&self, batch: &CommittedBatch, from: Position, filter: &EventFilter) -> Result<Vec<RecordedEvent>, LedgerError> {
        let mut out = Vec::new();
        for (i, record) in batch.records.iter().enumerate() {
            let position = Position(batch.first_position.0 + i as u64);
            if position < from {
                continue;
            }
            if let Some(ev) = self.decode_record(position, record, Some(filter))? {
                out.push(ev);
            }
        }
        Ok(out)
    }

    /// Checks that `customer` exists and that its region is served here. Blocking.
    pub fn check_customer_readable(&self, customer: CustomerId) -> Result<(), LedgerError> {
        let Some(rec) = self.load_customer(customer)? else { return Err(LedgerError::NotFound { what: "customer" }) };
        self.check_served(&rec.region)
    }

    /// The positions of a customer's events (of one stream, or of all their streams) in
    /// `from..to`, in global order. Blocking.
    pub fn customer_positions(
        &self,
        customer: CustomerId,
        stream: Option<&StreamName>,
        from: Position,
        to: Position,
    ) -> Result<Vec<Position>, LedgerError> {
        let Some(rec) = self.load_customer(customer)? else { return Err(LedgerError::NotFound { what: "customer" }) };
        self.check_served(&rec.region)?;
        let prefix = match stream {
            Some(s) => store::stream_prefix(customer, s),
            None => customer.as_bytes().to_vec(),
        };
        let mut positions = Vec::new();
        self.inner.log.scan_prefix(Space::Streams, &prefix, &mut |key, value| {
            if stream.is_some() && key.len() != prefix.len() + 8 {
                return Ok(ControlFlow::Continue(()));
            }
            let p = store::be_u64(value)?;
            if (from.0..to.0).contains(&p) {
                positions.push(Position(p));
            } else if stream.is_some() && p >= to.0 {
                // One stream's versions are in position order: nothing further can be in range.
                return Ok(ControlFlow::Break(()));
            }
            Ok(ControlFlow::Continue(()))
        })?;
        positions.sort_unstable();
        Ok(positions)
    }

    /// Reads, verifies and decrypts the events at `positions`, each with its inclusion proof in
    /// the tree of `tree_size` events. `nodes` caches Merkle nodes across calls of one replay:
    /// neighbouring events share most of their proof. Blocking.
    pub fn proven_events(&self, positions: &[Position], tree_size: u64, nodes: &mut NodeCache) -> Result<Vec<ProvenEvent>, LedgerError> {
        self.check_tree_size("tree_size", tree_size)?;
        let values = self.events_at(positions)?;
        let mut out = Vec::with_capacity(positions.len());
        for (&position, value) in positions.iter().zip(values) {
            if position.0 >= tree_size {
                return Err(LedgerError::OutOfRange { what: "position", reason: format!("must be below tree_size {tree_size}") });
            }
            let bytes = value.ok_or_else(|| integrity(position, "event is missing"))?;
            let (event, sealed_hash) = self.decode_record_parts(position, &bytes, None)?.expect("no filter");
            let header = RecordRef::decode(&bytes)?.header.to_vec();
            let proof = crate::merkle::inclusion_proof_by_ranges(position.0, tree_size, &mut |start, end| {
                nodes.range(start, end, || crate::merkle::range_root(start, end, &mut |l, i| self.merkle_node(l, i)))
            })?;
            out.push(ProvenEvent { event, header, sealed_hash, proof });
        }
        Ok(out)
    }

    /// The leaf hashes of the events in `from..to`, each re-computed from its stored header and
    /// ciphertext and checked against the stored leaf. Nothing is decrypted. Blocking.
    pub fn leaf_hashes(&self, from: Position, to: Position) -> Result<Vec<Hash>, LedgerError> {
        let to = Position(to.0.min(self.committed_size()));
        let mut out = Vec::with_capacity(to.0.saturating_sub(from.0) as usize);
        let mut next = from;
        if next >= to {
            return Ok(out);
        }
        self.inner.log.scan(Space::Events, Some(&store::event_key(from)), Dir::Forward, &mut |key, value| {
            if store::be_u64(key)? != next.0 {
                return Err(integrity(next, "event is missing"));
            }
            let rec = RecordRef::decode(value).map_err(|e| integrity(next, &e.to_string()))?;
            // The committed header ends with the position and the stream version.
            let named = store::be_u64(&rec.header[rec.header.len() - crate::codec::COMMIT_SUFFIX_BYTES..])?;
            if named != next.0 {
                return Err(integrity(next, "header position does not match its key"));
            }
            if leaf_hash(rec.header, &sha256(rec.sealed)) != rec.leaf {
                return Err(integrity(next, "leaf hash does not match header and ciphertext"));
            }
            out.push(rec.leaf);
            next = Position(next.0 + 1);
            Ok(if next < to { ControlFlow::Continue(()) } else { ControlFlow::Break(()) })
        })?;
        if next < to {
            return Err(integrity(next, "event is missing"));
        }
        Ok(out)
    }

    /// The stored records at `positions`, in order.
    fn events_at(&self, positions: &[Position]) -> Result<Vec<Option<Vec<u8>>>, LedgerError> {
        let keys: Vec<[u8; 8]> = positions.iter().map(|p| store::event_key(*p)).collect();
        let refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
        self.inner.log.multi_get(Space::Events, &refs)
    }

    /// Reads a persisted Merkle node: a leaf from its event's record, an interior node from the
    /// Merkle space.
    fn merkle_node(&self, level: u8, index: u64) -> Result<Hash, LedgerError> {
        stored_node(&*self.inner.log, level, index)?
            .ok_or_else(|| LedgerError::Integrity(format!("merkle node (level {level}, index {index}) is missing")))
    }

    fn check_tree_size(&self, what: &'static str, size: u64) -> Result<(), LedgerError> {
        let committed = self.committed_size();
        if size == 0 || size > committed {
            return Err(LedgerError::OutOfRange { what, reason: format!("must be in 1..={committed}") });
        }
        Ok(())
    }

    /// The Merkle root of the log as it was at `tree_size` events. O(log n) reads.
    pub fn root_at(&self, tree_size: u64) -> Result<Hash, LedgerError> {
        self.check_tree_size("tree_size", tree_size)?;
        crate::merkle::range_root(0, tree_size, &mut |l, i| self.merkle_node(l, i))
    }

    /// The RFC 9162 inclusion proof of the event at `position` in the tree of `tree_size` events.
    pub fn inclusion_proof(&self, position: Position, tree_size: u64) -> Result<Vec<Hash>, LedgerError> {
        self.check_tree_size("tree_size", tree_size)?;
        if position.0 >= tree_size {
            return Err(LedgerError::OutOfRange { what: "position", reason: format!("must be below tree_size {tree_size}") });
        }
        crate::merkle::inclusion_proof(position.0, tree_size, &mut |l, i| self.merkle_node(l, i))
    }

    /// The RFC 9162 consistency proof between the trees of `first` and `second` events.
    pub fn consistency_proof(&self, first: u64, second: u64) -> Result<Vec<Hash>, LedgerError> {
        self.check_tree_size("second_size", second)?;
        if first == 0 || first > second {
            return Err(LedgerError::OutOfRange { what: "first_size", reason: format!("must be in 1..={second}") });
        }
        crate::merkle::consistency_proof(first, second, &mut |l, i| self.merkle_node(l, i))
    }

    /// Stops the writer after it has committed everything queued, and waits for it. Appends that
    /// arrive afterwards get `ShuttingDown`.
    pub async fn shutdown(&self) {
        self.inner.closing.store(true, Ordering::Release);
        let _ = self.inner.tx.send(WriterMsg::Shutdown).await;
        let handle = self.inner.writer.lock().expect("writer lock").take();
        let log = self.inner.log.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(h) = handle {
                let _ = h.join();
            }
            // An fsync: on this blocking thread, not the runtime's.
            let _ = log.close();
        })
        .await;
    }
}

impl Drop for Inner {
    /// Without an explicit `shutdown`, still let the writer commit what is queued and release the
    /// database before the handle is gone, so the directory can be reopened at once.
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        if let Some(handle) = self.writer.lock().map(|mut w| w.take()).unwrap_or(None) {
            let _ = handle.join();
        }
    }
}

thread_local! {
    /// On the writer thread: the state it shares with readers, so the panic hook can poison it.
    static WRITER_SHARED: std::cell::RefCell<Option<std::sync::Weak<Shared>>> = const { std::cell::RefCell::new(None) };
}

/// Installs (once per process) a panic hook that poisons the store of a writer thread that
/// panics. A hook runs on the panicking thread *before* unwinding drops the writer's queue and
/// the answers it owes, so every caller that then finds its answer gone already sees the store
/// poisoned: `Poisoned`, `/readyz` 503 and health `NOT_SERVING`, never a live-looking node
/// without a writer. The previous hook still runs (it prints the panic).
fn install_writer_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let shared = WRITER_SHARED.try_with(|w| w.borrow().as_ref().and_then(std::sync::Weak::upgrade)).ok().flatten();
            if let Some(shared) = shared {
                let what = info.payload().downcast_ref::<&str>().copied().or_else(|| info.payload().downcast_ref::<String>().map(String::as_str));
                shared.poison("writer thread panicked", &what.unwrap_or("a panic without a message"));
            }
            previous(info);
        }));
    });
}

/// The origin line: the configured one, or one derived from the public key.
pub fn default_origin(configured: Option<&str>, public: &ed25519_dalek::VerifyingKey) -> String {
    configured.map_or_else(|| format!("ledgerd/{}", hex::encode(&public.as_bytes()[..8])), str::to_owned)
}

/// `text` cut to at most `max` bytes at a character boundary.
fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn integrity(position: Position, what: &str) -> LedgerError {
    tracing::error!(position = position.0, problem = what, "integrity check failed");
    LedgerError::Integrity(format!("event at position {}: {what}", position.0))
}

fn validate_append(input: &AppendInput, limits: &Limits) -> Result<(), LedgerError> {
    if input.events.is_empty() {
        return Err(LedgerError::invalid("events", "must contain at least one event"));
    }
    if input.events.len() > limits.events_per_append_max {
        return Err(LedgerError::limit("events", &format!("events_per_append_max {}", limits.events_per_append_max)));
    }
    let mut ids = HashSet::with_capacity(input.events.len());
    for ev in &input.events {
        if ev.payload.is_empty() {
            return Err(LedgerError::invalid("events.payload", "must not be empty"));
        }
        if ev.payload.len() > limits.payload_bytes_max {
            return Err(LedgerError::limit("events.payload", &format!("payload_bytes_max {}", limits.payload_bytes_max)));
        }
        check_metadata(&ev.metadata, "events.metadata", limits)?;
        if !ids.insert(ev.event_id) {
            return Err(LedgerError::invalid("events.event_id", "must be unique within an append"));
        }
    }
    Ok(())
}

/// A complete subtree's hash as stored: level 0 is the leaf kept in the event's record (stored
/// once, not again in the Merkle space), the levels above are rows of the Merkle space.
fn stored_node(log: &dyn CommitLog, level: u8, index: u64) -> Result<Option<Hash>, LedgerError> {
    if level == 0 {
        return log.get_map(Space::Events, &store::event_key(Position(index)), |bytes| Ok(RecordRef::decode(bytes)?.leaf));
    }
    log.get_map(Space::Merkle, &store::merkle_key(level, index), |bytes| {
        <Hash>::try_from(bytes).map_err(|_| LedgerError::Corrupt("merkle node is not 32 bytes".into()))
    })
}

/// Verifies the store against its persisted tree state and returns the writer's frontier.
fn check_store(log: &dyn CommitLog, tree: &TreeState, mode: StartupCheck, quick_events: u64) -> Result<(Frontier, u64), LedgerError> {
    let refuse = |what: String| LedgerError::Integrity(format!("startup check failed: {what}"));
    let node = |level: u8, index: u64| stored_node(log, level, index);
    // 1. The frontier, from the persisted complete subtrees, must give the persisted root.
    let mut nodes = Vec::new();
    for (level, index) in frontier_coordinates(tree.size) {
        nodes.push(node(level, index)?.ok_or_else(|| refuse(format!("merkle node (level {level}, index {index}) is missing")))?);
    }
    let frontier = Frontier::from_nodes(tree.size, nodes);
    if frontier.root() != tree.root {
        return Err(refuse("the persisted root does not match the merkle tree".into()));
    }
    // 2. The last event must sit at tree size - 1, and nothing beyond it.
    let last = log.first(Space::Events, None, Dir::Reverse)?.map(|(k, _)| store::be_u64(&k)).transpose()?;
    if last != tree.size.checked_sub(1) {
        return Err(refuse(format!(
            "the log holds events up to position {} but the tree has {} events",
            last.map_or_else(|| "none".into(), |p| p.to_string()),
            tree.size
        )));
    }
    // 3. Re-hash events: all of them (full), or the newest ones (quick).
    let from = match mode {
        StartupCheck::Full => 0,
        StartupCheck::Quick => tree.size.saturating_sub(quick_events),
    };
    // Recomputed hashes of the re-hashed range, level by level, to check the stored interior nodes.
    let mut recomputed: Vec<Hash> = Vec::new();
    let mut expected = from;
    log.scan(Space::Events, Some(&store::event_key(Position(from))), Dir::Forward, &mut |key, value| {
        let position = store::be_u64(key)?;
        if position != expected {
            return Err(refuse(format!("position {expected} is missing")));
        }
        let rec = RecordRef::decode(value).map_err(|e| refuse(format!("position {position}: {e}")))?;
        let header = EventHeader::decode(rec.header).map_err(|e| refuse(format!("position {position}: {e}")))?;
        if header.position.0 != position {
            return Err(refuse(format!("position {position}: header names position {}", header.position.0)));
        }
        let leaf = leaf_hash(rec.header, &sha256(rec.sealed));
        if leaf != rec.leaf {
            return Err(refuse(format!("position {position}: leaf hash does not match header and ciphertext")));
        }
        recomputed.push(leaf);
        expected += 1;
        Ok(ControlFlow::Continue(()))
    })?;
    // Every stored interior node whose leaves were all re-hashed must equal the hash rebuilt from
    // them; otherwise a record and its level-0 node could be rewritten together unnoticed.
    let mut level_start = from;
    let mut level_hashes = recomputed;
    for level in 1..64u8 {
        // Pair up children: the first child index at this level must be even.
        let skip = usize::from(level_start % 2 == 1);
        let parents: Vec<Hash> =
            level_hashes[skip..].chunks_exact(2).map(|pair| crate::merkle::node_hash(&pair[0], &pair[1])).collect();
        if parents.is_empty() {
            break;
        }
        let first_parent = (level_start + skip as u64) / 2;
        for (offset, hash) in parents.iter().enumerate() {
            let index = first_parent + offset as u64;
            let stored = node(level, index)?.ok_or_else(|| refuse(format!("merkle node (level {level}, index {index}) is missing")))?;
            if &stored != hash {
                let first = index << level;
                return Err(refuse(format!(
                    "merkle node (level {level}, index {index}) does not match the events at positions {first}..{}",
                    first + (1u64 << level)
                )));
            }
        }
        level_start = first_parent;
        level_hashes = parents;
    }
    // In full mode that covers every complete subtree, frontier nodes included, and step 1 folded
    // those into the persisted root: the root is rebuilt from every event without a second pass.
    Ok((frontier, expected - from))
}
