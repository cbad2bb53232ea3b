//! CRM push and the CRM's webhook. Every inbound and outbound message becomes a CRM activity:
//! the `crm_outbox` column family gets a row per activity (customer, position, attempts: no
//! content) in the same batch as its checkpoint, and a delivery loop POSTs each one to the CRM
//! endpoint as JSON, signed the Standard Webhooks way, with the activity id (the message's event
//! id) as `webhook-id` and `Idempotency-Key` so the CRM can deduplicate a redelivery. The body is
//! decrypted from the log at send time; an activity whose customer was erased first is dropped.
//! Transient failures (network, 429, 5xx) retry with exponential backoff (honouring
//! `Retry-After`); other 4xx fail the activity. Requests are spaced to `requests_per_minute`.
//!
//! Coverage: the share of activities with an acknowledged CRM write,
//! `acknowledged / (activities - dropped_erased)`, kept in counter rows and exported as
//! `ledger_crm_coverage_ratio`.
//!
//! `/webhooks/crm` takes the CRM's events (a deal stage change, an appointment confirmation,
//! attributes such as `vip`) signed with `webhook_secret`, and appends them to the customer's
//! `crm` stream as `CrmEventReceived`, keyed by the CRM's webhook id (a redelivery is a no-op).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use ledger::types::{Channel, CustomerId, Direction, Position, UnixMillis};
use ledger::{EventFilter, Ledger, LedgerError, Payload, RecordedEvent};
use rand::Rng;
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use crate::crm::CRM_EVENT;
use crate::{ProjectionError, Runner, Tx, View};

/// The CRM outbox's column family (and checkpoint name).
pub const CRM_OUTBOX: &str = "crm_outbox";
const BACKOFF_MAX_MS: i64 = 300_000;
/// How old a CRM webhook's timestamp may be, in seconds.
const WEBHOOK_TOLERANCE_SECS: i64 = 300;

/// The `[crm]` configuration.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CrmConfig {
    /// Where activities are POSTed; empty: no CRM push.
    #[serde(default)]
    pub endpoint: String,
    /// The secret activities are signed with (`whsec_<base64>` or raw).
    #[serde(default)]
    pub signing_secret: ledger::secret::Secret,
    /// The secret the CRM signs `/webhooks/crm` with; empty: the endpoint refuses everything.
    #[serde(default)]
    pub webhook_secret: ledger::secret::Secret,
    /// At most this many requests a minute to the CRM.
    #[serde(default = "default_rpm")]
    pub requests_per_minute: u32,
    /// Per-request timeout, ms.
    #[serde(default = "default_timeout")]
    pub request_timeout_ms: u64,
    /// First retry delay, ms (doubling up to five minutes).
    #[serde(default = "default_backoff")]
    pub backoff_initial_ms: u64,
}

fn default_rpm() -> u32 {
    600
}
fn default_timeout() -> u64 {
    10_000
}
fn default_backoff() -> u64 {
    1_000
}

impl Default for CrmConfig {
    fn default() -> Self {
        CrmConfig {
            endpoint: String::new(),
            signing_secret: Default::default(),
            webhook_secret: Default::default(),
            requests_per_minute: default_rpm(),
            request_timeout_ms: default_timeout(),
            backoff_initial_ms: default_backoff(),
        }
    }
}

