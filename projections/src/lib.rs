//! Views built from the log. A `View` turns events into rows; the `Runner` feeds it from its
//! checkpoint and writes the rows it produced together with the new checkpoint in one RocksDB
//! batch, so a crash never loses or double-applies an event, and `rebuild` (drop the rows,
//! checkpoint 0, catch up) gives the same rows as building incrementally. The batch is not
//! synced: a power loss leaves the views at an older checkpoint, from which they re-apply to the
//! same rows.
//!
//! Views live in their own RocksDB under `<data_dir>/projections`: one column family per view and
//! `checkpoints` (view name -> next position).
//!
//! **Architecture invariant:** views read the log only through `ledger::Ledger`; nothing here
//! writes to the ledger.

mod audit;
pub mod crm;
pub mod crm_push;
pub mod router;
pub mod routing;
pub mod rules;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use ledger::types::{Position, UnixMillis};
use ledger::{EventFilter, Ledger, LedgerError, RecordedEvent};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};

pub use audit::{AuditEntry, AuditView, AUDIT_VIEW};
pub use crm::{CrmView, CRM_VIEW};
pub use routing::{RoutingView, ROUTING_VIEW};

/// The views `ledgerd` serves, rebuildable by name.
pub const VIEWS: [&str; 3] = [AUDIT_VIEW, CRM_VIEW, ROUTING_VIEW];

/// Everything that follows the log with a checkpoint in the views' store: the views, the router
/// and the CRM outbox.
pub const FOLLOWERS: [&str; 5] = [AUDIT_VIEW, CRM_VIEW, ROUTING_VIEW, router::ROUTER, crm_push::CRM_OUTBOX];

/// The view called `name`.
pub fn view_named(name: &str) -> Option<Arc<dyn View>> {
    match name {
        AUDIT_VIEW => Some(Arc::new(AuditView)),
        CRM_VIEW => Some(Arc::new(CrmView)),
        ROUTING_VIEW => Some(Arc::new(RoutingView)),
        _ => None,
    }
}

/// One event for an existing customer's stream, in the customer's region: what the router, the
/// CRM webhook and agents' decisions append. Duplicate-id handling is the caller's.
#[allow(clippy::too_many_arguments)]
pub async fn append_one(
    ledger: &Ledger,
    customer: ledger::types::CustomerId,
    stream: &str,
    channel: ledger::types::Channel,
    direction: ledger::types::Direction,
    event_type: &str,
    event_id: EventIdFor<'_>,
    occurred_at: Option<UnixMillis>,
    payload: Vec<u8>,
) -> Result<ledger::AppendOutcome, LedgerError> {
    let region = ledger.customer_region(customer)?;
    let event_id = match event_id {
        EventIdFor::Keyed { space, key } => ledger.keyed_event_id(&region, space, key)?,
        EventIdFor::Random => ledger::types::EventId::new_random(),
    };
    let input = ledger::AppendInput::single(customer, region, stream, event_type, &ledger.config().limits, |t| ledger::NewEvent {
        channel,
        direction,
        occurred_at,
        ..ledger::NewEvent::internal(event_id, t, payload)
    })?;
    ledger.append(input).await
}

/// How `append_one` names its event.
pub enum EventIdFor<'a> {
    /// Keyed (idempotent): the same space and key give the same id in the customer's region.
    Keyed {
        /// The id space (`router`, `crm`, `agent`).
        space: &'a str,
        /// The key within it.
        key: &'a str,
    },
    /// A fresh random id.
    Random,
}

/// Decodes an event's JSON payload; `None` (counted) when it is not what the view expects, so an
/// event appended with an unexpected payload through the public API cannot stall a view.
pub(crate) fn json<'p, T: serde::Deserialize<'p>>(view: &'static str, payload: &'p [u8]) -> Option<T> {
    match serde_json::from_slice(payload) {
        Ok(v) => Some(v),
        Err(_) => {
            metrics::counter!("ledger_projection_skipped_events_total", "view" => view).increment(1);
            None
        }
    }
}

/// Whether a `MessageReceived` payload is a message (not a status callback). Only `kind` is
/// decoded: every view sees every message, and building the whole payload as a JSON value for
/// one field was the largest cost of a catch-up.
pub(crate) fn is_message(view: &'static str, payload: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(borrow, default)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    json::<Kind<'_>>(view, payload).is_some_and(|k| k.kind.as_deref() == Some("message"))
}

