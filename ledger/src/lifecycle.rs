//! Key lifecycle on a running ledger: erasing a customer's data key (crypto-shredding) and purging
//! its bytes from the store's files, and rotating and destroying a region's key-encryption keys.
//!
//! Erasure is two steps with different clocks. `erase_key` makes the data unreadable: through the
//! writer, the key store destroys the wrapped DEK (durably), then one commit marks the customer
//! erased, then the cached key is purged; its cost does not depend on how many events the customer
//! has. `purge_erased_keys` then removes the deleted bytes from the key store's files (locally: it
//! flushes every column family, so no WAL file still holds the key's original write, and forces a
//! bottommost compaction of `keys`, so no SST file does).

use std::collections::BTreeMap;

use std::ops::ControlFlow;

use tokio::sync::oneshot;

use crate::engine::Ledger;
use crate::error::LedgerError;
use crate::storage::{Space, WrappedKey};
use crate::store::{self, CustomerState};
use crate::types::{CustomerId, Region};
use crate::writer::{Control, ErasedKey, WriterMsg};

/// Key rows rewrapped per writer batch during KEK rotation.
const REWRAP_BATCH_ROWS: usize = 1000;

/// What a KEK rotation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// The new current KEK version.
    pub version: u32,
    /// Data keys rewrapped under it.
    pub rewrapped: u64,
}

