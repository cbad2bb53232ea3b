//! The engine's two storage seams, and the state behind them.
//!
//! The ledger keeps three kinds of state, and this module keeps them apart:
//!
//! - **The log** ([`StateClass::Log`]): the event records, the Merkle nodes and the tree head.
//!   Append-only and immutable once committed; everything else about an event is derived from it.
//! - **Derived state** ([`StateClass::Derived`]): the stream index and the event-id index. Each row
//!   is a function of log records (and, for an event id's content MAC, of the customer's key), so
//!   it could be rebuilt; today it is written in the same commit as the records it indexes.
//! - **The registry** ([`StateClass::Registry`]): customers (region, state) and the blind-index
//!   identity rows. Small and mutable, changed only by the writer's control commands; erasure
//!   marks the customer erased and deletes their identity rows.
//! - **The key store** ([`KeyStore`]): wrapped data keys. The only state that erasure destroys,
//!   and the reason it is not in the log: a key must never live anywhere that cannot forget.
//!
//! Log, derived and registry rows are committed through [`CommitLog`] in one durable batch per
//! group commit; key rows through [`KeyStore`], each change durable on return. Both have a
//! RocksDB implementation (production, [`rocks`]) and an in-memory one with injectable faults
//! (the simulator's, [`memory`]).

pub mod memory;
pub mod rocks;

use std::ops::ControlFlow;

use crate::error::LedgerError;
use crate::types::CustomerId;

/// A named key space: one RocksDB column family in the local store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// position -> stored event record.
    Events,
    /// level, index -> hash of each complete subtree of two leaves or more (a leaf, level 0, is
    /// stored once: in its event's record).
    Merkle,
    /// name -> ledger-wide state (tree size and root, format version).
    Meta,
    /// customer, stream, version -> position.
    Streams,
    /// event id -> position, content MAC (idempotency, forever).
    EventIds,
    /// customer -> region, state, key version, created time.
    Customers,
    /// region, blind index of an identifier -> customer.
    Identity,
    /// customer, identity key -> nothing: a customer's identity rows, for erasure.
    IdentityByCustomer,
}

/// Which of the kinds of state a space holds (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateClass {
    /// Immutable, replayable records.
    Log,
    /// Rebuildable from the log.
    Derived,
    /// Mutable control state, changed only by the writer's control commands.
    Registry,
}

impl Space {
    /// Every space the commit log holds.
    pub const ALL: [Space; 8] =
        [Space::Events, Space::Merkle, Space::Meta, Space::Streams, Space::EventIds, Space::Customers, Space::Identity, Space::IdentityByCustomer];

    /// The kind of state this space holds.
    pub fn class(self) -> StateClass {
        match self {
            Space::Events | Space::Merkle | Space::Meta => StateClass::Log,
            Space::Streams | Space::EventIds => StateClass::Derived,
            Space::Customers | Space::Identity | Space::IdentityByCustomer => StateClass::Registry,
        }
    }

    /// The column family holding it in the local store.
    pub fn cf_name(self) -> &'static str {
        use crate::store::*;
        match self {
            Space::Events => CF_EVENTS,
            Space::Merkle => CF_MERKLE,
            Space::Meta => CF_META,
            Space::Streams => CF_STREAMS,
            Space::EventIds => CF_EVENT_IDS,
            Space::Customers => CF_CUSTOMERS,
            Space::Identity => CF_IDENTITY,
            Space::IdentityByCustomer => CF_IDENTITY_BY_CUSTOMER,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    fn from_index(i: u8) -> Option<Space> {
        Space::ALL.get(usize::from(i)).copied()
    }
}

/// One change in a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op<'a> {
    /// Set `key` to `value`.
    Put(Space, &'a [u8], &'a [u8]),
    /// Remove `key`.
    Delete(Space, &'a [u8]),
}

#[derive(Clone, Copy, Debug)]
struct OpRef {
    space: Space,
    delete: bool,
    key_end: u32,
    value_end: u32,
}

/// Changes committed together. Keys and values are copied into one growing buffer, so building
/// a batch of thousands of rows costs a few allocations, not two per row.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    bytes: Vec<u8>,
    ops: Vec<OpRef>,
}

