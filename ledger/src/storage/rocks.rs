//! The local store: one RocksDB database whose column families hold the commit log's spaces and,
//! in its own column family, the key store. A commit is one `WriteBatch` written with
//! `sync = true` (one WAL fsync per group commit); a key change is its own synced write.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{BottommostLevelCompaction, CompactOptions, Direction, FlushOptions, IteratorMode, WriteBatch, WriteOptions, DB};

use super::{Batch, CommitLog, Dir, KeyStore, Op, Space, Visit, WrappedKey};
use crate::error::LedgerError;
use crate::store;
use crate::types::CustomerId;

/// The RocksDB database behind both seams.
pub struct RocksStore {
    db: Arc<DB>,
    path: PathBuf,
}

impl RocksStore {
    /// Opens (or creates) the database at `path` and checks its format version (marking a
    /// format-1 store as format 2, synced). Blocking: the ledger is opened on a blocking thread.
    #[allow(clippy::disallowed_methods)]
    pub fn open(path: &Path) -> Result<Arc<RocksStore>, LedgerError> {
        let db = store::open(path)?;
        let meta = db.cf_handle(store::CF_META).expect("meta cf");
        match db.get_cf(&meta, store::META_FORMAT)? {
            None => db.put_cf(&meta, store::META_FORMAT, store::STORE_FORMAT.to_be_bytes())?,
            Some(v) if v.as_slice() == store::STORE_FORMAT.to_be_bytes() => {}
            // Format 1 also stored each leaf as a level-0 Merkle row; this code reads leaves from
            // the records either way, and marks the store as format 2 before writing one without
            // those rows, so an older binary refuses it instead of missing leaves.
            Some(v) if v.as_slice() == 1u32.to_be_bytes() => {
                let mut opts = rocksdb::WriteOptions::default();
                opts.set_sync(true);
                db.put_cf_opt(&meta, store::META_FORMAT, store::STORE_FORMAT.to_be_bytes(), &opts)?;
            }
            Some(_) => return Err(LedgerError::Corrupt("store format is not supported by this version".into())),
        }
        Ok(Arc::new(RocksStore { db, path: path.to_path_buf() }))
    }

    fn cf(&self, space: Space) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(space.cf_name()).expect("column family exists")
    }

    fn keys_cf(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(store::CF_KEYS).expect("keys cf")
    }

    // The writer thread: the one place synced writes are made.
    #[allow(clippy::disallowed_methods)]
    fn write_synced(&self, wb: WriteBatch) -> Result<(), LedgerError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(wb, &opts)?;
        Ok(())
    }
}

impl CommitLog for RocksStore {
    fn commit(&self, batch: &Batch) -> Result<(), LedgerError> {
        let mut wb = WriteBatch::default();
        for op in batch.ops() {
            match op {
                Op::Put(s, k, v) => wb.put_cf(self.cf(s), k, v),
                Op::Delete(s, k) => wb.delete_cf(self.cf(s), k),
            }
        }
        self.write_synced(wb)
    }

