//! The erasure workflow, the outbox delivery worker and the purger.
//!
//! `erase` runs these steps; each is idempotent, so a repeat (or the resume after a restart) picks
//! up where a crash left off:
//! 1. check the customer exists here (its region is served); record the request in the erasure
//!    store and in the system stream `erasure.requests`;
//! 2. destroy the wrapped DEK and mark the customer erased (one synced ledger batch; the cached
//!    key is purged): from here the data is unreadable;
//! 3. enqueue a notification per downstream system in the outbox (same synced write as step 2's
//!    record update);
//! 4. sign a certificate over the current tree head and append it to `erasure.certificates`;
//! 5. wake the purger (flush and forced compaction, off the request path) and the delivery worker.

use std::sync::Arc;
use std::time::Duration;

use ledger::types::{CustomerId, EventId, Metadata, UnixMillis};
use ledger::Ledger;
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Mutex, Notify};

use crate::certificate::{Certificate, CERTIFICATE_STREAM, REQUEST_STREAM};
use crate::config::ErasureConfig;
use crate::error::ErasureError;
use crate::store::{ErasureDb, ErasureRecord, OutboxEntry, OutboxState};

/// Longest request id, legal basis or requested-by text, in bytes.
const FIELD_BYTES_MAX: usize = 128;
/// Outbox entries attempted per worker pass.
const DELIVERIES_PER_PASS: usize = 64;
/// How often the delivery worker looks at the outbox when nothing woke it, in milliseconds.
const OUTBOX_POLL_MS: u64 = 1_000;

/// A request to erase a customer.
#[derive(Clone, Debug)]
pub struct EraseRequest {
    /// The customer.
    pub customer: CustomerId,
    /// The caller's idempotency key: `[A-Za-z0-9._:-]`, 1 to 128 bytes.
    pub request_id: String,
    /// The legal basis, e.g. `gdpr-art17-1a`: printable ASCII, 1 to 128 bytes.
    pub legal_basis: String,
    /// Who asked (a staff or system identifier): printable ASCII, 1 to 128 bytes.
    pub requested_by: String,
}

/// Where one downstream notification stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// Acknowledged by a 2xx.
    Delivered,
    /// Out of attempts.
    DeadLetter,
}

/// One downstream system's notification, for status.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The downstream system's name.
    pub downstream: String,
    /// The `webhook-id`.
    pub webhook_id: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// When it was acknowledged, unix ms.
    pub delivered_at_ms: Option<i64>,
    /// When the next attempt is due, unix ms (pending only).
    pub next_attempt_ms: Option<i64>,
}

/// An erasure's certificate and progress.
#[derive(Clone, Debug)]
pub struct ErasureStatus {
    /// The request id.
    pub request_id: String,
    /// The customer.
    pub customer: CustomerId,
    /// The legal basis.
    pub legal_basis: String,
    /// Who asked.
    pub requested_by: String,
    /// When the request was recorded, unix ms.
    pub requested_at_ms: i64,
    /// When the data became unreadable, unix ms.
    pub unreadable_at_ms: Option<i64>,
    /// When the key's bytes were purged from the store's files, unix ms.
    pub purged_at_ms: Option<i64>,
    /// The signed certificate, once issued.
    pub certificate: Option<String>,
    /// SHA-256 of the destroyed key row, hex.
    pub key_fingerprint: Option<String>,
    /// Per downstream system.
    pub deliveries: Vec<Delivery>,
    /// Later request ids answered with this erasure.
    pub also_requested_as: Vec<String>,
}

/// The erasure service: workflow, outbox and purger, over one ledger.
pub struct Eraser {
    ledger: Ledger,
    /// Every call into it is a synced RocksDB write or a read: made on a blocking thread
    /// (`Eraser::store`), never on the async runtime.
    db: Arc<ErasureDb>,
    config: ErasureConfig,
    /// One erasure at a time: they are rare, and it keeps the steps' order simple.
    erasing: Mutex<()>,
    outbox_wake: Notify,
    purge_wake: Notify,
}