impl Batch {
    /// An empty batch with room for about `rows` rows of `row_bytes` each.
    pub fn with_capacity(rows: usize, row_bytes: usize) -> Self {
        Batch { bytes: Vec::with_capacity(rows * row_bytes), ops: Vec::with_capacity(rows) }
    }

    /// Sets `key` to `value` in `space`.
    pub fn put(&mut self, space: Space, key: &[u8], value: &[u8]) {
        self.bytes.extend_from_slice(key);
        let key_end = self.end();
        self.bytes.extend_from_slice(value);
        self.ops.push(OpRef { space, delete: false, key_end, value_end: self.end() });
    }

    /// Removes `key` from `space`.
    pub fn delete(&mut self, space: Space, key: &[u8]) {
        self.bytes.extend_from_slice(key);
        let key_end = self.end();
        self.ops.push(OpRef { space, delete: true, key_end, value_end: key_end });
    }

    fn end(&self) -> u32 {
        u32::try_from(self.bytes.len()).expect("a batch stays under 4 GiB")
    }

    /// Number of changes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes of keys and values.
    pub fn data_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The changes in the order they were added.
    pub fn ops(&self) -> impl Iterator<Item = Op<'_>> + '_ {
        let mut start = 0usize;
        self.ops.iter().map(move |o| {
            let key = &self.bytes[start..o.key_end as usize];
            let value = &self.bytes[o.key_end as usize..o.value_end as usize];
            start = o.value_end as usize;
            if o.delete { Op::Delete(o.space, key) } else { Op::Put(o.space, key, value) }
        })
    }

    /// A self-delimiting encoding: per change, space, kind, key length, key, value length, value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes.len() + self.ops.len() * 10);
        for op in self.ops() {
            let (space, delete, key, value) = match op {
                Op::Put(s, k, v) => (s, false, k, v),
                Op::Delete(s, k) => (s, true, k, &[][..]),
            };
            out.push(space as u8);
            out.push(u8::from(delete));
            out.extend_from_slice(&(key.len() as u32).to_be_bytes());
            out.extend_from_slice(key);
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    /// Decodes [`Batch::encode`]'s output.
    pub fn decode(mut bytes: &[u8]) -> Result<Batch, LedgerError> {
        let bad = || LedgerError::Corrupt("batch encoding is malformed".into());
        let mut batch = Batch::default();
        let take = |bytes: &mut &[u8], n: usize| -> Result<Vec<u8>, LedgerError> {
            if bytes.len() < n {
                return Err(bad());
            }
            let (head, rest) = bytes.split_at(n);
            *bytes = rest;
            Ok(head.to_vec())
        };
        while !bytes.is_empty() {
            let head = take(&mut bytes, 2)?;
            let space = Space::from_index(head[0]).ok_or_else(bad)?;
            let key_len = u32::from_be_bytes(take(&mut bytes, 4)?.try_into().expect("4 bytes")) as usize;
            let key = take(&mut bytes, key_len)?;
            let value_len = u32::from_be_bytes(take(&mut bytes, 4)?.try_into().expect("4 bytes")) as usize;
            let value = take(&mut bytes, value_len)?;
            match head[1] {
                0 => batch.put(space, &key, &value),
                1 if value.is_empty() => batch.delete(space, &key),
                _ => return Err(bad()),
            }
        }
        Ok(batch)
    }
}

/// Which way a scan goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Ascending keys, from the first key at or after the start.
    Forward,
    /// Descending keys, from the last key at or before the start.
    Reverse,
}

/// A scan visitor: gets each key and value, says whether to go on.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>, LedgerError> + 'a;

