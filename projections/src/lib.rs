//! Views built from the log. A `View` turns events into rows; the `Runner` feeds it from its
//! checkpoint and writes the rows it produced together with the new checkpoint in one synced
//! RocksDB batch, so a crash never loses or double-applies an event, and `rebuild` (drop the rows,
//! checkpoint 0, catch up) gives the same rows as building incrementally.
//!
//! Views live in their own RocksDB under `<data_dir>/projections`: one column family per view and
//! `checkpoints` (view name -> next position).
//!
//! **Architecture invariant:** views read the log only through `ledger::Ledger`; nothing here
//! writes to the ledger.

mod audit;

use std::path::Path;
use std::sync::Arc;

use ledger::types::Position;
use ledger::{EventFilter, Ledger, LedgerError, RecordedEvent};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};

pub use audit::{AuditEntry, AuditView, AUDIT_VIEW};

const CF_CHECKPOINTS: &str = "checkpoints";
/// Events read and applied per synced batch.
pub const APPLY_CHUNK_EVENTS: usize = 4096;

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

/// A view: rows derived from events. `apply` may only add writes to the batch it is given (and
/// read the view's committed rows), so the runner can commit them with the checkpoint.
pub trait View: Send + Sync {
    /// The view's name (its column family).
    fn name(&self) -> &'static str;
    /// Adds the rows `event` produces to `wb`, in column family `cf`.
    fn apply(&self, db: &DB, cf: &ColumnFamily, wb: &mut WriteBatch, event: &RecordedEvent) -> Result<(), ProjectionError>;
}

/// The views' store and the runner that feeds them.
pub struct Runner {
    ledger: Ledger,
    db: DB,
}

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
        Ok(Arc::new(Runner { ledger, db: DB::open_cf_descriptors(&opts, path, cfs)? }))
    }

    /// The store, for a view's queries.
    pub fn db(&self) -> &DB {
        &self.db
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

    /// Applies everything committed after the view's checkpoint, in synced batches of rows plus
    /// checkpoint. Returns the events applied. Blocking.
    pub fn catch_up(&self, view: &dyn View) -> Result<u64, ProjectionError> {
        self.catch_up_with(view, &mut |_| Ok(()))
    }

    /// `catch_up`, calling `before_commit` with the batch's end position before each commit (tests
    /// use it to crash in the middle).
    pub fn catch_up_with(&self, view: &dyn View, before_commit: &mut dyn FnMut(u64) -> Result<(), ProjectionError>) -> Result<u64, ProjectionError> {
        let name = view.name();
        let cf = self.cf(name);
        let mut next = self.checkpoint(name)?;
        let mut applied = 0u64;
        loop {
            let end = self.ledger.committed_size();
            if next >= end {
                break;
            }
            let (events, after) = self.ledger.read_range(Position(next), Position(end), APPLY_CHUNK_EVENTS, usize::MAX, &EventFilter::default())?;
            let mut wb = WriteBatch::default();
            for event in &events {
                view.apply(&self.db, cf, &mut wb, event)?;
            }
            wb.put_cf(self.cf(CF_CHECKPOINTS), name.as_bytes(), after.0.to_be_bytes());
            before_commit(after.0)?;
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            self.db.write_opt(wb, &opts)?;
            applied += events.len() as u64;
            next = after.0;
            metrics::gauge!("ledger_projection_lag_positions", "view" => name).set(self.ledger.committed_size().saturating_sub(next) as f64);
        }
        Ok(applied)
    }

    /// Drops the view's rows and checkpoint, then builds it again from position 0. Blocking.
    pub fn rebuild(&self, view: &dyn View) -> Result<u64, ProjectionError> {
        let cf = self.cf(view.name());
        let mut wb = WriteBatch::default();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            wb.delete_cf(cf, item?.0);
        }
        wb.delete_cf(self.cf(CF_CHECKPOINTS), view.name().as_bytes());
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(wb, &opts)?;
        self.catch_up(view)
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

    /// Follows the log: catches up, then again whenever a batch is committed, until `shutdown`.
    pub async fn follow(self: Arc<Self>, view: Arc<dyn View>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut batches = self.ledger.subscribe_batches();
        loop {
            let (me, v) = (self.clone(), view.clone());
            match tokio::task::spawn_blocking(move || me.catch_up(v.as_ref())).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(view = view.name(), error = %e, "projection failed; retrying"),
                Err(_) => return,
            }
            tokio::select! {
                r = batches.recv() => {
                    if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                        return;
                    }
                }
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}