impl CrmConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), String> {
        if !self.endpoint.is_empty() {
            if !(self.endpoint.starts_with("https://") || self.endpoint.starts_with("http://")) {
                return Err("crm.endpoint must be an http(s) URL".into());
            }
            if self.signing_secret.expose().is_empty() {
                return Err("crm.signing_secret is required with crm.endpoint".into());
            }
        }
        if self.requests_per_minute == 0 {
            return Err("crm.requests_per_minute must be at least 1".into());
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Pending {
    customer: CustomerId,
    event_id: String,
    attempts: u32,
    next_attempt_ms: i64,
}

/// The CRM sync's counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CrmStatus {
    /// Whether an endpoint is configured.
    pub enabled: bool,
    /// Activities seen.
    pub activities: u64,
    /// Acknowledged by the CRM (2xx).
    pub acknowledged: u64,
    /// Refused by the CRM (4xx other than 429).
    pub failed: u64,
    /// Dropped because the customer was erased before delivery.
    pub dropped_erased: u64,
    /// Waiting for delivery.
    pub pending: u64,
    /// `acknowledged / (activities - dropped_erased)`; 1 when there were none.
    pub coverage: f64,
    /// The last delivery error (status and reason, no content).
    pub last_error: String,
}

const K_TOTAL: &[u8] = b"n:total";
const K_ACKED: &[u8] = b"n:acked";
const K_FAILED: &[u8] = b"n:failed";
const K_DROPPED: &[u8] = b"n:dropped";
const K_ERROR: &[u8] = b"n:error";

fn pending_key(position: u64) -> Vec<u8> {
    [b"p".as_slice(), &position.to_be_bytes()].concat()
}

fn read_u64(db: &rocksdb::DB, cf: &rocksdb::ColumnFamily, key: &[u8]) -> Result<u64, ProjectionError> {
    Ok(db.get_cf(cf, key)?.and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes))
}

/// Enqueues activities and delivers them.
pub struct CrmPush {
    ledger: Ledger,
    runner: Arc<Runner>,
    config: CrmConfig,
    /// Serializes counter updates between delivery steps.
    counters: Mutex<()>,
}

/// Enqueues an activity for every message (the `crm_outbox` view).
struct Enqueue;

impl View for Enqueue {
    fn name(&self) -> &'static str {
        CRM_OUTBOX
    }

    fn apply(&self, tx: &mut Tx<'_>, event: &RecordedEvent) -> Result<(), ProjectionError> {
        let h = &event.header;
        if ledger::access::is_system_customer(h.customer) {
            return Ok(());
        }
        let activity = match (h.event_type.as_str(), &event.payload) {
            ("MessageQueued", _) => true,
            ("MessageReceived", Payload::Available(p)) => serde_json::from_slice::<serde_json::Value>(p).is_ok_and(|v| v["kind"] == "message"),
            _ => false,
        };
        if !activity {
            return Ok(());
        }
        let total = tx.get(K_TOTAL)?.and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes);
        tx.put(K_TOTAL.to_vec(), (total + 1).to_be_bytes().to_vec());
        tx.put_json(pending_key(h.position.0), &Pending { customer: h.customer, event_id: h.event_id.to_string(), attempts: 0, next_attempt_ms: 0 });
        Ok(())
    }
}

enum Delivery {
    Acked,
    Retry(String, Option<i64>),
    Failed(String),
    Erased,
}

impl CrmPush {
    /// The CRM push over `runner`'s store (which must have the `crm_outbox` column family).
    pub fn new(ledger: Ledger, runner: Arc<Runner>, config: CrmConfig) -> Arc<Self> {
        Arc::new(CrmPush { ledger, runner, config, counters: Mutex::new(()) })
    }

    /// The counters.
    pub fn status(&self) -> Result<CrmStatus, ProjectionError> {
        let db = self.runner.db();
        let cf = db.cf_handle(CRM_OUTBOX).expect("crm_outbox column family");
        let mut pending = 0;
        for item in db.prefix_iterator_cf(cf, b"p") {
            let (k, _) = item?;
            if !k.starts_with(b"p") {
                break;
            }
            pending += 1;
        }
        let (activities, acknowledged) = (read_u64(db, cf, K_TOTAL)?, read_u64(db, cf, K_ACKED)?);
        let dropped_erased = read_u64(db, cf, K_DROPPED)?;
        let base = activities.saturating_sub(dropped_erased);
        Ok(CrmStatus {
            enabled: !self.config.endpoint.is_empty(),
            activities,
            acknowledged,
            failed: read_u64(db, cf, K_FAILED)?,
            dropped_erased,
            pending,
            coverage: if base == 0 { 1.0 } else { acknowledged as f64 / base as f64 },
            last_error: db.get_cf(cf, K_ERROR)?.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default(),
        })
    }

