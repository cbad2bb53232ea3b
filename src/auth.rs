//! Who may call what: principals, roles and region scopes; bearer tokens (stored only as
//! hashes, with an expiry, revocable); and the gRPC layer that authenticates every call, checks
//! the method's role, and records every refusal in the access trail.
//!
//! The method table is closed: a method the table does not name is refused, so a new RPC is
//! unreachable until someone decides who may call it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use ledger::access::AccessRecord;
use ledger::secret::Secret;
use ledger::types::UnixMillis;
use ledger::{ErrorCode, Ledger};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::Status;

/// What a principal may do. A method needs one of its roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Append events, resolve and link customers, send messages, act on conversations.
    Appender,
    /// Read and subscribe (decrypting), and the views.
    Reader,
    /// Tree heads, proofs, replay, the audit trail.
    Auditor,
    /// Erase, export, erasure status.
    Dpo,
    /// Keys, downstream registrations, projections.
    Admin,
}

impl Role {
    /// Every role, in order.
    pub const ALL: [Role; 5] = [Role::Appender, Role::Reader, Role::Auditor, Role::Dpo, Role::Admin];

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Appender => "appender",
            Role::Reader => "reader",
            Role::Auditor => "auditor",
            Role::Dpo => "dpo",
            Role::Admin => "admin",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Result<Role, String> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| format!("unknown role {s:?} (expected one of appender, reader, auditor, dpo, admin)"))
    }
}

/// An authenticated caller: a name, its roles, and the regions it may touch (`None`: all).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The name access records carry (a token's principal, or a certificate's common name).
    pub name: String,
    /// Its roles.
    pub roles: Vec<Role>,
    /// The regions it is scoped to; `None` for every region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<String>>,
}

impl Principal {
    /// Whether it holds one of `roles`.
    pub fn has_any(&self, roles: &[Role]) -> bool {
        roles.iter().any(|r| self.roles.contains(r))
    }

    /// Whether it may touch data of `region`.
    pub fn may(&self, region: &str) -> bool {
        self.regions.as_ref().is_none_or(|rs| rs.iter().any(|r| r == region))
    }

    /// Whether it is scoped to some regions only.
    pub fn scoped(&self) -> bool {
        self.regions.is_some()
    }
}

/// Who may call a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, unauthenticated (health checks).
    Open,
    /// Any authenticated principal (reflection).
    Authenticated,
    /// A principal with one of these roles.
    Roles(&'static [Role]),
}

