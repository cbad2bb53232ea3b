//! Key hierarchy: one key-encryption key (KEK) per region, versioned, in a keyring file; one data
//! key (DEK) per customer, random, wrapped under its region's current KEK and stored write-once.
//!
//! Plaintext keys never reach disk, logs or `Debug` output: key material lives in `Zeroizing`
//! buffers and in AES round keys that the `aes` crate zeroizes on drop, and every type here that
//! holds a key has a redacted `Debug`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::codec::NONCE_BYTES;
use crate::error::LedgerError;
use crate::types::{CustomerId, Region, UnixMillis};

/// Bytes of an AES-GCM tag.
pub const TAG_BYTES: usize = 16;
/// Bytes of a wrapped DEK: nonce, 32 key bytes, tag.
pub const WRAPPED_DEK_BYTES: usize = NONCE_BYTES + 32 + TAG_BYTES;
const DEK_WRAP_DOMAIN: &[u8] = b"ledger.dek-wrap.v1";
const MAC_KEY_DOMAIN: &[u8] = b"ledger.idempotency-mac.v1";
const KEYRING_FORMAT: u32 = 1;

fn io_err(path: &Path, source: std::io::Error) -> LedgerError {
    LedgerError::Io { path: path.display().to_string(), source }
}

/// Reads a file that must be readable by its owner only; refuses one that others can read.
pub fn read_private_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, LedgerError> {
    let meta = fs::metadata(path).map_err(|e| io_err(path, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(LedgerError::Io {
            path: path.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "key file is accessible by group or others; chmod 600 it",
            ),
        });
    }
    Ok(Zeroizing::new(fs::read(path).map_err(|e| io_err(path, e))?))
}

#[derive(Serialize, Deserialize)]
struct KeyringFile {
    format: u32,
    /// Region -> versions, oldest first.
    regions: BTreeMap<String, Vec<KekFileEntry>>,
    /// Region -> blind-index key (base64). Not rotated with the KEK: every identifier's index
    /// row is keyed by it.
    #[serde(default)]
    index_keys: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct KekFileEntry {
    version: u32,
    created_unix_ms: i64,
    /// Base64 of the 32 key bytes.
    key: String,
}

impl Drop for KekFileEntry {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

/// One version of a region's key-encryption key.
struct Kek {
    version: u32,
    cipher: Aes256Gcm,
}

/// A KEK version written to the keyring file but not yet in use (see `Keyring::write_rotation`).
pub struct NextKek(Kek);

impl std::fmt::Debug for NextKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NextKek(version={})", self.0.version)
    }
}

/// The regions' key-encryption keys, loaded from the keyring file.
pub struct Keyring {
    path: PathBuf,
    regions: HashMap<Region, Vec<Kek>>,
    index_keys: HashMap<Region, Zeroizing<[u8; 32]>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("path", &self.path).field("regions", &self.regions.len()).finish_non_exhaustive()
    }
}