/// The customer an `ErasureRequested` event is about: from that event on, views forget them.
pub fn erasure_of(event: &RecordedEvent) -> Option<ledger::types::CustomerId> {
    let h = &event.header;
    if h.customer != ledger::access::SYSTEM_CUSTOMER || h.event_type != "ErasureRequested" {
        return None;
    }
    h.metadata.get("customer").and_then(|c| ledger::types::CustomerId::parse(c, "customer").ok())
}

const CF_CHECKPOINTS: &str = "checkpoints";
/// Events read and applied per batch.
pub const APPLY_CHUNK_EVENTS: usize = 8192;

/// Below this many events in a chunk the views are applied one after another on one thread.
const PARALLEL_APPLY_MIN_EVENTS: usize = 256;

/// Why a projection failed.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// Reading the log failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The view store failed.
    #[error("projection store: {0}")]
    Storage(#[from] rocksdb::Error),
    /// A view could not apply an event.
    #[error("view {view} could not apply the event at position {position}: {reason}")]
    Apply {
        /// The view.
        view: &'static str,
        /// The event's position.
        position: u64,
        /// Why.
        reason: String,
    },
}

impl ProjectionError {
    /// Fills in the position of an apply error raised without one.
    fn at(self, at: u64) -> Self {
        match self {
            ProjectionError::Apply { view, position: 0, reason } => ProjectionError::Apply { view, position: at, reason },
            e => e,
        }
    }
}

