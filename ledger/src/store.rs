//! The local store's layout: column families, key encodings and RocksDB options. Keys are big-endian so that
//! RocksDB's byte order is numeric order. No key holds personal data: customers and events are
//! UUIDs, stream names are caller-chosen opaque ids.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Options, DB};

use crate::error::LedgerError;
use crate::merkle::Hash;
use crate::types::{CustomerId, Position, Region, StreamName, StreamVersion};

/// position -> stored event record.
pub const CF_EVENTS: &str = "events";
/// customer, stream, version -> position.
pub const CF_STREAMS: &str = "streams";
/// event id -> position, content MAC (idempotency, forever).
pub const CF_EVENT_IDS: &str = "event_ids";
/// customer -> region, state, key version, created time.
pub const CF_CUSTOMERS: &str = "customers";
/// customer -> wrapped DEK (written once; small files so shredding compacts cheaply).
pub const CF_KEYS: &str = "keys";
/// level, index -> hash of each complete subtree of the Merkle tree.
pub const CF_MERKLE: &str = "merkle";
/// name -> ledger-wide state (tree size and root, format version).
pub const CF_META: &str = "meta";
/// region, blind index of an identifier -> customer (identity resolution without plaintext).
pub const CF_IDENTITY: &str = "identity";
/// customer, region, blind index -> nothing: the customer's identity rows, for erasure.
pub const CF_IDENTITY_BY_CUSTOMER: &str = "identity_by_customer";

/// Every column family, in the order they are opened.
pub const ALL_CFS: [&str; 9] =
    [CF_EVENTS, CF_STREAMS, CF_EVENT_IDS, CF_CUSTOMERS, CF_KEYS, CF_MERKLE, CF_META, CF_IDENTITY, CF_IDENTITY_BY_CUSTOMER];

/// Meta key of the committed tree state.
pub const META_TREE: &[u8] = b"tree";
/// Meta key of the store's format version.
pub const META_FORMAT: &[u8] = b"format";
/// The store format this code writes (2: leaves live only in the event records; the Merkle
/// space holds the interior nodes).
pub const STORE_FORMAT: u32 = 2;
const BLOCK_CACHE_BYTES: usize = 256 * 1024 * 1024;

/// Opens (or creates) the database with every column family.
pub fn open(path: &Path) -> Result<Arc<DB>, LedgerError> {
    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    db_opts.set_paranoid_checks(true);
    db_opts.increase_parallelism(2);
    db_opts.set_max_background_jobs(2);
    db_opts.set_keep_log_file_num(5);
    let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    let cfs = ALL_CFS.iter().map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name, &cache)));
    let db = DB::open_cf_descriptors(&db_opts, path, cfs)?;
    Ok(Arc::new(db))
}

fn cf_options(name: &str, cache: &Cache) -> Options {
    let mut opts = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    match name {
        // Point lookups: a bloom filter keeps misses (new event ids, new customers) off the disk.
        CF_EVENT_IDS | CF_CUSTOMERS | CF_KEYS | CF_STREAMS | CF_IDENTITY => table.set_bloom_filter(10.0, false),
        _ => {}
    }
    opts.set_block_based_table_factory(&table);
    if matches!(name, CF_EVENT_IDS | CF_STREAMS) {
        // Random keys: inserting into a large memtable is a cache-cold skiplist search, which was
        // the writer thread's largest cost. Small memtables keep it cache-resident; flushes and
        // compactions run on background threads. (A hash memtable was faster to insert into but
        // moved a full sort onto every flush, and lost on the benchmark sequence: ARCHITECTURE.md.)
        opts.set_write_buffer_size(8 * 1024 * 1024);
    }
    if name == CF_EVENT_IDS {
        // Nearly every lookup (a new event id) misses: a memtable bloom filter answers it.
        opts.set_memtable_whole_key_filtering(true);
        opts.set_memtable_prefix_bloom_ratio(0.05);
    }
    match name {
        // Ciphertext does not compress; headers a little. LZ4 costs almost nothing.
        CF_EVENTS => {
            opts.set_compression_type(DBCompressionType::Lz4);
            opts.set_write_buffer_size(64 * 1024 * 1024);
        }
        // Small memtables and files: a forced compaction after a key is deleted rewrites little.
        CF_KEYS => {
            opts.set_write_buffer_size(4 * 1024 * 1024);
            opts.set_target_file_size_base(4 * 1024 * 1024);
            opts.set_compression_type(DBCompressionType::None);
        }
        _ => opts.set_compression_type(DBCompressionType::Lz4),
    }
    opts
}