impl Keyring {
    /// Opens the keyring at `path`, creating it (0600) or adding a first KEK version for any of
    /// `regions` it lacks. Returns the keyring and whether the file was created or changed.
    pub fn open_or_create(path: &Path, regions: &[Region]) -> Result<(Self, bool), LedgerError> {
        let mut file = if path.exists() {
            let bytes = read_private_file(path)?;
            let file: KeyringFile = serde_json::from_slice(&bytes)
                .map_err(|e| LedgerError::Corrupt(format!("keyring {} is not valid: {e}", path.display())))?;
            if file.format != KEYRING_FORMAT {
                return Err(LedgerError::Corrupt(format!("keyring format {} is not supported", file.format)));
            }
            file
        } else {
            KeyringFile { format: KEYRING_FORMAT, regions: BTreeMap::new(), index_keys: BTreeMap::new() }
        };
        let mut changed = !path.exists();
        for region in regions {
            if !file.regions.contains_key(region.as_str()) {
                file.regions.insert(region.as_str().to_owned(), vec![new_kek_entry(1)]);
                changed = true;
            }
            if !file.index_keys.contains_key(region.as_str()) {
                file.index_keys.insert(region.as_str().to_owned(), new_kek_entry(0).key.clone());
                changed = true;
            }
        }
        if changed {
            let json = Zeroizing::new(serde_json::to_vec_pretty(&file).expect("keyring serializes"));
            crate::files::write_private(path, &json)?;
        }
        let mut loaded = HashMap::new();
        for (name, entries) in &file.regions {
            let region = Region::parse(name, "keyring region")?;
            let mut keks = Vec::new();
            for e in entries {
                let key = Zeroizing::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(&e.key)
                        .map_err(|_| LedgerError::Corrupt(format!("keyring key {name} v{} is not base64", e.version)))?,
                );
                if key.len() != 32 {
                    return Err(LedgerError::Corrupt(format!("keyring key {name} v{} is not 32 bytes", e.version)));
                }
                let cipher = Aes256Gcm::new_from_slice(&key).expect("32-byte key");
                keks.push(Kek { version: e.version, cipher });
            }
            keks.sort_by_key(|k| k.version);
            loaded.insert(region, keks);
        }
        let mut index_keys = HashMap::new();
        for (name, key) in &file.index_keys {
            let region = Region::parse(name, "keyring region")?;
            let bytes = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(key)
                    .map_err(|_| LedgerError::Corrupt(format!("keyring index key {name} is not base64")))?,
            );
            let key: [u8; 32] = bytes[..].try_into().map_err(|_| LedgerError::Corrupt(format!("keyring index key {name} is not 32 bytes")))?;
            index_keys.insert(region, Zeroizing::new(key));
        }
        Ok((Keyring { path: path.to_owned(), regions: loaded, index_keys }, changed))
    }

    fn read_file(&self) -> Result<KeyringFile, LedgerError> {
        let bytes = read_private_file(&self.path)?;
        serde_json::from_slice(&bytes).map_err(|e| LedgerError::Corrupt(format!("keyring {} is not valid: {e}", self.path.display())))
    }

    fn write_file(&self, file: &KeyringFile) -> Result<(), LedgerError> {
        let json = Zeroizing::new(serde_json::to_vec_pretty(file).expect("keyring serializes"));
        crate::files::write_private(&self.path, &json)
    }

    /// Adds a new KEK version for `region` (written to the file first, atomically) and makes it
    /// current: new data keys are wrapped under it. Returns the new version.
    pub fn rotate(&mut self, region: &Region) -> Result<u32, LedgerError> {
        let next = self.write_rotation(region)?;
        Ok(self.install(region, next))
    }

    /// The first half of a rotation: writes the region's next KEK version to the file (temporary
    /// file, fsync, rename) and returns it, without changing this keyring. It needs only `&self`,
    /// so callers hold a read lock, never a write lock, across the fsync; `install` then adds it.
    /// Two rotations must not run this at once (the caller serializes them).
    pub fn write_rotation(&self, region: &Region) -> Result<NextKek, LedgerError> {
        let mut file = self.read_file()?;
        let entries = file
            .regions
            .get_mut(region.as_str())
            .ok_or(LedgerError::Crypto("no key-encryption key for this region"))?;
        let version = entries.iter().map(|e| e.version).max().unwrap_or(0) + 1;
        let entry = new_kek_entry(version);
        let key = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(&entry.key).expect("just encoded"));
        let cipher = Aes256Gcm::new_from_slice(&key).expect("32-byte key");
        entries.push(entry);
        self.write_file(&file)?;
        Ok(NextKek(Kek { version, cipher }))
    }

    /// The second half of a rotation: makes the written version current. Returns it.
    pub fn install(&mut self, region: &Region, next: NextKek) -> u32 {
        let version = next.0.version;
        self.regions.entry(region.clone()).or_default().push(next.0);
        version
    }

    /// Removes KEK `version` of `region` from the file and from memory. The current version cannot
    /// be destroyed; the caller checks that no data key is still wrapped under `version`.
    pub fn destroy(&mut self, region: &Region, version: u32) -> Result<(), LedgerError> {
        self.write_destruction(region, version)?;
        self.forget(region, version);
        Ok(())
    }

    /// The first half of a destruction: checks `version` may go and removes it from the file
    /// (fsynced), leaving memory as it is; `&self`, so the caller holds only a read lock.
    pub fn write_destruction(&self, region: &Region, version: u32) -> Result<(), LedgerError> {
        if self.current_version(region) == Some(version) {
            return Err(LedgerError::invalid("version", "is the region's current key-encryption key; rotate first"));
        }
        if !self.versions(region).contains(&version) {
            return Err(LedgerError::NotFound { what: "key-encryption key version" });
        }
        let mut file = self.read_file()?;
        if let Some(entries) = file.regions.get_mut(region.as_str()) {
            entries.retain(|e| e.version != version);
        }
        self.write_file(&file)
    }

    /// The second half of a destruction: drops `version` from memory.
    pub fn forget(&mut self, region: &Region, version: u32) {
        if let Some(keks) = self.regions.get_mut(region) {
            keks.retain(|k| k.version != version);
        }
    }

    /// The blind index of `data` in `region`: HMAC-SHA256 under the region's index key. Rows keyed
    /// by it reveal nothing about the identifier without the key.
    pub fn blind(&self, region: &Region, data: &[u8]) -> Result<[u8; 32], LedgerError> {
        let key = self.index_keys.get(region).ok_or(LedgerError::Crypto("no blind-index key for this region"))?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key[..]).expect("HMAC takes any key length");
        mac.update(data);
        Ok(mac.finalize().into_bytes().into())
    }

    /// The KEK versions of `region`, oldest first.
    pub fn versions(&self, region: &Region) -> Vec<u32> {
        self.regions.get(region).map(|v| v.iter().map(|k| k.version).collect()).unwrap_or_default()
    }

    /// The current (newest) KEK version of `region`.
    pub fn current_version(&self, region: &Region) -> Option<u32> {
        self.regions.get(region).and_then(|v| v.last()).map(|k| k.version)
    }

    fn kek(&self, region: &Region, version: u32) -> Result<&Kek, LedgerError> {
        self.regions
            .get(region)
            .and_then(|v| v.iter().find(|k| k.version == version))
            .ok_or(LedgerError::Crypto("the key-encryption key version for this region is not in the keyring"))
    }

    /// Wraps `dek` for `customer` under the region's current KEK. Returns (KEK version, wrapped).
    pub fn wrap(&self, region: &Region, customer: CustomerId, dek: &[u8; 32]) -> Result<(u32, Vec<u8>), LedgerError> {
        self.wrap_with(&crate::env::SystemRng, region, customer, dek)
    }

    /// [`Keyring::wrap`] with the nonce drawn from `rng`.
    pub fn wrap_with(&self, rng: &dyn crate::env::Rng, region: &Region, customer: CustomerId, dek: &[u8; 32]) -> Result<(u32, Vec<u8>), LedgerError> {
        let version = self
            .current_version(region)
            .ok_or(LedgerError::Crypto("no key-encryption key for this region"))?;
        let kek = self.kek(region, version)?;
        let aad = wrap_aad(region, customer, version);
        let mut nonce = [0u8; NONCE_BYTES];
        rng.fill(&mut nonce);
        let ct = kek
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: dek, aad: &aad })
            .map_err(|_| LedgerError::Crypto("wrapping a data key failed"))?;
        let mut wrapped = Vec::with_capacity(WRAPPED_DEK_BYTES);
        wrapped.extend_from_slice(&nonce);
        wrapped.extend_from_slice(&ct);
        Ok((version, wrapped))
    }

    /// Unwraps a DEK stored for `customer` under KEK `version` of `region`.
    pub fn unwrap(&self, region: &Region, customer: CustomerId, version: u32, wrapped: &[u8]) -> Result<Zeroizing<[u8; 32]>, LedgerError> {
        if wrapped.len() != WRAPPED_DEK_BYTES {
            return Err(LedgerError::Corrupt("wrapped data key has the wrong length".into()));
        }
        let kek = self.kek(region, version)?;
        let aad = wrap_aad(region, customer, version);
        let (nonce, ct) = wrapped.split_at(NONCE_BYTES);
        let plain = Zeroizing::new(
            kek.cipher
                .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
                .map_err(|_| LedgerError::Crypto("unwrapping a data key failed"))?,
        );
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&plain);
        Ok(out)
    }
}

