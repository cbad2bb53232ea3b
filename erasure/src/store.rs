//! The erasure store: a RocksDB of its own under `<data_dir>/erasure`, with three column families.
//! Values are JSON (small, rare, and easy to inspect); every write is synced.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `requests` | customer | `ErasureRecord` |
//! | `request_ids` | request id | customer |
//! | `outbox` | customer, downstream name | `OutboxEntry` |

use std::path::Path;

use ledger::types::CustomerId;
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::error::ErasureError;

const CF_REQUESTS: &str = "requests";
const CF_REQUEST_IDS: &str = "request_ids";
const CF_OUTBOX: &str = "outbox";

/// One customer's erasure, as it progresses.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErasureRecord {
    /// The caller's idempotency key.
    pub request_id: String,
    /// Who is erased.
    pub customer: CustomerId,
    /// The legal basis given (e.g. `gdpr-art17-1a`).
    pub legal_basis: String,
    /// Who asked (a staff or system identifier).
    pub requested_by: String,
    /// When the request was recorded.
    pub requested_at_ms: i64,
    /// The customer's region.
    pub region: Option<String>,
    /// SHA-256 of the destroyed key row, hex.
    pub key_fingerprint: Option<String>,
    /// When the key was destroyed: from then on the data is unreadable.
    pub unreadable_at_ms: Option<i64>,
    /// The signed certificate (a C2SP signed note), once issued.
    pub certificate: Option<String>,
    /// Tree size of the head in the certificate.
    pub certificate_tree_size: Option<u64>,
    /// When flushes and the forced compaction removed the key's bytes from the store's files.
    pub purged_at_ms: Option<i64>,
    /// Later request ids for the same customer, satisfied by this erasure and its certificate:
    /// each is recorded before it is answered, so its status can always be asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_requested_as: Vec<String>,
}

/// Where a notification stands.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutboxState {
    /// Waiting for its next attempt.
    Pending,
    /// A 2xx answered it.
    Delivered,
    /// Out of attempts; an operator may retry it.
    DeadLetter,
}

/// One notification of one erasure to one downstream system.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutboxEntry {
    /// `webhook-id`: the same on every attempt, so receivers can deduplicate.
    pub id: String,
    /// The erased customer.
    pub customer: CustomerId,
    /// The downstream system's configured name.
    pub downstream: String,
    /// The JSON body, fixed at enqueue time.
    pub body: String,
    /// Where it stands.
    pub state: OutboxState,
    /// Attempts made.
    pub attempts: u32,
    /// Earliest time of the next attempt.
    pub next_attempt_ms: i64,
    /// What went wrong last (status code or transport error), never a secret.
    pub last_error: Option<String>,
    /// When a 2xx acknowledged it.
    pub delivered_at_ms: Option<i64>,
}

/// The erasure store.
pub struct ErasureDb {
    db: DB,
}

fn outbox_key(customer: CustomerId, downstream: &str) -> Vec<u8> {
    let mut key = customer.as_bytes().to_vec();
    key.extend_from_slice(downstream.as_bytes());
    key
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ErasureError> {
    serde_json::from_slice(bytes).map_err(|e| ErasureError::Corrupt(e.to_string()))
}

impl ErasureDb {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, ErasureError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_paranoid_checks(true);
        let cfs = [CF_REQUESTS, CF_REQUEST_IDS, CF_OUTBOX].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        Ok(ErasureDb { db: DB::open_cf_descriptors(&opts, path, cfs)? })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column family exists")
    }

    // Reached only through `Eraser::store`, on a blocking thread.
    #[allow(clippy::disallowed_methods)]
    fn write(&self, wb: WriteBatch) -> Result<(), ErasureError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        Ok(self.db.write_opt(wb, &opts)?)
    }

    /// The customer's erasure record.
    pub fn record(&self, customer: CustomerId) -> Result<Option<ErasureRecord>, ErasureError> {
        self.db.get_cf(self.cf(CF_REQUESTS), customer.as_bytes())?.map(|b| decode(&b)).transpose()
    }

    /// The customer a request id erased.
    pub fn customer_of(&self, request_id: &str) -> Result<Option<CustomerId>, ErasureError> {
        match self.db.get_cf(self.cf(CF_REQUEST_IDS), request_id.as_bytes())? {
            Some(b) => Ok(Some(CustomerId(uuid::Uuid::from_slice(&b).map_err(|e| ErasureError::Corrupt(e.to_string()))?))),
            None => Ok(None),
        }
    }

    /// Stores a record (and its request id), and any outbox entries not already there, in one
    /// synced batch.
    pub fn put_record(&self, rec: &ErasureRecord, outbox: &[OutboxEntry]) -> Result<(), ErasureError> {
        let mut wb = WriteBatch::default();
        wb.put_cf(self.cf(CF_REQUESTS), rec.customer.as_bytes(), serde_json::to_vec(rec).expect("serializes"));
        for id in std::iter::once(&rec.request_id).chain(&rec.also_requested_as) {
            wb.put_cf(self.cf(CF_REQUEST_IDS), id.as_bytes(), rec.customer.as_bytes());
        }
        for entry in outbox {
            let key = outbox_key(entry.customer, &entry.downstream);
            if self.db.get_cf(self.cf(CF_OUTBOX), &key)?.is_none() {
                wb.put_cf(self.cf(CF_OUTBOX), key, serde_json::to_vec(entry).expect("serializes"));
            }
        }
        self.write(wb)
    }

    /// Every erasure record.
    pub fn records(&self) -> Result<Vec<ErasureRecord>, ErasureError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_REQUESTS), IteratorMode::Start) {
            out.push(decode(&item?.1)?);
        }
        Ok(out)
    }

    /// Replaces an outbox entry (synced).
    pub fn put_outbox(&self, entry: &OutboxEntry) -> Result<(), ErasureError> {
        let mut wb = WriteBatch::default();
        wb.put_cf(self.cf(CF_OUTBOX), outbox_key(entry.customer, &entry.downstream), serde_json::to_vec(entry).expect("serializes"));
        self.write(wb)
    }

    /// The outbox entries of one customer.
    pub fn outbox_of(&self, customer: CustomerId) -> Result<Vec<OutboxEntry>, ErasureError> {
        let mut out = Vec::new();
        for item in self.db.prefix_iterator_cf(self.cf(CF_OUTBOX), customer.as_bytes()) {
            let (key, value) = item?;
            if !key.starts_with(customer.as_bytes()) {
                break;
            }
            out.push(decode(&value)?);
        }
        Ok(out)
    }

    /// Every outbox entry.
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>, ErasureError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_OUTBOX), IteratorMode::Start) {
            out.push(decode(&item?.1)?);
        }
        Ok(out)
    }
}
