//! Bearer tokens: stored only as hashes, with an expiry, revocable; and the admin token a first
//! start writes for the CLI on the server's own machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use ledger::secret::Secret;
use ledger::types::UnixMillis;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Principal, Role};

/// Why a token was not accepted. The caller learns only that it was not; the access trail
/// learns which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No token with this hash.
    Unknown,
    /// Past its expiry.
    Expired,
    /// Revoked.
    Revoked,
}

impl TokenRefusal {
    /// What the access trail records for this refusal.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRefusal::Unknown => "unknown token",
            TokenRefusal::Expired => "expired token",
            TokenRefusal::Revoked => "revoked token",
        }
    }
}

/// A stored token: its hash, never the token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenEntry {
    /// A short public id (the first 12 hex digits of the hash), to list and revoke by.
    pub id: String,
    /// Whom it authenticates.
    pub principal: Principal,
    /// When it was made (Unix ms).
    pub created_ms: i64,
    /// When it stops working (Unix ms); `None`: never.
    #[serde(default)]
    pub expires_ms: Option<i64>,
    /// When it was revoked (Unix ms).
    #[serde(default)]
    pub revoked_ms: Option<i64>,
}

/// The token prefix: makes a leaked token easy to find with secret scanners.
pub const TOKEN_PREFIX: &str = "ldg_";

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Bearer tokens, as SHA-256 hashes in a 0600 JSON file (`<data_dir>/auth/tokens.json`),
/// rewritten atomically on every change. Tokens are 256 random bits, so a fast hash is enough.
pub struct TokenStore {
    path: PathBuf,
    entries: RwLock<BTreeMap<String, TokenEntry>>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl TokenStore {
    /// Opens (or starts) the store at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let entries = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        };
        Ok(TokenStore { path: path.to_owned(), entries: RwLock::new(entries) })
    }

    /// Whether it holds no token at all (a first start).
    pub fn is_empty(&self) -> bool {
        self.entries.read().expect("tokens").is_empty()
    }

    /// The principal `token` authenticates, now.
    pub fn authenticate(&self, token: &str) -> Result<Principal, TokenRefusal> {
        let entries = self.entries.read().expect("tokens");
        let entry = entries.get(&token_hash(token)).ok_or(TokenRefusal::Unknown)?;
        if entry.revoked_ms.is_some() {
            return Err(TokenRefusal::Revoked);
        }
        if entry.expires_ms.is_some_and(|e| UnixMillis::now().0 >= e) {
            return Err(TokenRefusal::Expired);
        }
        Ok(entry.principal.clone())
    }

    /// Makes a token for `principal`, valid for `ttl_ms` (or forever); returns its entry and the
    /// token itself, which is not kept.
    pub fn create(&self, principal: Principal, ttl_ms: Option<i64>) -> anyhow::Result<(TokenEntry, Secret)> {
        anyhow::ensure!(!principal.name.is_empty() && principal.name.len() <= 128, "a principal name is 1 to 128 bytes");
        anyhow::ensure!(!principal.roles.is_empty(), "a token needs at least one role");
        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        let token = format!("{TOKEN_PREFIX}{}", hex::encode(raw));
        let hash = token_hash(&token);
        let now = UnixMillis::now().0;
        let entry = TokenEntry { id: hash[..12].to_owned(), principal, created_ms: now, expires_ms: ttl_ms.map(|t| now.saturating_add(t)), revoked_ms: None };
        let mut entries = self.entries.write().expect("tokens");
        entries.insert(hash, entry.clone());
        self.save(&entries)?;
        Ok((entry, Secret::new(token)))
    }

    /// Revokes the token with public id `id`; false if there is none.
    pub fn revoke(&self, id: &str) -> anyhow::Result<bool> {
        let mut entries = self.entries.write().expect("tokens");
        let Some(entry) = entries.values_mut().find(|e| e.id == id) else { return Ok(false) };
        entry.revoked_ms.get_or_insert(UnixMillis::now().0);
        self.save(&entries)?;
        Ok(true)
    }

    /// Every token's entry (no hashes).
    pub fn list(&self) -> Vec<TokenEntry> {
        self.entries.read().expect("tokens").values().cloned().collect()
    }

    fn save(&self, entries: &BTreeMap<String, TokenEntry>) -> anyhow::Result<()> {
        Ok(ledger::files::write_private(&self.path, &serde_json::to_vec_pretty(entries)?)?)
    }
}
/// The admin token file of a data directory, which the CLI reads by itself.
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.token")
}

/// On a first start (no tokens at all), makes an admin token with every role and writes it to
/// `<data_dir>/admin.token` (0600). Returns the file's path if it made one.
pub fn bootstrap(store: &TokenStore, data_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    if !store.is_empty() {
        return Ok(None);
    }
    let (_, token) = store.create(Principal { name: "admin".into(), roles: Role::ALL.to_vec(), regions: None }, None)?;
    let path = admin_token_path(data_dir);
    ledger::files::write_private(&path, format!("{}\n", token.expose()).as_bytes())?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_as_hashes_and_expire_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth/tokens.json");
        let store = TokenStore::open(&path).unwrap();
        let p = Principal { name: "svc".into(), roles: vec![Role::Reader], regions: Some(vec!["eu".into()]) };
        let (entry, token) = store.create(p.clone(), None).unwrap();
        let (_, expired) = store.create(p.clone(), Some(-1)).unwrap();
        assert_eq!(store.authenticate(token.expose()).unwrap(), p);
        assert_eq!(store.authenticate(expired.expose()), Err(TokenRefusal::Expired));
        assert_eq!(store.authenticate("ldg_nope"), Err(TokenRefusal::Unknown));
        let bytes = std::fs::read_to_string(&path).unwrap();
        assert!(!bytes.contains(token.expose()) && bytes.contains(&token_hash(token.expose())));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // Reopened, the same; revoked, refused.
        let store = TokenStore::open(&path).unwrap();
        assert!(store.revoke(&entry.id).unwrap());
        assert_eq!(store.authenticate(token.expose()), Err(TokenRefusal::Revoked));
        assert!(!store.revoke("nosuchid").unwrap());
        assert!(format!("{:?}", store.list()).contains("svc") && !format!("{token:?}").contains(TOKEN_PREFIX));
    }
}