/// The key of an event in `events`.
pub fn event_key(position: Position) -> [u8; 8] {
    position.0.to_be_bytes()
}

/// The prefix of a stream's rows in `streams`: customer, u16 name length, name.
pub fn stream_prefix(customer: CustomerId, stream: &StreamName) -> Vec<u8> {
    let name = stream.as_str().as_bytes();
    let mut key = Vec::with_capacity(16 + 2 + name.len() + 8);
    key.extend_from_slice(customer.as_bytes());
    key.extend_from_slice(&u16::try_from(name.len()).expect("stream name fits u16").to_be_bytes());
    key.extend_from_slice(name);
    key
}

/// The key of one stream version in `streams`.
pub fn stream_key(prefix: &[u8], version: StreamVersion) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 8);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&version.0.to_be_bytes());
    key
}

/// The key of an identity row: u8 region length, region, blind index.
pub fn identity_key(region: &Region, blind: &[u8; 32]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + region.as_str().len() + 32);
    key.push(region.as_str().len() as u8);
    key.extend_from_slice(region.as_str().as_bytes());
    key.extend_from_slice(blind);
    key
}

/// The key of a customer's reverse identity row: customer, then the identity key.
pub fn identity_by_customer_key(customer: CustomerId, identity_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(16 + identity_key.len());
    key.extend_from_slice(customer.as_bytes());
    key.extend_from_slice(identity_key);
    key
}

/// The key of a Merkle node in `merkle`.
pub fn merkle_key(level: u8, index: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = level;
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

/// Decodes a big-endian u64.
pub fn be_u64(bytes: &[u8]) -> Result<u64, LedgerError> {
    bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| LedgerError::Corrupt("expected an 8-byte integer".into()))
}

/// The committed tree state, stored under `meta/tree` in the same batch as the events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeState {
    /// Number of events.
    pub size: u64,
    /// Merkle root over them.
    pub root: Hash,
}

impl TreeState {
    /// Encodes as format byte, size, root.
    pub fn encode(&self) -> [u8; 41] {
        let mut out = [0u8; 41];
        out[0] = 1;
        out[1..9].copy_from_slice(&self.size.to_be_bytes());
        out[9..].copy_from_slice(&self.root);
        out
    }
    /// Decodes the encoding above.
    pub fn decode(bytes: &[u8]) -> Result<Self, LedgerError> {
        if bytes.len() != 41 || bytes[0] != 1 {
            return Err(LedgerError::Corrupt("tree state has a bad layout".into()));
        }
        Ok(TreeState { size: be_u64(&bytes[1..9])?, root: bytes[9..].try_into().expect("32 bytes") })
    }
}

/// A customer's lifecycle state. The discriminants are stored and never change.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CustomerState {
    /// Events may be appended and read.
    Active = 1,
    /// The data key is destroyed.
    Erased = 2,
}

/// A customer's row in `customers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomerRecord {
    /// Pinned at creation, immutable.
    pub region: Region,
    /// Lifecycle state.
    pub state: CustomerState,
    /// The data-key version events are encrypted under.
    pub key_version: u32,
    /// Creation time, unix milliseconds.
    pub created_unix_ms: i64,
}