    /// Finishes an activity: removes its row and counts it, in one write.
    /// Blocking (a synced write): called on a blocking thread.
    #[allow(clippy::disallowed_methods)]
    fn finish(&self, position: u64, counter: &[u8], error: Option<&str>) -> Result<(), ProjectionError> {
        let _one = self.counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let db = self.runner.db();
        let cf = db.cf_handle(CRM_OUTBOX).expect("crm_outbox column family");
        let mut wb = WriteBatch::default();
        wb.delete_cf(cf, pending_key(position));
        wb.put_cf(cf, counter, (read_u64(db, cf, counter)? + 1).to_be_bytes());
        if let Some(e) = error {
            wb.put_cf(cf, K_ERROR, e.as_bytes());
        }
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        db.write_opt(wb, &opts)?;
        Ok(())
    }

    /// The activity's JSON, decrypted from the log; `None` if the customer was erased.
    fn body(&self, position: u64) -> Result<Option<(String, Vec<u8>)>, ProjectionError> {
        let (events, _) = self.ledger.read_range(Position(position), Position(position + 1), 1, usize::MAX, &EventFilter::default())?;
        let Some(ev) = events.into_iter().next() else { return Ok(None) };
        let Payload::Available(p) = &ev.payload else { return Ok(None) };
        let h = &ev.header;
        let v: serde_json::Value = serde_json::from_slice(p).unwrap_or_default();
        let inbound = h.direction == Direction::Inbound;
        let body = serde_json::json!({
            "activity_id": h.event_id.to_string(),
            "type": if inbound { "message.inbound" } else { "message.outbound" },
            "customer_id": h.customer.to_string(),
            "channel": h.channel.name(),
            "conversation": h.stream,
            "occurred_at": erasure::rfc3339_millis(h.occurred_at.0),
            "ledger_position": position,
            "text": if inbound { v["text"].clone() } else { v["content"]["body"].clone() },
            "subject": v["subject"],
            "sender_name": v["sender_name"],
            "template": if inbound { serde_json::Value::Null } else { v["content"]["name"].clone() },
        });
        Ok(Some((h.event_id.to_string(), serde_json::to_vec(&body).expect("serializes"))))
    }