impl Ledger {
    async fn control<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, LedgerError>>) -> Control) -> Result<T, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.inner.tx.send(WriterMsg::Control(make(reply))).await.map_err(|_| self.writer_gone())?;
        answer.await.map_err(|_| self.writer_gone())?
    }

    /// Destroys the customer's wrapped data key and marks the customer erased (one synced batch),
    /// then drops the unwrapped key from the cache. From then on their payloads are unreadable
    /// and appends for them are refused. Idempotent. The system customer cannot be erased.
    pub async fn erase_key(&self, customer: CustomerId) -> Result<ErasedKey, LedgerError> {
        if crate::access::is_system_customer(customer) {
            return Err(LedgerError::invalid("customer_id", "is the ledger's system customer, which holds no personal data"));
        }
        let Some(rec) = self.load_customer(customer)? else { return Err(LedgerError::NotFound { what: "customer" }) };
        self.check_served(&rec.region)?;
        // The writer advances the key cache's erasure epoch and drops the cached key in the same
        // step as the commit, before it answers (see `KeyCache`).
        self.control(|reply| Control::EraseKey { customer, reply }).await
    }

    /// Removes destroyed keys' bytes from the key store's files. Blocking; its cost depends on
    /// the memtables' size, not on any customer's history.
    // Callers run it on a blocking thread (the eraser's `spawn_blocking`, `destroy_kek`'s caller).
    #[allow(clippy::disallowed_methods)]
    pub fn purge_erased_keys(&self) -> Result<(), LedgerError> {
        self.inner.key_store.purge()
    }

    /// Keys of active customers after `after` (at most `limit`), as (customer, region, key).
    /// Blocking.
    /// Also returns the last customer listed, to continue after.
    #[allow(clippy::type_complexity)]
    fn key_rows(&self, after: Option<CustomerId>, limit: usize) -> Result<(Vec<(CustomerId, Region, WrappedKey)>, Option<CustomerId>), LedgerError> {
        let listed = self.inner.key_store.list(after, limit)?;
        let last = listed.last().map(|(c, _)| *c);
        let mut out = Vec::new();
        for (id, key) in listed {
            let rec = self.load_customer(id)?;
            // A key whose customer never committed (a crash between the two) holds nothing.
            if let Some(rec) = rec.filter(|r| r.state == CustomerState::Active) {
                out.push((id, rec.region, key));
            }
        }
        Ok((out, last))
    }

    /// How many live data keys of `region` are wrapped under each KEK version. Blocking; reads
    /// every key row.
    pub fn deks_by_kek_version(&self, region: &Region) -> Result<BTreeMap<u32, u64>, LedgerError> {
        self.inner.key_store.count_by_kek_version(|customer| {
            Ok(self.load_customer(customer)?.is_some_and(|rec| rec.state == CustomerState::Active && rec.region == *region))
        })
    }

    /// Creates a new KEK version for `region`, makes it current, and rewraps every live data key
    /// of the region under it. Rows that changed meanwhile (an erasure) are left alone; a key
    /// created during the rotation under the old version is caught by `destroy_kek`'s check.
    pub async fn rotate_kek(&self, region: &Region) -> Result<Rotation, LedgerError> {
        self.check_served(region)?;
        // The keyring file's fsync runs on a blocking thread, under a read lock only (reads that
        // unwrap keys go on); the write lock is held just to install the new version in memory.
        let (ledger, r) = (self.clone(), region.clone());
        let version = tokio::task::spawn_blocking(move || {
            let _one_rotation_at_a_time = ledger.inner.key_file_writes.lock().expect("key file lock");
            let next = ledger.inner.keyring.read().expect("keyring lock").write_rotation(&r)?;
            Ok::<_, LedgerError>(ledger.inner.keyring.write().expect("keyring lock").install(&r, next))
        })
        .await
        .map_err(|_| LedgerError::ShuttingDown)??;
        tracing::info!(region = %region, version, "key-encryption key rotated; rewrapping data keys");
        let mut rewrapped = 0u64;
        let mut after = None;
        loop {
            let ledger = self.clone();
            let (rows, last) = tokio::task::spawn_blocking(move || ledger.key_rows(after, REWRAP_BATCH_ROWS))
                .await
            .map_err(|_| LedgerError::ShuttingDown)??;
            let Some(last) = last else { break };
            after = Some(last);
            let mut changes = Vec::new();
            {
                let keyring = self.inner.keyring.read().expect("keyring lock");
                for (customer, r, old) in rows {
                    if r != *region || old.kek_version == version {
                        continue;
                    }
                    let dek = keyring.unwrap(&r, customer, old.kek_version, &old.wrapped)?;
                    let (kek_version, wrapped) = keyring.wrap_with(&*self.inner.rng, &r, customer, &dek)?;
                    changes.push((customer, old, WrappedKey { kek_version, wrapped }));
                }
            }
            if !changes.is_empty() {
                rewrapped += self.control(|reply| Control::Rewrap { rows: changes, reply }).await? as u64;
            }
        }
        metrics::counter!("ledger_deks_rewrapped_total").increment(rewrapped);
        Ok(Rotation { version, rewrapped })
    }

    /// Destroys KEK `version` of `region`. Refused while it is current or while any live data key
    /// is still wrapped under it. Then flushes and compacts `keys`, so the old wrapped rows are
    /// gone from the files too.
    pub fn destroy_kek(&self, region: &Region, version: u32) -> Result<(), LedgerError> {
        self.check_served(region)?;
        let still = self.deks_by_kek_version(region)?.get(&version).copied().unwrap_or(0);
        if still > 0 {
            return Err(LedgerError::invalid("version", &format!("still wraps {still} data keys; run the rotation again first")));
        }
        {
            // The file's fsync under a read lock only; the write lock just drops it from memory.
            let _one_at_a_time = self.inner.key_file_writes.lock().expect("key file lock");
            self.inner.keyring.read().expect("keyring lock").write_destruction(region, version)?;
            self.inner.keyring.write().expect("keyring lock").forget(region, version);
        }
        tracing::warn!(region = %region, version, "key-encryption key destroyed");
        self.purge_erased_keys()
    }

    /// The KEK versions of `region`, oldest first.
    pub fn kek_versions(&self, region: &Region) -> Vec<u32> {
        self.inner.keyring.read().expect("keyring lock").versions(region)
    }

    /// Every customer of `region`, in id order. Blocking; reads every customer row.
    pub fn customers_in_region(&self, region: &Region) -> Result<Vec<CustomerId>, LedgerError> {
        self.check_served(region)?;
        let mut out = Vec::new();
        self.inner.log.scan(Space::Customers, None, crate::storage::Dir::Forward, &mut |key, value| {
            let rec = store::CustomerRecord::decode(value)?;
            let id = CustomerId(uuid::Uuid::from_slice(key).map_err(|_| LedgerError::Corrupt("customer row with a bad id".into()))?);
            if rec.region == *region && !crate::access::is_system_customer(id) {
                out.push(id);
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(out)
    }

    /// Signs `text` as a C2SP note with the ledger's key, under the log's origin.
    pub fn sign_note(&self, text: &str) -> String {
        self.inner.signing.sign_note(text, &self.origin())
    }
}