/// The durable log of committed batches, and the reads over the state they built.
///
/// `commit` returns only once the batch is durable: after `Ok`, a crash loses none of it; after
/// an error, the batch may or may not be durable, and the caller must treat the store as
/// poisoned (nothing further is acknowledged until it is reopened and recovered). Reads see every
/// committed batch, and only whole batches.
pub trait CommitLog: Send + Sync {
    /// Makes `batch` durable, then visible to reads.
    fn commit(&self, batch: &Batch) -> Result<(), LedgerError>;

    /// Calls `f` with the value of `key`, if present, without copying it. Returns whether it was.
    fn get_with(&self, space: Space, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool, LedgerError>;

    /// Values of `keys`, in order.
    fn multi_get(&self, space: Space, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, LedgerError>;

    /// Visits rows of `space` from `start` (`None`: the first key in direction `dir`) until `f`
    /// breaks or the space ends.
    fn scan(&self, space: Space, start: Option<&[u8]>, dir: Dir, f: &mut Visit<'_>) -> Result<(), LedgerError>;

    /// Bytes the store takes on disk, for the metrics endpoint.
    fn size_bytes(&self) -> u64;

    /// Makes everything committed durable and releases what can be released, before shutdown.
    fn close(&self) -> Result<(), LedgerError>;
}

impl dyn CommitLog + '_ {
    /// The value of `key`, copied.
    pub fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, LedgerError> {
        let mut out = None;
        self.get_with(space, key, &mut |v| out = Some(v.to_vec()))?;
        Ok(out)
    }

    /// Whether `key` is present.
    pub fn contains(&self, space: Space, key: &[u8]) -> Result<bool, LedgerError> {
        self.get_with(space, key, &mut |_| {})
    }

    /// The value of `key` decoded by `decode`, without copying the bytes.
    pub fn get_map<T>(&self, space: Space, key: &[u8], decode: impl FnOnce(&[u8]) -> Result<T, LedgerError>) -> Result<Option<T>, LedgerError> {
        let mut decode = Some(decode);
        let mut out = None;
        self.get_with(space, key, &mut |v| out = decode.take().map(|d| d(v)))?;
        out.transpose()
    }

    /// The first row at or beyond `start` in direction `dir`, copied.
    pub fn first(&self, space: Space, start: Option<&[u8]>, dir: Dir) -> Result<Option<(Vec<u8>, Vec<u8>)>, LedgerError> {
        let mut out = None;
        self.scan(space, start, dir, &mut |k, v| {
            out = Some((k.to_vec(), v.to_vec()));
            Ok(ControlFlow::Break(()))
        })?;
        Ok(out)
    }

    /// Visits every row whose key starts with `prefix`, in order.
    pub fn scan_prefix(&self, space: Space, prefix: &[u8], f: &mut Visit<'_>) -> Result<(), LedgerError> {
        self.scan(space, Some(prefix), Dir::Forward, &mut |k, v| if k.starts_with(prefix) { f(k, v) } else { Ok(ControlFlow::Break(())) })
    }
}

/// A wrapped data key as stored: the KEK version it is wrapped under and the wrapped bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The key-encryption key version.
    pub kek_version: u32,
    /// Nonce, wrapped DEK and tag.
    pub wrapped: Vec<u8>,
}

impl std::fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WrappedKey(kek v{}, <{} bytes>)", self.kek_version, self.wrapped.len())
    }
}

impl WrappedKey {
    /// The stored row: format, KEK version, wrapped bytes.
    pub fn encode(&self) -> Vec<u8> {
        crate::store::encode_key_record(self.kek_version, &self.wrapped)
    }
    /// Decodes a stored row.
    pub fn decode(row: &[u8]) -> Result<WrappedKey, LedgerError> {
        let (kek_version, wrapped) = crate::store::decode_key_record(row)?;
        Ok(WrappedKey { kek_version, wrapped: wrapped.to_vec() })
    }
    /// SHA-256 of the stored row: names the key without revealing it.
    pub fn fingerprint(&self) -> crate::merkle::Hash {
        crate::merkle::sha256(&self.encode())
    }
}