/// Every gRPC method the server serves and who may call it.
pub const METHODS: &[(&str, Access)] = {
    use Access::{Authenticated, Open, Roles};
    use Role::{Admin, Appender, Auditor, Dpo, Reader};
    &[
        ("/grpc.health.v1.Health/Check", Open),
        ("/grpc.health.v1.Health/Watch", Open),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", Authenticated),
        ("/ledger.v1.Ledger/Append", Roles(&[Appender])),
        ("/ledger.v1.Ledger/ResolveCustomer", Roles(&[Appender])),
        ("/ledger.v1.Ledger/LinkIdentifier", Roles(&[Appender])),
        ("/ledger.v1.Ledger/ReadStream", Roles(&[Reader])),
        ("/ledger.v1.Ledger/ReadAll", Roles(&[Reader])),
        ("/ledger.v1.Ledger/Subscribe", Roles(&[Reader])),
        ("/ledger.v1.Audit/GetTreeHead", Roles(&[Auditor])),
        ("/ledger.v1.Audit/GetInclusionProof", Roles(&[Auditor])),
        ("/ledger.v1.Audit/GetConsistencyProof", Roles(&[Auditor])),
        ("/ledger.v1.Audit/Replay", Roles(&[Auditor])),
        ("/ledger.v1.Audit/ListLeafHashes", Roles(&[Auditor])),
        ("/ledger.v1.Audit/GetCustomerAuditTrail", Roles(&[Auditor, Dpo])),
        ("/ledger.v1.Privacy/EraseCustomer", Roles(&[Dpo])),
        ("/ledger.v1.Privacy/GetErasureStatus", Roles(&[Dpo])),
        ("/ledger.v1.Privacy/ExportCustomer", Roles(&[Dpo])),
        ("/ledger.v1.Privacy/ExportRegion", Roles(&[Dpo])),
        ("/ledger.v1.Privacy/RetryDeadLetters", Roles(&[Admin])),
        ("/ledger.v1.Admin/RotateRegionKey", Roles(&[Admin])),
        ("/ledger.v1.Admin/DestroyRegionKey", Roles(&[Admin])),
        ("/ledger.v1.Admin/ListRegionKeys", Roles(&[Admin])),
        ("/ledger.v1.Admin/GetProjectionStatus", Roles(&[Admin])),
        ("/ledger.v1.Admin/RebuildProjection", Roles(&[Admin])),
        ("/ledger.v1.Admin/CreateToken", Roles(&[Admin])),
        ("/ledger.v1.Admin/RevokeToken", Roles(&[Admin])),
        ("/ledger.v1.Admin/ListTokens", Roles(&[Admin])),
        ("/ledger.v1.Messaging/SendMessage", Roles(&[Appender])),
        ("/ledger.v1.Views/GetCustomerContext", Roles(&[Reader])),
        ("/ledger.v1.Views/CrmSyncStatus", Roles(&[Reader, Admin])),
        ("/ledger.v1.Views/GetConversation", Roles(&[Reader])),
        ("/ledger.v1.Views/ListQueue", Roles(&[Reader])),
        ("/ledger.v1.Views/Reroute", Roles(&[Appender])),
        ("/ledger.v1.Views/SetConversationState", Roles(&[Appender])),
    ]
};

/// Who may call the method at `path`; `None` for a method the table does not name.
pub fn access_for(path: &str) -> Option<Access> {
    METHODS.iter().find(|(p, _)| *p == path).map(|(_, a)| *a)
}

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
    fn as_str(self) -> &'static str {
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
        write_private(&self.path, &serde_json::to_vec_pretty(entries)?)
    }
}

/// Writes `bytes` to `path` (0600) through a synced temporary file and a rename.
/// Blocking (fsyncs): callers run it on a blocking thread.
#[allow(clippy::disallowed_methods)]
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().ok_or_else(|| anyhow::anyhow!("{} has no parent directory", path.display()))?;
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
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
    write_private(&path, format!("{}\n", token.expose()).as_bytes())?;
    Ok(Some(path))
}

/// The caller's network address, from the connection's info.
pub fn origin_of(extensions: &http::Extensions) -> String {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    extensions
        .get::<TcpConnectInfo>()
        .or_else(|| extensions.get::<TlsConnectInfo<TcpConnectInfo>>().map(|t| t.get_ref()))
        .and_then(|i| i.remote_addr)
        .map_or_else(|| "unknown".into(), |a| a.to_string())
}

/// The principal the verified client certificate of a mutual-TLS connection names, if the
/// connection has one.
fn certificate_principal(extensions: &http::Extensions) -> Option<Result<Principal, String>> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let certs = extensions.get::<TlsConnectInfo<TcpConnectInfo>>()?.peer_certs()?;
    certs.first().map(|leaf| crate::tls::principal_from_certificate(leaf.as_ref()))
}

/// The bearer token of a request, if it carries one.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    headers.get(http::header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// The method a request calls (`ledger.v1.Ledger/ReadStream`), as the layer saw it.
#[derive(Clone, Debug)]
pub struct Method(pub String);

/// The authentication and role check in front of every gRPC service.
#[derive(Clone)]
pub struct AuthLayer {
    state: Arc<AuthState>,
}

struct AuthState {
    tokens: Arc<TokenStore>,
    ledger: Ledger,
    quotas: Arc<crate::quota::Quotas>,
}