impl CustomerRecord {
    /// Encodes as format, state, key version, created, region.
    pub fn encode(&self) -> Vec<u8> {
        let region = self.region.as_str().as_bytes();
        let mut out = Vec::with_capacity(1 + 1 + 4 + 8 + 1 + region.len());
        out.push(1);
        out.push(self.state as u8);
        out.extend_from_slice(&self.key_version.to_be_bytes());
        out.extend_from_slice(&self.created_unix_ms.to_be_bytes());
        out.push(region.len() as u8);
        out.extend_from_slice(region);
        out
    }
    /// Decodes the encoding above.
    pub fn decode(bytes: &[u8]) -> Result<Self, LedgerError> {
        let bad = || LedgerError::Corrupt("customer record has a bad layout".into());
        if bytes.len() < 15 || bytes[0] != 1 {
            return Err(bad());
        }
        let state = match bytes[1] {
            1 => CustomerState::Active,
            2 => CustomerState::Erased,
            _ => return Err(bad()),
        };
        let key_version = u32::from_be_bytes(bytes[2..6].try_into().expect("4 bytes"));
        let created_unix_ms = i64::from_be_bytes(bytes[6..14].try_into().expect("8 bytes"));
        let len = usize::from(bytes[14]);
        let region = std::str::from_utf8(bytes.get(15..15 + len).ok_or_else(bad)?).map_err(|_| bad())?;
        Ok(CustomerRecord { region: Region::parse(region, "stored region")?, state, key_version, created_unix_ms })
    }
}

/// A wrapped DEK's row in `keys`: format, KEK version, wrapped bytes.
pub fn encode_key_record(kek_version: u32, wrapped: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + wrapped.len());
    out.push(1);
    out.extend_from_slice(&kek_version.to_be_bytes());
    out.extend_from_slice(wrapped);
    out
}

/// Decodes a `keys` row into (KEK version, wrapped bytes).
pub fn decode_key_record(bytes: &[u8]) -> Result<(u32, &[u8]), LedgerError> {
    if bytes.len() < 5 || bytes[0] != 1 {
        return Err(LedgerError::Corrupt("key record has a bad layout".into()));
    }
    Ok((u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes")), &bytes[5..]))
}

/// An event id's row in `event_ids`: position, content MAC.
pub fn encode_event_id_record(position: Position, mac: &[u8; 32]) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[..8].copy_from_slice(&position.0.to_be_bytes());
    out[8..].copy_from_slice(mac);
    out
}

/// Decodes an `event_ids` row.
pub fn decode_event_id_record(bytes: &[u8]) -> Result<(Position, [u8; 32]), LedgerError> {
    if bytes.len() != 40 {
        return Err(LedgerError::Corrupt("event id record has a bad layout".into()));
    }
    Ok((Position(be_u64(&bytes[..8])?), bytes[8..].try_into().expect("32 bytes")))
}

/// The last version of a stream, if it has any events.
pub fn stream_head(log: &dyn crate::storage::CommitLog, prefix: &[u8]) -> Result<Option<StreamVersion>, LedgerError> {
    let mut head = None;
    log.scan(crate::storage::Space::Streams, Some(&stream_key(prefix, StreamVersion(u64::MAX))), crate::storage::Dir::Reverse, &mut |key, _| {
        if key.len() == prefix.len() + 8 && key.starts_with(prefix) {
            head = Some(StreamVersion(be_u64(&key[prefix.len()..])?));
        }
        Ok(std::ops::ControlFlow::Break(()))
    })?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let c = CustomerRecord {
            region: Region::parse("eu-west", "r").unwrap(),
            state: CustomerState::Active,
            key_version: 3,
            created_unix_ms: 1_700_000_000_000,
        };
        assert_eq!(CustomerRecord::decode(&c.encode()).unwrap(), c);
        let t = TreeState { size: 9, root: [4u8; 32] };
        assert_eq!(TreeState::decode(&t.encode()).unwrap(), t);
        let rec = encode_key_record(2, &[1, 2, 3]);
        let (v, w) = decode_key_record(&rec).unwrap();
        assert_eq!((v, w), (2, &[1u8, 2, 3][..]));
    }

    #[test]
    fn stream_keys_sort_by_version_and_never_collide_across_names() {
        let c = CustomerId::new_random();
        let limits = crate::limits::Limits::default();
        let a = stream_prefix(c, &StreamName::parse("a", "s", &limits).unwrap());
        let ab = stream_prefix(c, &StreamName::parse("ab", "s", &limits).unwrap());
        assert!(stream_key(&a, StreamVersion(1)) < stream_key(&a, StreamVersion(256)));
        assert!(!stream_key(&ab, StreamVersion(0)).starts_with(&a) || a.len() != ab.len());
    }
}