/// A view: rows derived from events. `apply` reads and writes the view's rows only through the
/// `Tx` it is given, so the runner can commit them together with the checkpoint.
pub trait View: Send + Sync {
    /// The view's name (its column family).
    fn name(&self) -> &'static str;
    /// Applies `event` to the view's rows.
    fn apply(&self, tx: &mut Tx<'_>, event: &RecordedEvent) -> Result<(), ProjectionError>;
}

/// One view's uncommitted writes for a chunk of events, over its committed rows: reads see the
/// chunk's own earlier writes, so a view may read-modify-write a row several times in a chunk.
pub struct Tx<'a> {
    db: &'a DB,
    cf: &'a ColumnFamily,
    view: &'static str,
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Committed rows (and absences) read in this chunk: a chunk's events mostly touch a few
    /// customers, and most lookups (the erased marker above all) find nothing, which costs a
    /// RocksDB search through every level each time.
    read_cache: RefCell<HashMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl<'a> Tx<'a> {
    /// A transaction over view `view`'s column family `cf`.
    pub fn new(db: &'a DB, cf: &'a ColumnFamily, view: &'static str) -> Self {
        Tx { db, cf, view, overlay: BTreeMap::new(), read_cache: RefCell::default() }
    }

    /// The row at `key`, as this chunk has left it.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ProjectionError> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        if let Some(v) = self.read_cache.borrow().get(key) {
            return Ok(v.clone());
        }
        let v = self.db.get_cf(self.cf, key)?;
        self.read_cache.borrow_mut().insert(key.to_vec(), v.clone());
        Ok(v)
    }

    /// The row at `key`, decoded from JSON.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, ProjectionError> {
        self.get(key)?.map(|b| serde_json::from_slice(&b).map_err(|e| self.corrupt(&e.to_string()))).transpose()
    }

    /// Writes a row.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.overlay.insert(key, Some(value));
    }

    /// Writes a row as JSON.
    pub fn put_json<T: serde::Serialize>(&mut self, key: Vec<u8>, value: &T) {
        self.put(key, serde_json::to_vec(value).expect("view rows serialize"));
    }

    /// Deletes a row.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.overlay.insert(key, None);
    }

    /// The keys under `prefix`, committed or written in this chunk and not deleted, in order.
    pub fn keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, ProjectionError> {
        let mut keys = std::collections::BTreeSet::new();
        for item in self.db.prefix_iterator_cf(self.cf, prefix) {
            let (k, _) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            keys.insert(k.to_vec());
        }
        for (k, v) in self.overlay.range(prefix.to_vec()..) {
            if !k.starts_with(prefix) {
                break;
            }
            if v.is_some() {
                keys.insert(k.clone());
            } else {
                keys.remove(k);
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// Deletes every row under `prefix`.
    pub fn delete_prefix(&mut self, prefix: &[u8]) -> Result<usize, ProjectionError> {
        let keys = self.keys_with_prefix(prefix)?;
        let n = keys.len();
        for k in keys {
            self.delete(k);
        }
        Ok(n)
    }

    /// An apply error for a row that does not decode.
    pub fn corrupt(&self, reason: &str) -> ProjectionError {
        ProjectionError::Apply { view: self.view, position: 0, reason: format!("a stored row does not decode: {reason}") }
    }

    fn write_into(self, wb: &mut WriteBatch) {
        for (k, v) in self.overlay {
            match v {
                Some(v) => wb.put_cf(self.cf, k, v),
                None => wb.delete_cf(self.cf, k),
            }
        }
    }
}

/// The views' store and the runner that feeds them.
pub struct Runner {
    ledger: Ledger,
    db: DB,
    /// Per view: one catch-up at a time, so a request-driven catch-up and a follower never apply
    /// the same chunk twice.
    locks: BTreeMap<String, Mutex<()>>,
    probe: Mutex<Option<DelayProbe>>,
}

/// Called after each commit with the events just applied and the commit time (unix ms); the
/// benchmark uses it to measure how long events take to reach the views.
pub type DelayProbe = Box<dyn Fn(&[RecordedEvent], i64) + Send>;

impl Runner {
    /// Opens the store under `<data_dir>/projections` with a column family per view name.
    pub fn open(ledger: Ledger, views: &[&str]) -> Result<Arc<Self>, ProjectionError> {
        Self::open_at(ledger.clone(), &ledger.config().data_dir.join("projections"), views)
    }

    /// Opens the store at `path`.
    pub fn open_at(ledger: Ledger, path: &Path, views: &[&str]) -> Result<Arc<Self>, ProjectionError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = views.iter().chain(&[CF_CHECKPOINTS]).map(|n| ColumnFamilyDescriptor::new(*n, Options::default()));
        Ok(Arc::new(Runner { ledger, db: DB::open_cf_descriptors(&opts, path, cfs)?, locks: views.iter().map(|v| ((*v).to_owned(), Mutex::new(()))).collect(), probe: Mutex::new(None) }))
    }

    /// Locks the views' apply locks, in name order so groups never deadlock.
    fn lock_views(&self, views: &[&dyn View]) -> Vec<std::sync::MutexGuard<'_, ()>> {
        let mut names: Vec<&str> = views.iter().map(|v| v.name()).collect();
        names.sort_unstable();
        names.dedup();
        names.iter().map(|n| self.locks[*n].lock().unwrap_or_else(std::sync::PoisonError::into_inner)).collect()
    }

    /// Installs (or removes) the delay probe.
    pub fn set_probe(&self, probe: Option<DelayProbe>) {
        *self.probe.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = probe;
    }

    /// The store, for a view's queries.
    pub fn db(&self) -> &DB {
        &self.db
    }

    /// The ledger the views follow.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("the view's column family was opened")
    }

    /// The position the view continues from.
    pub fn checkpoint(&self, view: &str) -> Result<u64, ProjectionError> {
        Ok(self.db.get_cf(self.cf(CF_CHECKPOINTS), view.as_bytes())?.and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes))
    }

    /// How far behind the log the view is, in positions.
    pub fn lag(&self, view: &str) -> Result<u64, ProjectionError> {
        Ok(self.ledger.committed_size().saturating_sub(self.checkpoint(view)?))
    }

    /// How far behind the log the view is, in seconds: the age of the oldest event it has not
    /// applied (0 when it is caught up). Blocking.
    pub fn lag_seconds(&self, view: &str) -> Result<f64, ProjectionError> {
        let next = self.checkpoint(view)?;
        if next >= self.ledger.committed_size() {
            return Ok(0.0);
        }
        let (events, _) = self.ledger.read_range(Position(next), Position(next + 1), 1, usize::MAX, &EventFilter::default())?;
        Ok(events.first().map_or(0.0, |e| (UnixMillis::now().0 - e.header.recorded_at.0).max(0) as f64 / 1000.0))
    }

    /// Applies everything committed after the view's checkpoint, in batches of rows plus
    /// checkpoint. Returns the events applied. Blocking.
    pub fn catch_up(&self, view: &dyn View) -> Result<u64, ProjectionError> {
        self.catch_up_group(&[view], &mut |_| Ok(()))
    }

    /// `catch_up`, calling `before_commit` with the batch's end position before each commit (tests
    /// use it to crash in the middle).
    pub fn catch_up_with(&self, view: &dyn View, before_commit: &mut dyn FnMut(u64) -> Result<(), ProjectionError>) -> Result<u64, ProjectionError> {
        self.catch_up_group(&[view], before_commit)
    }

    /// Catches up several views in one pass over the log: each chunk is read and decrypted once,
    /// applied to every view whose checkpoint it is past, and committed with all their checkpoints
    /// in one batch. Returns the events read. Blocking.
    pub fn catch_up_group(&self, views: &[&dyn View], before_commit: &mut dyn FnMut(u64) -> Result<(), ProjectionError>) -> Result<u64, ProjectionError> {
        let _held = self.lock_views(views);
        let next: Vec<u64> = views.iter().map(|v| self.checkpoint(v.name())).collect::<Result<_, _>>()?;
        let Some(&from) = next.iter().min() else { return Ok(0) };
        if self.ledger.committed_size().saturating_sub(from) <= APPLY_CHUNK_EVENTS as u64 {
            return self.apply_chunks(views, next, before_commit, self.chunks_from(from));
        }
        // A long way behind: a reader thread reads and decrypts the next chunk while this one
        // is applied and committed.
        std::thread::scope(|scope| {
            let (send, chunks) = std::sync::mpsc::sync_channel(1);
            scope.spawn(move || {
                for chunk in self.chunks_from(from) {
                    if send.send(chunk).is_err() {
                        break;
                    }
                }
            });
            self.apply_chunks(views, next, before_commit, chunks.into_iter())
        })
    }

    /// The log from `from` to its committed end (as it grows), a chunk at a time.
    fn chunks_from(&self, from: u64) -> impl Iterator<Item = Result<(Vec<RecordedEvent>, Position), ProjectionError>> + '_ {
        let mut at = Some(from);
        std::iter::from_fn(move || {
            let from = at.take()?;
            let end = self.ledger.committed_size();
            if from >= end {
                return None;
            }
            match self.ledger.read_range(Position(from), Position(end), APPLY_CHUNK_EVENTS, usize::MAX, &EventFilter::default()) {
                Ok((events, after)) => {
                    at = Some(after.0);
                    Some(Ok((events, after)))
                }
                Err(e) => Some(Err(e.into())),
            }
        })
    }

    /// Applies each chunk to the views and commits their rows and checkpoints in one write.
    /// Blocking: the runner's threads.
    #[allow(clippy::disallowed_methods)]
    fn apply_chunks(
        &self,
        views: &[&dyn View],
        mut next: Vec<u64>,
        before_commit: &mut dyn FnMut(u64) -> Result<(), ProjectionError>,
        chunks: impl Iterator<Item = Result<(Vec<RecordedEvent>, Position), ProjectionError>>,
    ) -> Result<u64, ProjectionError> {
        let mut read = 0u64;
        for chunk in chunks {
            let (events, after) = chunk?;
            let txs = self.apply_views(views, &next, &events)?;
            let mut wb = WriteBatch::default();
            for (view, tx) in views.iter().zip(txs) {
                tx.write_into(&mut wb);
                wb.put_cf(self.cf(CF_CHECKPOINTS), view.name().as_bytes(), after.0.to_be_bytes());
            }
            before_commit(after.0)?;
            // Not synced. Rows and checkpoint are one write, so a power loss can only take a
            // suffix of whole commits, leaving the view at an older checkpoint; re-applying from
            // there gives the same rows (tests/views_rebuild.rs), and the effects a chunk causes
            // carry ids derived from their events, so a re-run finds them done. Anything that
            // must outlive a power loss (a CRM push finished, an outbox row) is a synced write
            // to this database, which makes every earlier write durable with it. A process
            // crash loses nothing: the WAL is written before this returns.
            self.db.write_opt(wb, &WriteOptions::default())?;
            read += events.len() as u64;
            next.iter_mut().for_each(|n| *n = after.0);
            let now = UnixMillis::now().0;
            for view in views {
                metrics::gauge!("ledger_projection_lag_positions", "view" => view.name()).set(self.ledger.committed_size().saturating_sub(after.0) as f64);
                if let Some(last) = events.last() {
                    metrics::histogram!("ledger_projection_delay_seconds", "view" => view.name()).record((now - last.header.recorded_at.0).max(0) as f64 / 1000.0);
                }
            }
            if let Some(probe) = &*self.probe.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
                probe(&events, now);
            }
        }
        Ok(read)
    }

    /// Applies `events` to each view from its next position, the views side by side on their own
    /// threads when the chunk is large enough to pay for them (they share no rows).
    fn apply_views<'s>(&'s self, views: &[&dyn View], next: &[u64], events: &[RecordedEvent]) -> Result<Vec<Tx<'s>>, ProjectionError> {
        let one = |view: &dyn View, from: u64| -> Result<Tx<'s>, ProjectionError> {
            let mut tx = Tx::new(&self.db, self.cf(view.name()), view.name());
            for event in events.iter().filter(|e| e.header.position.0 >= from) {
                view.apply(&mut tx, event).map_err(|e| e.at(event.header.position.0))?;
            }
            Ok(tx)
        };
        if views.len() < 2 || events.len() < PARALLEL_APPLY_MIN_EVENTS {
            return views.iter().zip(next).map(|(v, from)| one(*v, *from)).collect();
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = views[1..].iter().zip(&next[1..]).map(|(v, from)| scope.spawn(move || one(*v, *from))).collect();
            let mut out = vec![one(views[0], next[0])];
            out.extend(handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))));
            out.into_iter().collect()
        })
    }

    /// Drops the views' rows and checkpoints, then builds them again from position 0 in one pass.
    /// Blocking.
    #[allow(clippy::disallowed_methods)]
    pub fn rebuild(&self, views: &[&dyn View]) -> Result<u64, ProjectionError> {
        {
            let _held = self.lock_views(views);
            let mut wb = WriteBatch::default();
            for view in views {
                let cf = self.cf(view.name());
                for item in self.db.iterator_cf(cf, IteratorMode::Start) {
                    wb.delete_cf(cf, item?.0);
                }
                wb.delete_cf(self.cf(CF_CHECKPOINTS), view.name().as_bytes());
            }
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            self.db.write_opt(wb, &opts)?;
        }
        self.catch_up_group(views, &mut |_| Ok(()))
    }

    /// Every row of a view, in key order (for tests and rebuild checks).
    pub fn rows(&self, view: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ProjectionError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(view), IteratorMode::Start) {
            let (k, v) = item?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Follows the log: catches the views up together, then again whenever a batch is committed,
    /// until `shutdown`.
    pub async fn follow(self: Arc<Self>, views: Vec<Arc<dyn View>>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut batches = self.ledger.subscribe_batches();
        loop {
            let (me, vs) = (self.clone(), views.clone());
            let run = tokio::task::spawn_blocking(move || {
                let refs: Vec<&dyn View> = vs.iter().map(|v| v.as_ref()).collect();
                me.catch_up_group(&refs, &mut |_| Ok(()))
            });
            match run.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "projection failed; retrying"),
                Err(_) => return,
            }
            if !wait_for_commits(&mut batches, &mut shutdown, std::time::Duration::from_secs(1)).await {
                return;
            }
        }
    }
}