impl AuthLayer {
    /// A layer over `tokens` and client certificates, holding each principal to `quotas`, and
    /// recording refusals in `ledger`'s access trail.
    pub fn new(tokens: Arc<TokenStore>, ledger: Ledger, quotas: crate::config::Quotas) -> Self {
        AuthLayer { state: Arc::new(AuthState { tokens, ledger, quotas: Arc::new(crate::quota::Quotas::new(quotas)) }) }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth { inner, state: self.state.clone() }
    }
}

/// See [`AuthLayer`].
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    state: Arc<AuthState>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> tower_service::Service<http::Request<tonic::body::Body>> for Auth<S>
where
    S: tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        Box::pin(async move {
            let path = req.uri().path().to_owned();
            let action = path.trim_start_matches('/').to_owned();
            let access = access_for(&path);
            if access == Some(Access::Open) {
                return inner.call(req).await;
            }
            // A bearer token, when sent, names the caller; otherwise a verified client certificate.
            let principal = match bearer(req.headers()) {
                Some(token) => state.tokens.authenticate(token).map_err(|why| ("unauthenticated".to_owned(), why.as_str().to_owned())),
                None => match certificate_principal(req.extensions()) {
                    Some(from_certificate) => from_certificate.map_err(|why| ("unauthenticated".to_owned(), why)),
                    None => Err(("anonymous".to_owned(), "no credentials".to_owned())),
                },
            };
            let principal = match principal {
                Ok(p) => p,
                Err((who, why)) => {
                    // Only a refusal needs the origin; handlers take theirs from the request.
                    let origin = origin_of(req.extensions());
                    let status = ErrorCode::Unauthenticated.status(format!(
                        "{why}: send `authorization: Bearer <token>` or a client certificate (on a first start the server writes an admin token to <data_dir>/admin.token)"
                    ));
                    let key = format!("{}|{why}|{}", ip_of(&origin), known(access, &action));
                    return Ok(refused(&state, &key, AccessRecord::granted(&who, &action, &origin), ErrorCode::Unauthenticated, Some(why), status).await);
                }
            };
            let allowed = match access {
                Some(Access::Roles(roles)) => principal.has_any(roles),
                Some(Access::Authenticated) => true,
                Some(Access::Open) | None => false,
            };
            if !allowed {
                let need = match access {
                    Some(Access::Roles(roles)) => roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" or "),
                    _ => "a method this server names".into(),
                };
                let status = ErrorCode::PermissionDenied.status(format!("{} may not call {action}: it needs {need}", principal.name));
                let origin = origin_of(req.extensions());
                let key = format!("{}|{}", principal.name, known(access, &action));
                return Ok(refused(&state, &key, AccessRecord::granted(&principal.name, &action, &origin), ErrorCode::PermissionDenied, None, status).await);
            }
            let open = match state.quotas.admit(&principal.name) {
                crate::quota::Admit::Go(open) => open,
                crate::quota::Admit::Refused(quota) => {
                    let record = AccessRecord::granted(&principal.name, &action, &origin_of(req.extensions()));
                    return Ok(over_quota(&state.ledger, &state.quotas, record, quota).await.into_http());
                }
            };
            req.extensions_mut().insert(principal);
            req.extensions_mut().insert(Method(action));
            req.extensions_mut().insert(state.quotas.clone());
            // The call counts as open until its response body (a stream, perhaps) is finished.
            let mut response = inner.call(req).await?;
            with_registry_code(response.headers_mut());
            Ok(response.map(|body| tonic::body::Body::new(crate::quota::Counted::new(body, open))))
        })
    }
}

/// Gives a refusal that tonic answered by itself before any handler ran (a body over the size
/// limit, a timeout, a method no service has) the registry code of its gRPC status, so every
/// refusal carries one. Our handlers' refusals already do and are left alone.
fn with_registry_code(headers: &mut http::HeaderMap) {
    let Some(grpc) = headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok()) else { return };
    if grpc == 0 || headers.contains_key(proto::codes::METADATA_KEY) {
        return;
    }
    let code = ErrorCode::for_grpc_code(tonic::Code::from_i32(grpc));
    headers.insert(proto::codes::METADATA_KEY, http::HeaderValue::from_static(code.as_str()));
}