fn check_field(text: &str, field: &'static str, id_like: bool) -> Result<(), ErasureError> {
    let ok_char = |b: u8| if id_like { b.is_ascii_alphanumeric() || b"._:-".contains(&b) } else { (0x20..0x7f).contains(&b) };
    if text.is_empty() || text.len() > FIELD_BYTES_MAX || !text.bytes().all(ok_char) {
        let allowed = if id_like { "[A-Za-z0-9._:-]" } else { "printable ASCII" };
        return Err(ErasureError::Invalid { field, reason: format!("must be 1 to {FIELD_BYTES_MAX} bytes of {allowed}") });
    }
    Ok(())
}

/// A deterministic event id, so re-running a step appends nothing twice.
fn step_event_id(step: &str, customer: CustomerId) -> EventId {
    let digest = Sha256::new().chain_update(step.as_bytes()).chain_update(customer.as_bytes()).finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    EventId(uuid::Builder::from_random_bytes(bytes).into_uuid())
}

#[derive(Serialize)]
struct Notification<'a> {
    r#type: &'static str,
    timestamp: String,
    data: NotificationData<'a>,
}

#[derive(Serialize)]
struct NotificationData<'a> {
    customer_id: String,
    request_id: &'a str,
    region: &'a str,
    erased_at: String,
    key_fingerprint: &'a str,
    certificate: &'a str,
}

impl Eraser {
    /// Opens the erasure store under `<data_dir>/erasure`.
    pub fn open(ledger: Ledger, config: ErasureConfig) -> Result<Arc<Self>, ErasureError> {
        config.validate().map_err(|reason| ErasureError::Invalid { field: "erasure", reason })?;
        let db = Arc::new(ErasureDb::open(&ledger.config().data_dir.join("erasure"))?);
        Ok(Arc::new(Eraser { ledger, db, config, erasing: Mutex::new(()), outbox_wake: Notify::new(), purge_wake: Notify::new() }))
    }