/// How long a follower lets commits gather once it is woken, before it catches up. Under load
/// that is one catch-up per interval instead of one per committed batch: each run's thread
/// hand-off, log iterator, commit and checkpoint are paid once for every batch it covers, and the
/// followers stop waking the node's two cores hundreds of times a second. Idle, a follower still
/// starts within this of the next commit.
pub const FOLLOW_GATHER: std::time::Duration = std::time::Duration::from_millis(10);

/// Waits until something commits (or `idle` passes), then lets more gather for
/// [`FOLLOW_GATHER`]. False when the ledger closed or `shutdown` turned true.
pub async fn wait_for_commits(
    batches: &mut tokio::sync::broadcast::Receiver<Arc<ledger::CommittedBatch>>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    idle: std::time::Duration,
) -> bool {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    tokio::select! {
        r = batches.recv() => {
            if matches!(r, Err(RecvError::Closed)) {
                return false;
            }
        }
        _ = tokio::time::sleep(idle) => return true,
        _ = shutdown.wait_for(|s| *s) => return false,
    }
    tokio::select! {
        _ = tokio::time::sleep(FOLLOW_GATHER) => {}
        _ = shutdown.wait_for(|s| *s) => return false,
    }
    // What arrived meanwhile is in the log; the catch-up reads it from there.
    loop {
        match batches.try_recv() {
            Ok(_) | Err(TryRecvError::Lagged(_)) => {}
            Err(TryRecvError::Empty) => return true,
            Err(TryRecvError::Closed) => return false,
        }
    }
}