/// Records a refused call (no personal data: principal, method, origin, outcome) and answers it.
/// Refusals alike (`key`: the same client address or principal, reason and method) are recorded
/// at most once a second, the record counting them, so refusals cannot be turned into unbounded
/// growth of the log.
async fn refused(state: &AuthState, key: &str, record: AccessRecord, outcome: ErrorCode, reason: Option<String>, status: Status) -> http::Response<tonic::body::Body> {
    record_coalesced(&state.ledger, &state.quotas, key, record, outcome, reason).await;
    status.into_http()
}

/// Records a refusal, coalesced with those alike (`key`): the first at once, then at most one a
/// second counting the rest (`refused_calls`).
async fn record_coalesced(ledger: &Ledger, quotas: &crate::quota::Quotas, key: &str, record: AccessRecord, outcome: ErrorCode, reason: Option<String>) {
    match quotas.refusals.due(&format!("{outcome}|{key}")) {
        Some(count) => record_refusal(ledger, record.param("refused_calls", count), outcome, reason).await,
        None => metrics::counter!("ledger_auth_refusals_total", "outcome" => outcome.as_str()).increment(1),
    }
}

/// The answer to a call of `record`'s principal over its `quota`: the refusal recorded (a flood
/// must not become a flood of trail writes, so coalesced per principal and quota), then held for
/// [`crate::quota::REFUSAL_DELAY`], then `RESOURCE_EXHAUSTED`.
pub async fn over_quota(ledger: &Ledger, quotas: &crate::quota::Quotas, record: AccessRecord, quota: &'static str) -> Status {
    metrics::counter!("ledger_quota_refusals_total", "quota" => quota).increment(1);
    let status = ErrorCode::QuotaExceeded.status(format!("{} is over its {quota} quota; retry with backoff", record.principal));
    let key = format!("{}|{quota}", record.principal);
    record_coalesced(ledger, quotas, &key, record, ErrorCode::QuotaExceeded, Some(quota.to_owned())).await;
    tokio::time::sleep(crate::quota::REFUSAL_DELAY).await;
    status
}

/// The client's address without its port.
fn ip_of(origin: &str) -> &str {
    origin.rsplit_once(':').map_or(origin, |(ip, _)| ip)
}

/// The method, if the table names it: an unknown path is the caller's free text and must not
/// make every refusal a new key.
fn known<'a>(access: Option<Access>, action: &'a str) -> &'a str {
    if access.is_some() { action } else { "<unknown method>" }
}

/// Appends the access record of a refusal with `outcome` (and why, when the caller may not be
/// told). A trail that cannot be written is logged; the call is refused either way.
pub async fn record_refusal(ledger: &Ledger, mut record: AccessRecord, outcome: ErrorCode, reason: Option<String>) {
    record.outcome = outcome.as_str().to_owned();
    if let Some(reason) = reason {
        record = record.param("reason", reason);
    }
    metrics::counter!("ledger_auth_refusals_total", "outcome" => outcome.as_str()).increment(1);
    if let Err(e) = ledger.record_access(&record).await {
        tracing::warn!(action = %record.action, error = %e, "access record of a refused call could not be written");
    }
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

    #[test]
    fn every_method_is_named_once_and_region_scopes_hold() {
        let mut paths: Vec<&str> = METHODS.iter().map(|(p, _)| *p).collect();
        paths.sort_unstable();
        let n = paths.len();
        paths.dedup();
        assert_eq!(paths.len(), n);
        assert_eq!(access_for("/ledger.v1.Ledger/Nope"), None);
        let p = Principal { name: "x".into(), roles: vec![Role::Dpo], regions: Some(vec!["eu".into()]) };
        assert!(p.may("eu") && !p.may("us"));
    }
}