fn new_kek_entry(version: u32) -> KekFileEntry {
    let mut key = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut *key);
    KekFileEntry {
        version,
        created_unix_ms: UnixMillis::now().0,
        key: base64::engine::general_purpose::STANDARD.encode(&*key),
    }
}

fn wrap_aad(region: &Region, customer: CustomerId, version: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(DEK_WRAP_DOMAIN.len() + 16 + 1 + region.as_str().len() + 4);
    aad.extend_from_slice(DEK_WRAP_DOMAIN);
    aad.extend_from_slice(customer.as_bytes());
    aad.push(region.as_str().len() as u8);
    aad.extend_from_slice(region.as_str().as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

/// A fresh random data key.
pub fn generate_dek() -> Zeroizing<[u8; 32]> {
    let mut dek = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut *dek);
    dek
}

/// A fresh data key drawn from `rng`.
pub fn generate_dek_with(rng: &dyn crate::env::Rng) -> Zeroizing<[u8; 32]> {
    let mut dek = Zeroizing::new([0u8; 32]);
    rng.fill(&mut *dek);
    dek
}

/// A customer's unwrapped data key, ready to use. Never printed.
pub struct CustomerKey {
    /// The customer's region.
    pub region: Region,
    /// The data-key version events are encrypted under.
    pub key_version: u32,
    cipher: Aes256Gcm,
    mac_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for CustomerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomerKey").field("region", &self.region).field("key_version", &self.key_version).finish_non_exhaustive()
    }
}