    fn get_with(&self, space: Space, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool, LedgerError> {
        match self.db.get_pinned_cf(self.cf(space), key)? {
            Some(v) => {
                f(&v);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn multi_get(&self, space: Space, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, LedgerError> {
        let cf = self.cf(space);
        self.db.multi_get_cf(keys.iter().map(|k| (cf, *k))).into_iter().map(|r| r.map_err(LedgerError::from)).collect()
    }

    fn scan(&self, space: Space, start: Option<&[u8]>, dir: Dir, f: &mut Visit<'_>) -> Result<(), LedgerError> {
        let mut iter = self.db.raw_iterator_cf(self.cf(space));
        match (start, dir) {
            (Some(k), Dir::Forward) => iter.seek(k),
            (Some(k), Dir::Reverse) => iter.seek_for_prev(k),
            (None, Dir::Forward) => iter.seek_to_first(),
            (None, Dir::Reverse) => iter.seek_to_last(),
        }
        while iter.valid() {
            let (Some(k), Some(v)) = (iter.key(), iter.value()) else { break };
            if f(k, v)?.is_break() {
                return Ok(());
            }
            match dir {
                Dir::Forward => iter.next(),
                Dir::Reverse => iter.prev(),
            }
        }
        iter.status()?;
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        let mut total = 0;
        for name in store::ALL_CFS {
            if let Some(cf) = self.db.cf_handle(name) {
                total += self.db.property_int_value_cf(&cf, "rocksdb.total-sst-files-size").ok().flatten().unwrap_or(0);
            }
        }
        let wal: u64 = std::fs::read_dir(&self.path)
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        total + wal
    }

    // Shutdown, on a blocking thread.
    #[allow(clippy::disallowed_methods)]
    fn close(&self) -> Result<(), LedgerError> {
        self.db.flush_wal(true)?;
        Ok(())
    }
}

fn customer_of(key: &[u8]) -> Result<CustomerId, LedgerError> {
    Ok(CustomerId(uuid::Uuid::from_slice(key).map_err(|_| LedgerError::Corrupt("keys row with a bad customer id".into()))?))
}

impl KeyStore for RocksStore {
    fn put_new(&self, keys: &[(CustomerId, WrappedKey)]) -> Result<(), LedgerError> {
        let mut wb = WriteBatch::default();
        for (customer, key) in keys {
            wb.put_cf(self.keys_cf(), customer.as_bytes(), key.encode());
        }
        self.write_synced(wb)
    }

    fn get(&self, customer: CustomerId) -> Result<Option<WrappedKey>, LedgerError> {
        self.db.get_pinned_cf(self.keys_cf(), customer.as_bytes())?.map(|v| WrappedKey::decode(&v)).transpose()
    }

    fn destroy(&self, customer: CustomerId) -> Result<Option<WrappedKey>, LedgerError> {
        let old = KeyStore::get(self, customer)?;
        if old.is_some() {
            let mut wb = WriteBatch::default();
            // A plain delete, not SingleDelete: KEK rotation rewrites the row, and SingleDelete is
            // only defined for a key written once. The forced bottommost compaction of `purge`
            // drops the tombstone and every older version alike.
            wb.delete_cf(self.keys_cf(), customer.as_bytes());
            self.write_synced(wb)?;
        }
        Ok(old)
    }

    fn rewrap(&self, changes: &[(CustomerId, WrappedKey, WrappedKey)]) -> Result<usize, LedgerError> {
        let mut wb = WriteBatch::default();
        let mut count = 0;
        for (customer, old, new) in changes {
            if KeyStore::get(self, *customer)?.as_ref() == Some(old) {
                wb.put_cf(self.keys_cf(), customer.as_bytes(), new.encode());
                count += 1;
            }
        }
        if count > 0 {
            self.write_synced(wb)?;
        }
        Ok(count)
    }

    fn list(&self, after: Option<CustomerId>, limit: usize) -> Result<Vec<(CustomerId, WrappedKey)>, LedgerError> {
        let start = after.map(|c| *c.as_bytes());
        let mode = match &start {
            Some(k) => IteratorMode::From(k, Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.keys_cf(), mode) {
            let (key, value) = item?;
            let id = customer_of(&key)?;
            if Some(id) == after {
                continue;
            }
            out.push((id, WrappedKey::decode(&value)?));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Flushes every column family (the WAL files that held the original writes become obsolete
    /// and are deleted) and forces a bottommost compaction of `keys`, so no SST file still holds a
    /// destroyed key. Its cost depends on the memtables' size, not on any customer's history.
    #[allow(clippy::disallowed_methods)]
    fn purge(&self) -> Result<(), LedgerError> {
        let cfs: Vec<_> = store::ALL_CFS.iter().map(|n| self.db.cf_handle(n).expect("column family")).collect();
        let mut flush = FlushOptions::default();
        flush.set_wait(true);
        self.db.flush_cfs_opt(&cfs, &flush)?;
        let mut compact = CompactOptions::default();
        compact.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        compact.set_exclusive_manual_compaction(false);
        self.db.compact_range_cf_opt(self.keys_cf(), None::<&[u8]>, None::<&[u8]>, &compact);
        Ok(())
    }
}