    /// Runs `f` on the erasure store on a blocking thread: its writes are synced (an fsync each),
    /// which must not stall the async runtime's workers.
    async fn store<T: Send + 'static>(&self, f: impl FnOnce(&ErasureDb) -> Result<T, ErasureError> + Send + 'static) -> Result<T, ErasureError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db)).await.map_err(|_| ErasureError::Ledger(ledger::LedgerError::ShuttingDown))?
    }

    /// Starts the delivery worker and the purger, and resumes erasures a restart interrupted.
    /// Both tasks stop when `shutdown` turns true.
    pub fn start(self: &Arc<Self>, shutdown: watch::Receiver<bool>) {
        let (me, stop) = (self.clone(), shutdown.clone());
        tokio::spawn(async move { me.deliver_loop(stop).await });
        let (me, stop) = (self.clone(), shutdown);
        tokio::spawn(async move { me.purge_loop(stop).await });
        let me = self.clone();
        tokio::spawn(async move {
            let records = match me.store(|db| db.records()).await {
                Ok(r) => r,
                Err(e) => return tracing::error!(error = %e, "reading erasure records failed"),
            };
            for rec in records.into_iter().filter(|r| r.certificate.is_none()) {
                let req = EraseRequest {
                    customer: rec.customer,
                    request_id: rec.request_id.clone(),
                    legal_basis: rec.legal_basis.clone(),
                    requested_by: rec.requested_by.clone(),
                };
                tracing::info!(request_id = %rec.request_id, "resuming an interrupted erasure");
                if let Err(e) = me.erase(req).await {
                    tracing::error!(request_id = %rec.request_id, error = %e, "resuming an erasure failed");
                }
            }
            me.purge_wake.notify_one();
        });
    }

    /// Erases a customer (see the module docs for the steps) and returns the signed certificate.
    /// A repeat for the same customer returns the same certificate.
    pub async fn erase(&self, req: EraseRequest) -> Result<String, ErasureError> {
        check_field(&req.request_id, "request_id", true)?;
        check_field(&req.legal_basis, "legal_basis", false)?;
        check_field(&req.requested_by, "requested_by", false)?;
        if ledger::access::is_system_customer(req.customer) {
            return Err(ErasureError::Invalid { field: "customer_id", reason: "is the ledger's system customer".into() });
        }
        let _one_at_a_time = self.erasing.lock().await;
        let started = std::time::Instant::now();
        let id = req.request_id.clone();
        if let Some(existing) = self.store(move |db| db.customer_of(&id)).await? {
            if existing != req.customer {
                return Err(ErasureError::Invalid { field: "request_id", reason: "was already used for another customer".into() });
            }
        }
        let customer = req.customer;
        let mut rec = match self.store(move |db| db.record(customer)).await? {
            Some(mut rec) => {
                // A new request id for a customer already being (or already) erased is recorded
                // before it is answered, so `status` knows every request it accepted.
                if rec.request_id != req.request_id && !rec.also_requested_as.contains(&req.request_id) {
                    rec.also_requested_as.push(req.request_id.clone());
                    let stored = rec.clone();
                    self.store(move |db| db.put_record(&stored, &[])).await?;
                }
                if let Some(cert) = &rec.certificate {
                    return Ok(cert.clone());
                }
                rec
            }
            None => {
                // Refuse unknown customers and regions not served here before recording anything.
                let (l, c) = (self.ledger.clone(), req.customer);
                tokio::task::spawn_blocking(move || l.check_customer_readable(c)).await.map_err(|_| ledger::LedgerError::ShuttingDown)??;
                let rec = ErasureRecord {
                    request_id: req.request_id.clone(),
                    customer: req.customer,
                    legal_basis: req.legal_basis.clone(),
                    requested_by: req.requested_by.clone(),
                    requested_at_ms: UnixMillis::now().0,
                    region: None,
                    key_fingerprint: None,
                    unreadable_at_ms: None,
                    certificate: None,
                    certificate_tree_size: None,
                    purged_at_ms: None,
                    also_requested_as: Vec::new(),
                };
                let stored = rec.clone();
                self.store(move |db| db.put_record(&stored, &[])).await?;
                rec
            }
        };
        // 1. The request, in the log.
        let mut meta = Metadata::new();
        meta.insert("customer".into(), rec.customer.to_string());
        meta.insert("request_id".into(), rec.request_id.clone());
        let body = serde_json::json!({
            "request_id": rec.request_id, "customer_id": rec.customer.to_string(),
            "legal_basis": rec.legal_basis, "requested_by": rec.requested_by, "requested_at_ms": rec.requested_at_ms,
        });
        self.ledger
            .append_system(REQUEST_STREAM, "ErasureRequested", 1, step_event_id("erasure-request", rec.customer), meta.clone(), body.to_string().into_bytes())
            .await?;
        // 2. The key, destroyed; 3. the notifications, enqueued with the record of it.
        if rec.unreadable_at_ms.is_none() {
            let erased = self.ledger.erase_key(rec.customer).await?;
            rec.region = Some(erased.region.to_string());
            rec.key_fingerprint = Some(erased.fingerprint.map_or_else(|| "none".to_owned(), |f| hex::encode(f)));
            rec.unreadable_at_ms = Some(UnixMillis::now().0);
            let stored = rec.clone();
            self.store(move |db| db.put_record(&stored, &[])).await?;
            metrics::histogram!("ledger_erasure_unreadable_seconds").record(started.elapsed().as_secs_f64());
        }
        // 4. The certificate, over a head that includes the request.
        let (head, _) = self.ledger.signed_tree_head();
        let cert = Certificate {
            origin: self.ledger.origin(),
            request_id: rec.request_id.clone(),
            customer: rec.customer,
            region: rec.region.clone().unwrap_or_default(),
            legal_basis: rec.legal_basis.clone(),
            requested_by: rec.requested_by.clone(),
            key_fingerprint: rec.key_fingerprint.clone().unwrap_or_else(|| "none".into()),
            erased_at_ms: rec.unreadable_at_ms.expect("set above"),
            tree_size: head.size,
            tree_root: head.root,
        };
        let note = self.ledger.sign_note(&cert.to_text());
        let outbox = self.notifications(&rec, &note);
        rec.certificate = Some(note.clone());
        rec.certificate_tree_size = Some(head.size);
        self.ledger
            .append_system(CERTIFICATE_STREAM, "ErasureCertified", 1, step_event_id("erasure-certificate", rec.customer), meta, note.clone().into_bytes())
            .await?;
        let (stored, count) = (rec.clone(), outbox.len());
        self.store(move |db| db.put_record(&stored, &outbox)).await?;
        metrics::counter!("ledger_erasures_total").increment(1);
        tracing::info!(request_id = %rec.request_id, downstream = count, "customer erased; certificate issued");
        // 5. Purge and notify, off the request path.
        self.purge_wake.notify_one();
        self.outbox_wake.notify_one();
        Ok(note)
    }

    fn notifications(&self, rec: &ErasureRecord, certificate: &str) -> Vec<OutboxEntry> {
        let now = UnixMillis::now().0;
        self.config
            .downstream
            .iter()
            .map(|d| {
                let body = Notification {
                    r#type: "customer.erased",
                    timestamp: ledger::time::rfc3339_millis(now),
                    data: NotificationData {
                        customer_id: rec.customer.to_string(),
                        request_id: &rec.request_id,
                        region: rec.region.as_deref().unwrap_or_default(),
                        erased_at: ledger::time::rfc3339_millis(rec.unreadable_at_ms.unwrap_or(now)),
                        key_fingerprint: rec.key_fingerprint.as_deref().unwrap_or("none"),
                        certificate,
                    },
                };
                OutboxEntry {
                    id: format!("msg_erasure_{}_{}", rec.customer.0.simple(), d.name),
                    customer: rec.customer,
                    downstream: d.name.clone(),
                    body: serde_json::to_string(&body).expect("serializes"),
                    state: OutboxState::Pending,
                    attempts: 0,
                    next_attempt_ms: now,
                    last_error: None,
                    delivered_at_ms: None,
                }
            })
            .collect()
    }

    /// The status of an erasure, by request id (the first or any later one) or customer.
    pub async fn status(&self, request_id: Option<String>, customer: Option<CustomerId>) -> Result<ErasureStatus, ErasureError> {
        let me = self.db.clone();
        tokio::task::spawn_blocking(move || Self::status_in(&me, request_id.as_deref(), customer))
            .await
            .map_err(|_| ErasureError::Ledger(ledger::LedgerError::ShuttingDown))?
    }

    /// The customer a request id erased, if any. Blocking-free: runs on a blocking thread.
    pub async fn customer_of_request(&self, request_id: String) -> Result<Option<CustomerId>, ErasureError> {
        self.store(move |db| db.customer_of(&request_id)).await
    }

    fn status_in(db: &ErasureDb, request_id: Option<&str>, customer: Option<CustomerId>) -> Result<ErasureStatus, ErasureError> {
        let customer = match (request_id, customer) {
            (Some(id), _) => db.customer_of(id)?.ok_or(ErasureError::NotFound("request id"))?,
            (None, Some(c)) => c,
            (None, None) => return Err(ErasureError::Invalid { field: "request_id", reason: "or customer_id is required".into() }),
        };
        let rec = db.record(customer)?.ok_or(ErasureError::NotFound("customer"))?;
        let deliveries = db
            .outbox_of(customer)?
            .into_iter()
            .map(|e| Delivery {
                downstream: e.downstream,
                webhook_id: e.id,
                state: match e.state {
                    OutboxState::Pending => DeliveryState::Pending,
                    OutboxState::Delivered => DeliveryState::Delivered,
                    OutboxState::DeadLetter => DeliveryState::DeadLetter,
                },
                attempts: e.attempts,
                last_error: e.last_error,
                delivered_at_ms: e.delivered_at_ms,
                next_attempt_ms: (e.state == OutboxState::Pending).then_some(e.next_attempt_ms),
            })
            .collect();
        Ok(ErasureStatus {
            request_id: rec.request_id,
            customer,
            legal_basis: rec.legal_basis,
            requested_by: rec.requested_by,
            requested_at_ms: rec.requested_at_ms,
            unreadable_at_ms: rec.unreadable_at_ms,
            purged_at_ms: rec.purged_at_ms,
            certificate: rec.certificate,
            key_fingerprint: rec.key_fingerprint,
            deliveries,
            also_requested_as: rec.also_requested_as,
        })
    }

    /// Moves every dead letter back to pending with its attempts reset. Returns how many.
    pub async fn retry_dead_letters(&self) -> Result<u64, ErasureError> {
        let count = self
            .store(|db| {
                let mut count = 0;
                for mut e in db.outbox()?.into_iter().filter(|e| e.state == OutboxState::DeadLetter) {
                    e.state = OutboxState::Pending;
                    e.attempts = 0;
                    e.next_attempt_ms = UnixMillis::now().0;
                    db.put_outbox(&e)?;
                    count += 1;
                }
                Ok(count)
            })
            .await?;
        if count > 0 {
            tracing::info!(count, "dead letters queued again");
            self.outbox_wake.notify_one();
        }
        Ok(count)
    }

    /// The delay before attempt `attempts + 1`: doubling from `backoff_initial_ms`, capped, with
    /// jitter in its upper half so retries of many entries spread out.
    fn backoff_ms(&self, attempts: u32) -> u64 {
        let doubled = self.config.backoff_initial_ms.saturating_mul(1u64 << attempts.saturating_sub(1).min(40));
        let delay = doubled.min(self.config.backoff_max_ms).max(1);
        rand::thread_rng().gen_range(delay / 2..=delay)
    }

    async fn deliver_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let client = match reqwest::Client::builder().timeout(Duration::from_millis(self.config.request_timeout_ms)).build() {
            Ok(c) => c,
            Err(e) => return tracing::error!(error = %e, "the outbox's HTTP client could not be built; notifications are not sent"),
        };
        loop {
            let now = UnixMillis::now().0;
            let entries = match self.store(|db| db.outbox()).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(error = %e, "reading the outbox failed");
                    Vec::new()
                }
            };
            let pending: Vec<_> = entries.into_iter().filter(|e| e.state == OutboxState::Pending).collect();
            let mut next_due = pending.iter().map(|e| e.next_attempt_ms).min();
            for entry in pending.into_iter().filter(|e| e.next_attempt_ms <= now).take(DELIVERIES_PER_PASS) {
                if *shutdown.borrow() {
                    return;
                }
                if let Some(updated) = self.attempt(&client, entry).await {
                    if updated.state == OutboxState::Pending {
                        next_due = Some(next_due.map_or(updated.next_attempt_ms, |d| d.min(updated.next_attempt_ms)));
                    }
                }
            }
            let wait_ms = next_due.map_or(OUTBOX_POLL_MS, |d| (d - UnixMillis::now().0).clamp(0, OUTBOX_POLL_MS as i64) as u64);
            tokio::select! {
                _ = self.outbox_wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// One delivery attempt; the outcome is stored (synced) before the next one.
    async fn attempt(&self, client: &reqwest::Client, mut entry: OutboxEntry) -> Option<OutboxEntry> {
        let Some(target) = self.config.downstream.iter().find(|d| d.name == entry.downstream) else {
            // Removed from configuration: it stays pending until the system is configured again.
            return None;
        };
        // Count the attempt (and schedule its retry) before making it: if the process dies while
        // it is in flight, it still counts towards `attempts_max` and is retried after backoff.
        entry.attempts += 1;
        entry.next_attempt_ms = UnixMillis::now().0 + self.backoff_ms(entry.attempts) as i64;
        let stored = entry.clone();
        if let Err(e) = self.store(move |db| db.put_outbox(&stored)).await {
            tracing::error!(error = %e, "storing an outbox entry failed");
            return None;
        }
        let timestamp = UnixMillis::now().0 / 1000;
        let signature = crate::webhook::sign(target.secret.expose(), &entry.id, timestamp, entry.body.as_bytes());
        let result = client
            .post(&target.url)
            .header("content-type", "application/json")
            .header("webhook-id", &entry.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(entry.body.clone())
            .send()
            .await;
        let failure = match result {
            Ok(resp) if resp.status().is_success() => None,
            Ok(resp) => Some(format!("http status {}", resp.status().as_u16())),
            // The error's text can hold the URL (and a token in it): keep only its kind.
            Err(e) if e.is_timeout() => Some("timed out".to_owned()),
            Err(e) if e.is_connect() => Some("connection failed".to_owned()),
            Err(_) => Some("request failed".to_owned()),
        };
        match failure {
            None => {
                entry.state = OutboxState::Delivered;
                entry.delivered_at_ms = Some(UnixMillis::now().0);
                entry.last_error = None;
                metrics::counter!("ledger_erasure_notifications_total", "outcome" => "delivered").increment(1);
                tracing::info!(downstream = %entry.downstream, attempts = entry.attempts, "erasure notification acknowledged");
            }
            Some(why) if entry.attempts >= self.config.attempts_max => {
                entry.state = OutboxState::DeadLetter;
                entry.last_error = Some(why);
                metrics::counter!("ledger_erasure_notifications_total", "outcome" => "dead_letter").increment(1);
                tracing::warn!(downstream = %entry.downstream, attempts = entry.attempts, "erasure notification dead-lettered");
            }
            Some(why) => {
                tracing::debug!(downstream = %entry.downstream, attempts = entry.attempts, error = %why, "erasure notification failed; will retry");
                entry.last_error = Some(why);
                metrics::counter!("ledger_erasure_notifications_total", "outcome" => "retry").increment(1);
            }
        }
        let stored = entry.clone();
        if let Err(e) = self.store(move |db| db.put_outbox(&stored)).await {
            tracing::error!(error = %e, "storing an outbox entry failed");
            return None;
        }
        Some(entry)
    }

    async fn purge_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = self.purge_wake.notified() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let waiting: Vec<ErasureRecord> = match self.store(|db| db.records()).await {
                Ok(r) => r.into_iter().filter(|r| r.unreadable_at_ms.is_some() && r.purged_at_ms.is_none()).collect(),
                Err(e) => {
                    tracing::error!(error = %e, "reading erasure records failed");
                    continue;
                }
            };
            if waiting.is_empty() {
                continue;
            }
            let started = std::time::Instant::now();
            let ledger = self.ledger.clone();
            match tokio::task::spawn_blocking(move || ledger.purge_erased_keys()).await {
                Ok(Ok(())) => {
                    let done = UnixMillis::now().0;
                    let _one_at_a_time = self.erasing.lock().await;
                    let stored = self
                        .store(move |db| {
                            for mut rec in waiting {
                                // Re-read: the record may have moved on since.
                                if let Some(current) = db.record(rec.customer)? {
                                    rec = current;
                                }
                                rec.purged_at_ms = Some(done);
                                db.put_record(&rec, &[])?;
                            }
                            Ok(())
                        })
                        .await;
                    if let Err(e) = stored {
                        tracing::error!(error = %e, "storing a purge time failed");
                    }
                    metrics::histogram!("ledger_erasure_purge_seconds").record(started.elapsed().as_secs_f64());
                }
                Ok(Err(e)) => tracing::error!(error = %e, "purging erased keys from the store's files failed"),
                Err(_) => return,
            }
        }
    }
}