    async fn attempt(&self, client: &reqwest::Client, position: u64) -> Result<Delivery, ProjectionError> {
        // One point read and decryption: short enough to run in place.
        let Some((id, body)) = tokio::task::block_in_place(|| self.body(position))? else { return Ok(Delivery::Erased) };
        let ts = UnixMillis::now().0 / 1000;
        let sig = erasure::webhook::sign(self.config.signing_secret.expose(), &id, ts, &body);
        let resp = client
            .post(&self.config.endpoint)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .header("idempotency-key", &id)
            .body(body)
            .send()
            .await;
        Ok(match resp {
            Ok(r) if r.status().is_success() => Delivery::Acked,
            Ok(r) => {
                let status = r.status();
                let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i64>().ok()).map(|s| s * 1000);
                let why = format!("http {}", status.as_u16());
                if status.as_u16() == 429 || status.is_server_error() || status.as_u16() == 408 { Delivery::Retry(why, retry_after) } else { Delivery::Failed(why) }
            }
            Err(e) => Delivery::Retry(if e.is_timeout() { "timeout".into() } else { "connection failed".into() }, None),
        })
    }

    /// Enqueues and delivers until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let client = match reqwest::Client::builder().timeout(Duration::from_millis(self.config.request_timeout_ms)).build() {
            Ok(c) => c,
            Err(e) => return tracing::error!(error = %e, "the CRM push's HTTP client could not be built; activities are not sent"),
        };
        let spacing = Duration::from_secs_f64(60.0 / f64::from(self.config.requests_per_minute));
        let mut next_send = tokio::time::Instant::now();
        let mut batches = self.ledger.subscribe_batches();
        loop {
            let r = self.runner.clone();
            match tokio::task::spawn_blocking(move || r.catch_up(&Enqueue)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "CRM outbox failed to enqueue; retrying"),
                Err(_) => return,
            }
            // Deliver what is due, oldest first, one request per spacing interval.
            let me = self.clone();
            let due = match tokio::task::spawn_blocking(move || me.due(UnixMillis::now().0, 256)).await.unwrap_or_else(|_| Err(ProjectionError::Ledger(LedgerError::ShuttingDown))) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "CRM outbox unreadable");
                    Vec::new()
                }
            };
            for (position, mut p) in due {
                if *shutdown.borrow() {
                    return;
                }
                tokio::time::sleep_until(next_send).await;
                next_send = tokio::time::Instant::now() + spacing;
                let outcome = match self.attempt(&client, position).await {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::error!(error = %e, "CRM activity could not be read");
                        break;
                    }
                };
                // The outbox writes are synced: on a blocking thread.
                let me = self.clone();
                let result = tokio::task::spawn_blocking(move || match outcome {
                    Delivery::Acked => {
                        metrics::counter!("ledger_crm_activities_total", "outcome" => "acknowledged").increment(1);
                        me.finish(position, K_ACKED, None)
                    }
                    Delivery::Erased => {
                        metrics::counter!("ledger_crm_activities_total", "outcome" => "dropped_erased").increment(1);
                        me.finish(position, K_DROPPED, None)
                    }
                    Delivery::Failed(why) => {
                        tracing::warn!(position, reason = %why, "CRM refused an activity");
                        metrics::counter!("ledger_crm_activities_total", "outcome" => "failed").increment(1);
                        me.finish(position, K_FAILED, Some(&why))
                    }
                    Delivery::Retry(why, after) => {
                        p.attempts += 1;
                        let exp = i64::try_from(me.config.backoff_initial_ms).unwrap_or(1000).saturating_mul(1 << p.attempts.min(16)).min(BACKOFF_MAX_MS);
                        let jitter = rand::thread_rng().gen_range(0..=exp / 4);
                        p.next_attempt_ms = UnixMillis::now().0 + after.unwrap_or(exp / 2 + jitter);
                        metrics::counter!("ledger_crm_activities_total", "outcome" => "retried").increment(1);
                        me.retry(position, &p, &why)
                    }
                })
                .await
                .unwrap_or_else(|_| Err(ProjectionError::Ledger(LedgerError::ShuttingDown)));
                if let Err(e) = result {
                    tracing::error!(error = %e, "CRM outbox write failed");
                }
            }
            if let Ok(s) = self.status() {
                metrics::gauge!("ledger_crm_coverage_ratio").set(s.coverage);
                metrics::gauge!("ledger_crm_pending").set(s.pending as f64);
            }
            if !crate::wait_for_commits(&mut batches, &mut shutdown, Duration::from_millis(250)).await {
                return;
            }
        }
    }

    fn due(&self, now_ms: i64, max: usize) -> Result<Vec<(u64, Pending)>, ProjectionError> {
        let db = self.runner.db();
        let cf = db.cf_handle(CRM_OUTBOX).expect("crm_outbox column family");
        let mut out = Vec::new();
        for item in db.prefix_iterator_cf(cf, b"p") {
            let (k, v) = item?;
            if !k.starts_with(b"p") || out.len() >= max {
                break;
            }
            let p: Pending = serde_json::from_slice(&v).map_err(|e| ProjectionError::Apply { view: CRM_OUTBOX, position: 0, reason: e.to_string() })?;
            if p.next_attempt_ms <= now_ms {
                out.push((u64::from_be_bytes(k[1..9].try_into().expect("8-byte position")), p));
            }
        }
        Ok(out)
    }

    fn retry(&self, position: u64, p: &Pending, why: &str) -> Result<(), ProjectionError> {
        let db = self.runner.db();
        let cf = db.cf_handle(CRM_OUTBOX).expect("crm_outbox column family");
        let mut wb = WriteBatch::default();
        wb.put_cf(cf, pending_key(position), serde_json::to_vec(p).expect("serializes"));
        wb.put_cf(cf, K_ERROR, why.as_bytes());
        Ok(db.write(wb)?)
    }
}