/// The store of wrapped data keys: the one piece of state erasure destroys.
///
/// Every change is durable when it returns `Ok`; after an error it may or may not be, and the
/// caller poisons the ledger. The writer is the only caller of the changing methods.
pub trait KeyStore: Send + Sync {
    /// Stores the keys of customers being created. Written once per customer, before the commit
    /// that creates the customer: a row whose customer never committed (a crash in between) was
    /// never used to seal a committed event, and is replaced.
    fn put_new(&self, keys: &[(CustomerId, WrappedKey)]) -> Result<(), LedgerError>;

    /// The customer's wrapped key, if it exists.
    fn get(&self, customer: CustomerId) -> Result<Option<WrappedKey>, LedgerError>;

    /// Destroys the customer's key and returns it as it was (for its fingerprint). After `Ok`,
    /// no read through this store finds it; [`KeyStore::purge`] then removes its bytes.
    fn destroy(&self, customer: CustomerId) -> Result<Option<WrappedKey>, LedgerError>;

    /// Replaces keys that still equal the expected ones (rewrapping under a new KEK); a key that
    /// changed meanwhile (destroyed) is left alone. Returns how many were replaced.
    fn rewrap(&self, changes: &[(CustomerId, WrappedKey, WrappedKey)]) -> Result<usize, LedgerError>;

    /// Up to `limit` keys after `after` in customer order.
    fn list(&self, after: Option<CustomerId>, limit: usize) -> Result<Vec<(CustomerId, WrappedKey)>, LedgerError>;

    /// Removes destroyed keys' bytes from every file and copy the store keeps.
    fn purge(&self) -> Result<(), LedgerError>;
}

impl dyn KeyStore + '_ {
    /// How many keys are wrapped under each KEK version, over the customers `include` accepts.
    pub fn count_by_kek_version(&self, mut include: impl FnMut(CustomerId) -> Result<bool, LedgerError>) -> Result<std::collections::BTreeMap<u32, u64>, LedgerError> {
        let mut counts = std::collections::BTreeMap::new();
        let mut after = None;
        loop {
            let rows = self.list(after, 1000)?;
            let Some(last) = rows.last() else { break };
            after = Some(last.0);
            for (customer, key) in &rows {
                if include(*customer)? {
                    *counts.entry(key.kek_version).or_default() += 1;
                }
            }
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trips_and_keeps_order() {
        let mut b = Batch::default();
        b.put(Space::Events, b"k1", b"v1");
        b.delete(Space::Identity, b"gone");
        b.put(Space::Meta, b"", b"");
        b.put(Space::IdentityByCustomer, b"k2", &[0u8; 300]);
        let ops: Vec<_> = b.ops().collect();
        assert_eq!(ops[0], Op::Put(Space::Events, b"k1", b"v1"));
        assert_eq!(ops[1], Op::Delete(Space::Identity, b"gone"));
        assert_eq!(ops[2], Op::Put(Space::Meta, b"", b""));
        let again = Batch::decode(&b.encode()).unwrap();
        assert_eq!(again.ops().collect::<Vec<_>>(), ops);
        assert!(Batch::decode(&b.encode()[..7]).is_err(), "a cut encoding is refused");
    }

    #[test]
    fn every_space_has_a_class_and_a_column_family() {
        for s in Space::ALL {
            assert_eq!(Space::from_index(s as u8), Some(s));
            assert!(crate::store::ALL_CFS.contains(&s.cf_name()));
            let _ = s.class();
        }
        assert_ne!(Space::ALL.map(Space::cf_name).to_vec(), vec![crate::store::CF_KEYS; 8]);
    }
}