impl CustomerKey {
    /// Builds the usable key from an unwrapped DEK.
    pub fn new(region: Region, key_version: u32, dek: &[u8; 32]) -> Self {
        // The idempotency MAC key is derived from the DEK, so content MACs become unlinkable to
        // any plaintext once the DEK is destroyed.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(dek).expect("hmac takes any key size");
        mac.update(MAC_KEY_DOMAIN);
        let mut mac_key = Zeroizing::new([0u8; 32]);
        mac_key.copy_from_slice(&mac.finalize().into_bytes());
        CustomerKey { region, key_version, cipher: Aes256Gcm::new_from_slice(dek).expect("32-byte key"), mac_key }
    }

    /// Encrypts `payload` with a random nonce and `aad`. Returns nonce || ciphertext || tag.
    pub fn seal(&self, aad: &[u8], payload: &[u8]) -> Result<Vec<u8>, LedgerError> {
        self.seal_with(&crate::env::SystemRng, aad, payload)
    }

    /// [`CustomerKey::seal`] with the nonce drawn from `rng`.
    pub fn seal_with(&self, rng: &dyn crate::env::Rng, aad: &[u8], payload: &[u8]) -> Result<Vec<u8>, LedgerError> {
        let mut out = Vec::with_capacity(NONCE_BYTES + payload.len() + TAG_BYTES);
        let mut nonce = [0u8; NONCE_BYTES];
        rng.fill(&mut nonce);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(payload);
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut out[NONCE_BYTES..])
            .map_err(|_| LedgerError::Crypto("encryption failed"))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Decrypts nonce || ciphertext || tag under `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, LedgerError> {
        if sealed.len() < NONCE_BYTES + TAG_BYTES {
            return Err(LedgerError::Corrupt("sealed payload is too short".into()));
        }
        let (nonce, rest) = sealed.split_at(NONCE_BYTES);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: rest, aad })
            .map_err(|_| LedgerError::Crypto("payload failed authentication"))
    }

    /// A MAC of an event's proposed content, for idempotency checks without storing a plain hash
    /// of personal data.
    pub fn content_mac(&self, content: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&*self.mac_key).expect("hmac takes any key size");
        mac.update(content);
        mac.finalize().into_bytes().into()
    }
}

/// A bounded, time-limited cache of unwrapped customer keys. Entries are evicted oldest first
/// when full and expire after the TTL. Dropping the last `Arc` of a `CustomerKey` zeroizes its key
/// material.
///
/// **Erasure cannot be undone by the cache.** The cache carries an erasure epoch, a counter the
/// writer thread advances (`erased`) right after an erasure's batch is synced and before it
/// answers, under the same lock that removes the customer's entry. A key is cached only by
/// `insert(customer, key, epoch)`, where `epoch` was taken *before* the caller loaded the rows it
/// unwrapped the key from; if any erasure advanced the epoch since, the insert is refused. So a
/// key loaded before an erasure can never be inserted after it, whatever the timing:
/// - epoch taken after the advance: the erasure's batch was already synced, so the caller's row
///   loads see the customer erased and there is no key to insert;
/// - epoch taken before, insert before the advance: the advance removes the entry;
/// - epoch taken before, insert after the advance: the epochs differ and the insert is refused.
///
/// A reader that already holds a key re-checks the epoch after decrypting (`unchanged_since`)
/// and, if it moved, the customer's state, so no payload decrypted after an erasure is answered.
/// The epoch is global rather than per customer: erasures are rare, and a global counter is one
/// atomic with no per-customer state to bound; an unrelated erasure costs a few readers one
/// re-check of a `customers` row.
pub struct KeyCache {
    inner: Mutex<KeyCacheInner>,
    /// Advanced only under `inner`'s lock, by `erased`; read without it by `epoch` and
    /// `unchanged_since`.
    epoch: AtomicU64,
    entries_max: usize,
    ttl: Duration,
}

/// A value of the cache's erasure epoch, taken before loading key rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epoch(u64);

struct KeyCacheInner {
    map: HashMap<CustomerId, (Arc<CustomerKey>, Instant)>,
    order: VecDeque<CustomerId>,
}

impl KeyCache {
    /// A cache of at most `entries_max` keys, each kept for at most `ttl`.
    pub fn new(entries_max: usize, ttl: Duration) -> Self {
        KeyCache {
            inner: Mutex::new(KeyCacheInner { map: HashMap::new(), order: VecDeque::new() }),
            epoch: AtomicU64::new(0),
            entries_max: entries_max.max(1),
            ttl,
        }
    }

    /// The current erasure epoch. Take it before loading the rows a key is unwrapped from.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(Ordering::Acquire))
    }

    /// Whether no erasure has completed since `epoch` was taken.
    pub fn unchanged_since(&self, epoch: Epoch) -> bool {
        self.epoch.load(Ordering::Acquire) == epoch.0
    }

    /// The cached key of `customer`, unless missing or expired.
    pub fn get(&self, customer: &CustomerId) -> Option<Arc<CustomerKey>> {
        let mut inner = self.inner.lock().expect("key cache lock");
        match inner.map.get(customer) {
            Some((key, at)) if at.elapsed() < self.ttl => Some(key.clone()),
            Some(_) => {
                inner.map.remove(customer);
                None
            }
            None => None,
        }
    }

    /// Caches `key` for `customer` unless an erasure completed since `since`, which must have
    /// been taken before the rows the key came from were read. Returns whether it was cached.
    pub fn insert(&self, customer: CustomerId, key: Arc<CustomerKey>, since: Epoch) -> bool {
        let mut inner = self.inner.lock().expect("key cache lock");
        if self.epoch.load(Ordering::Acquire) != since.0 {
            return false;
        }
        if inner.map.insert(customer, (key, Instant::now())).is_none() {
            inner.order.push_back(customer);
        }
        while inner.map.len() > self.entries_max {
            let Some(oldest) = inner.order.pop_front() else { break };
            inner.map.remove(&oldest);
        }
        // Keep the order queue from growing without bound through expired or purged entries.
        if inner.order.len() > 2 * self.entries_max {
            let KeyCacheInner { map, order } = &mut *inner;
            order.retain(|c| map.contains_key(c));
        }
        true
    }

    /// Records that `customer` was erased: advances the epoch and removes the entry in one step.
    /// Called by the writer after the erasure's batch is synced and before it answers.
    pub fn erased(&self, customer: &CustomerId) {
        let mut inner = self.inner.lock().expect("key cache lock");
        self.epoch.fetch_add(1, Ordering::AcqRel);
        inner.map.remove(customer);
    }

    /// Number of cached keys.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("key cache lock").map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The ledger's Ed25519 signing key (for tree heads and certificates), created on first start.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(public={})", hex::encode(self.0.verifying_key().as_bytes()))
    }
}

impl SigningKey {
    /// Opens an existing key; never creates one.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let bytes = read_private_file(path)?;
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| LedgerError::Corrupt(format!("signing key {} is not 32 bytes", path.display())))?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// Opens the key at `path`, creating it (0600) on first start. Returns it and whether it was created.
    pub fn open_or_create(path: &Path) -> Result<(Self, bool), LedgerError> {
        if path.exists() {
            Ok((Self::open(path)?, false))
        } else {
            let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
            let seed = Zeroizing::new(key.to_bytes());
            crate::files::write_private(path, seed.as_slice())?;
            Ok((SigningKey(key), true))
        }
    }

    /// The public key.
    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.0.verifying_key()
    }

    /// Signs `text` as a C2SP signed note under the key name `name`.
    pub fn sign_note(&self, text: &str, name: &str) -> String {
        crate::checkpoint::sign_note(text, name, &self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_round_trip_is_bound_to_customer_and_region() {
        let dir = tempfile::tempdir().unwrap();
        let eu = Region::parse("eu", "r").unwrap();
        let us = Region::parse("us", "r").unwrap();
        let path = dir.path().join("keyring.json");
        let (ring, created) = Keyring::open_or_create(&path, &[eu.clone(), us.clone()]).unwrap();
        assert!(created);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let c = CustomerId::new_random();
        let dek = generate_dek();
        let (v, wrapped) = ring.wrap(&eu, c, &dek).unwrap();
        assert_eq!(wrapped.len(), WRAPPED_DEK_BYTES);
        assert_eq!(*ring.unwrap(&eu, c, v, &wrapped).unwrap(), *dek);
        assert!(ring.unwrap(&us, c, v, &wrapped).is_err(), "another region's KEK must not unwrap");
        assert!(ring.unwrap(&eu, CustomerId::new_random(), v, &wrapped).is_err(), "bound to the customer");
        // Reopening yields the same keys; a world-readable keyring is refused.
        let (ring2, created2) = Keyring::open_or_create(&path, &[eu.clone()]).unwrap();
        assert!(!created2);
        assert_eq!(*ring2.unwrap(&eu, c, v, &wrapped).unwrap(), *dek);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Keyring::open_or_create(&path, &[eu]).is_err());
    }

    #[test]
    fn seal_open_binds_aad_and_debug_is_redacted() {
        let key = CustomerKey::new(Region::parse("eu", "r").unwrap(), 1, &generate_dek());
        let sealed = key.seal(b"header", b"hello").unwrap();
        assert_eq!(key.open(b"header", &sealed).unwrap(), b"hello");
        assert!(key.open(b"other", &sealed).is_err());
        let mut flipped = sealed.clone();
        flipped[NONCE_BYTES] ^= 1;
        assert!(key.open(b"header", &flipped).is_err());
        let debug = format!("{key:?}");
        assert!(!debug.contains("cipher") && !debug.contains("mac_key"), "{debug}");
    }

    #[test]
    fn cache_is_bounded() {
        let cache = KeyCache::new(3, Duration::from_secs(60));
        let region = Region::parse("eu", "r").unwrap();
        let ids: Vec<_> = (0..5).map(|_| CustomerId::new_random()).collect();
        for id in &ids {
            assert!(cache.insert(*id, Arc::new(CustomerKey::new(region.clone(), 1, &generate_dek())), cache.epoch()));
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&ids[0]).is_none() && cache.get(&ids[4]).is_some());
        cache.erased(&ids[4]);
        assert!(cache.get(&ids[4]).is_none());
        let expiring = KeyCache::new(3, Duration::from_millis(0));
        expiring.insert(ids[0], Arc::new(CustomerKey::new(region, 1, &generate_dek())), expiring.epoch());
        assert!(expiring.get(&ids[0]).is_none(), "a zero ttl expires at once");
    }

    #[test]
    fn a_key_loaded_before_an_erasure_is_never_cached_after_it() {
        let cache = KeyCache::new(8, Duration::from_secs(60));
        let region = Region::parse("eu", "r").unwrap();
        let (erased, other) = (CustomerId::new_random(), CustomerId::new_random());
        let before = cache.epoch();
        cache.erased(&erased);
        assert!(!cache.unchanged_since(before));
        let key = Arc::new(CustomerKey::new(region.clone(), 1, &generate_dek()));
        assert!(!cache.insert(erased, key.clone(), before), "an insert from before the erasure is refused");
        assert!(cache.get(&erased).is_none());
        // Any erasure refuses every insert from before it; a fresh epoch is accepted.
        assert!(!cache.insert(other, key.clone(), before));
        let now = cache.epoch();
        assert!(cache.unchanged_since(now));
        assert!(cache.insert(other, key, now));
        // An entry inserted before the erasure is removed by it.
        let key = Arc::new(CustomerKey::new(region, 1, &generate_dek()));
        assert!(cache.insert(erased, key, cache.epoch()));
        cache.erased(&erased);
        assert!(cache.get(&erased).is_none() && cache.get(&other).is_some());
    }
}