/// The CRM webhook's state.
#[derive(Clone)]
pub struct CrmWebhook {
    ledger: Ledger,
    config: CrmConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CrmEventIn {
    #[serde(rename = "type")]
    kind: String,
    customer_id: String,
    #[serde(default)]
    occurred_at_ms: Option<i64>,
    #[serde(default)]
    data: serde_json::Value,
}

/// `POST /webhooks/crm`.
pub fn crm_router(ledger: Ledger, config: CrmConfig) -> axum::Router {
    axum::Router::new().route("/webhooks/crm", post(crm_webhook)).with_state(CrmWebhook { ledger, config })
}

async fn crm_webhook(State(s): State<CrmWebhook>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    let secret = s.config.webhook_secret.expose();
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (id, ts, sig) = (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
    let Ok(ts) = ts.parse::<i64>() else { return (StatusCode::UNAUTHORIZED, "missing or bad webhook-timestamp".into()) };
    if secret.is_empty() || id.is_empty() || !erasure::webhook::verify(secret, &id, ts, &body, &sig) {
        metrics::counter!("ledger_webhook_rejected_total", "channel" => "crm", "reason" => "signature").increment(1);
        return (StatusCode::UNAUTHORIZED, "bad signature".into());
    }
    if (UnixMillis::now().0 / 1000 - ts).abs() > WEBHOOK_TOLERANCE_SECS {
        return (StatusCode::UNAUTHORIZED, "webhook-timestamp outside the 5-minute tolerance".into());
    }
    let ev: CrmEventIn = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let Ok(customer) = CustomerId::parse(&ev.customer_id, "customer_id") else { return (StatusCode::BAD_REQUEST, "customer_id must be a UUID".into()) };
    if ev.kind.is_empty() || ev.kind.len() > 128 {
        return (StatusCode::BAD_REQUEST, "type must be 1 to 128 bytes".into());
    }
    match append_crm_event(&s.ledger, customer, &id, ev).await {
        Ok(true) => (StatusCode::OK, "appended".into()),
        Ok(false) => (StatusCode::OK, "duplicate".into()),
        Err(LedgerError::NotFound { .. }) => (StatusCode::NOT_FOUND, "unknown customer".into()),
        Err(LedgerError::CustomerErased { .. }) => (StatusCode::GONE, "customer erased".into()),
        Err(e) => (StatusCode::from_u16(e.code().http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE), e.code().as_str().into()),
    }
}

async fn append_crm_event(ledger: &Ledger, customer: CustomerId, webhook_id: &str, ev: CrmEventIn) -> Result<bool, LedgerError> {
    let payload = serde_json::json!({ "schema": 1, "crm_event_id": webhook_id, "type": ev.kind, "data": ev.data });
    let id = crate::EventIdFor::Keyed { space: "crm", key: webhook_id };
    let occurred = ev.occurred_at_ms.map(UnixMillis);
    match crate::append_one(ledger, customer, "crm", Channel::Internal, Direction::Inbound, CRM_EVENT, id, occurred, serde_json::to_vec(&payload).expect("serializes")).await {
        Ok(out) => Ok(!out.idempotent_replay),
        Err(LedgerError::DuplicateEventId { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}
