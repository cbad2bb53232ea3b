//! The gRPC layer that authenticates every call (a client certificate or a bearer token),
//! checks the method's role and the principal's quota, and records every refusal in the access
//! trail.

use std::sync::Arc;
use std::task::{Context, Poll};

use ledger::access::AccessRecord;
use ledger::{ErrorCode, Ledger};
use tonic::Status;

use super::{access_for, Access, Principal, TokenStore};

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
    certs.first().map(|leaf| crate::security::tls::principal_from_certificate(leaf.as_ref()))
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
    quotas: Arc<crate::security::quota::Quotas>,
}

impl AuthLayer {
    /// A layer over `tokens` and client certificates, holding each principal to `quotas`, and
    /// recording refusals in `ledger`'s access trail.
    pub fn new(tokens: Arc<TokenStore>, ledger: Ledger, quotas: crate::serve::config::Quotas) -> Self {
        AuthLayer { state: Arc::new(AuthState { tokens, ledger, quotas: Arc::new(crate::security::quota::Quotas::new(quotas)) }) }
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
                crate::security::quota::Admit::Go(open) => open,
                crate::security::quota::Admit::Refused(quota) => {
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
            Ok(response.map(|body| tonic::body::Body::new(crate::security::quota::Counted::new(body, open))))
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
async fn record_coalesced(ledger: &Ledger, quotas: &crate::security::quota::Quotas, key: &str, record: AccessRecord, outcome: ErrorCode, reason: Option<String>) {
    match quotas.refusals.due(&format!("{outcome}|{key}")) {
        Some(count) => record_refusal(ledger, record.param("refused_calls", count), outcome, reason).await,
        None => metrics::counter!("ledger_auth_refusals_total", "outcome" => outcome.as_str()).increment(1),
    }
}

/// The answer to a call of `record`'s principal over its `quota`: the refusal recorded (a flood
/// must not become a flood of trail writes, so coalesced per principal and quota), then held for
/// [`crate::security::quota::REFUSAL_DELAY`], then `RESOURCE_EXHAUSTED`.
pub async fn over_quota(ledger: &Ledger, quotas: &crate::security::quota::Quotas, record: AccessRecord, quota: &'static str) -> Status {
    metrics::counter!("ledger_quota_refusals_total", "quota" => quota).increment(1);
    let status = ErrorCode::QuotaExceeded.status(format!("{} is over its {quota} quota; retry with backoff", record.principal));
    let key = format!("{}|{quota}", record.principal);
    record_coalesced(ledger, quotas, &key, record, ErrorCode::QuotaExceeded, Some(quota.to_owned())).await;
    tokio::time::sleep(crate::security::quota::REFUSAL_DELAY).await;
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
