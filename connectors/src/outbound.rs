//! Outbound messages: `send` checks the channel's rules (WhatsApp's 24-hour window), appends
//! `MessageQueued` and puts a reference in the durable outbox; the delivery worker reads the
//! queued event back (the content lives only in its encrypted payload), calls the provider, and
//! appends `MessageSent` (with the provider's id) or `MessageFailed` (with the provider's error).
//! Transient failures and rate limits (HTTP 429, WhatsApp 130429) retry with backoff; the per-number
//! send rate is held to `messages_per_second`. Entries survive restarts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledger::types::{Channel, CustomerId, Direction, EventId, Position, Region, UnixMillis};
use ledger::{EventFilter, LedgerError, Payload};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::config::{ConnectorsConfig, WhatsAppAccount};
use crate::error::ConnectorError;
use crate::ingest::{new_conversation, single_event, Event, Ingestor, CF_OUTBOX};

/// Longest wait between retries, in milliseconds.
const BACKOFF_MAX_MS: u64 = 60_000;
/// How often the worker looks at the outbox when nothing woke it, in milliseconds.
const OUTBOX_POLL_MS: u64 = 1_000;

/// What to send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Content {
    /// Free-form text.
    Text {
        /// The text.
        body: String,
    },
    /// An approved WhatsApp template.
    Template {
        /// Template name.
        name: String,
        /// Language code, e.g. `pt_BR`.
        language: String,
        /// Body parameters, in order.
        parameters: Vec<String>,
    },
}

/// A request to send a message.
#[derive(Clone, Debug)]
pub struct SendRequest {
    /// The customer.
    pub customer: CustomerId,
    /// The business account (WhatsApp `phone_number_id`).
    pub account: String,
    /// The recipient's `wa_id` or phone number; it must resolve to `customer`.
    pub to: String,
    /// The content.
    pub content: Content,
    /// The caller's idempotency key.
    pub request_id: String,
    /// Slack: the `thread_ts` to reply in.
    pub thread: Option<String>,
    /// Twilio: the business number to send from, when it is not the account's configured one;
    /// a reply goes from the number the customer wrote to (an inbound message's
    /// `business_address`).
    pub from: Option<String>,
    /// The recorded inbound message this answers, for senders that follow the log (the router).
    /// The conversation index is written just after an inbound append, so a reader of the log
    /// can see the message before the index does; the event itself is the authority for the
    /// conversation stream and the start of WhatsApp's window.
    pub reply_to: Option<ReplyTo>,
}

/// An inbound message, as recorded in the log.
#[derive(Clone, Debug)]
pub struct ReplyTo {
    /// Its conversation stream.
    pub stream: String,
    /// Its provider time (the event's `occurred_at`), in Unix milliseconds.
    pub inbound_ms: i64,
}

/// The `MessageQueued` payload (encrypted like every payload).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Queued {
    schema: u32,
    channel: String,
    account: String,
    to: String,
    content: Content,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    thread: Option<String>,
    /// Twilio: the sender (`whatsapp:+E164` or `+E164`); none means the account's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum OutboxState {
    Pending,
    Done,
}

/// An outbox row: where the queued event is and how delivery goes. No content, no address.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct OutboxEntry {
    position: u64,
    customer: CustomerId,
    region: String,
    account: String,
    state: OutboxState,
    attempts: u32,
    next_attempt_ms: i64,
}

/// How a delivery attempt went.
enum Attempt {
    Sent(String),
    Transient(String),
    RateLimited(String),
    Permanent(String),
}

/// Sends messages and runs the delivery worker.
pub struct Outbound {
    ingestor: Arc<Ingestor>,
    config: ConnectorsConfig,
    wake: Notify,
    /// Per account: the earliest time the next message may go, for `messages_per_second`.
    next_slot_ms: Mutex<HashMap<String, f64>>,
}

fn channel_err(reason: &str) -> ConnectorError {
    ConnectorError::Invalid { field: "content", reason: reason.to_owned() }
}

impl Outbound {
    /// The sender over `ingestor` (whose store holds the outbox).
    pub fn new(ingestor: Arc<Ingestor>, config: ConnectorsConfig) -> Arc<Self> {
        Arc::new(Outbound { ingestor, config, wake: Notify::new(), next_slot_ms: Mutex::new(HashMap::new()) })
    }

    fn account(&self, id: &str) -> Result<&WhatsAppAccount, ConnectorError> {
        self.config.whatsapp.iter().find(|a| a.phone_number_id == id).ok_or(ConnectorError::UnknownAccount("whatsapp"))
    }

    /// Queues a WhatsApp message. Free-form text outside the 24-hour window after the customer's
    /// last inbound message is refused: a template is required. Returns the queued event's id
    /// and position; a repeat of the same `request_id` returns the same event.
    pub async fn send(&self, req: SendRequest) -> Result<(EventId, Position), ConnectorError> {
        if let Some(slack) = self.config.slack.iter().find(|a| a.team_id == req.account) {
            return self.send_slack(slack.clone(), req).await;
        }
        if let Some(twilio) = self.config.twilio.iter().find(|a| a.account_sid == req.account) {
            return self.send_twilio(twilio.clone(), req).await;
        }
        let account = self.account(&req.account)?;
        let region = Region::parse(&account.region, "account region")?;
        let ledger = self.ingestor.ledger();
        let event_id = ledger.keyed_event_id(&region, "whatsapp-send", &req.request_id)?;
        match &req.content {
            Content::Text { body } if body.is_empty() || body.len() > 4096 => return Err(channel_err("text must be 1 to 4096 bytes")),
            Content::Template { name, language, .. } if name.is_empty() || language.is_empty() => {
                return Err(channel_err("a template needs a name and a language"));
            }
            _ => {}
        }
        // The recipient must be this customer (through the blind index).
        let ids = crate::identity::whatsapp(req.to.trim_start_matches('+'), &account.default_phone_region)?;
        match ledger.resolve_customer(&ids, &region, false).await? {
            Some((c, _)) if c == req.customer => {}
            _ => return Err(ConnectorError::Invalid { field: "to", reason: "does not belong to this customer".into() }),
        }
        let conversation = match req.reply_to {
            Some(r) => Some((r.stream, r.inbound_ms)),
            None => self.ingestor.conversation(req.customer, Channel::Whatsapp).await?,
        };
        if matches!(req.content, Content::Text { .. }) {
            let window_ms = i64::try_from(self.config.whatsapp_window_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
            let open = conversation.as_ref().is_some_and(|(_, last)| UnixMillis::now().0 - last <= window_ms);
            if !open {
                return Err(ConnectorError::WindowClosed);
            }
        }
        let stream = conversation.map_or_else(|| new_conversation("whatsapp"), |(s, _)| s);
        let payload = Queued { schema: 1, channel: "whatsapp".into(), account: req.account.clone(), to: req.to.clone(), content: req.content, thread: None, from: None };
        self.queue(req.customer, region, stream, event_id, Channel::Whatsapp, payload).await
    }

    /// Queues a Slack post to a channel (and thread). The customer must exist; `to` is a channel.
    async fn send_slack(&self, account: crate::config::SlackAccount, req: SendRequest) -> Result<(EventId, Position), ConnectorError> {
        let ledger = self.ingestor.ledger();
        let region = Region::parse(&account.region, "account region")?;
        if ledger.customer_region(req.customer)? != region {
            return Err(ConnectorError::Invalid { field: "customer_id", reason: "is not a customer of this workspace's region".into() });
        }
        if !matches!(req.content, Content::Text { .. }) {
            return Err(channel_err("Slack takes text, not templates"));
        }
        if req.to.is_empty() || !req.to.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ConnectorError::Invalid { field: "to", reason: "must be a Slack channel id".into() });
        }
        let event_id = ledger.keyed_event_id(&region, "slack-send", &req.request_id)?;
        let stream = match req.reply_to {
            Some(r) => r.stream,
            None => self.ingestor.conversation_or_new(req.customer, Channel::Slack, "slack").await?,
        };
        let payload = Queued { schema: 1, channel: "slack".into(), account: req.account, to: req.to, content: req.content, thread: req.thread, from: None };
        self.queue(req.customer, region, stream, event_id, Channel::Slack, payload).await
    }

    /// Queues a message through Twilio: an SMS, or a WhatsApp message when `to` is
    /// `whatsapp:+E164` (as Twilio writes a WhatsApp customer's number), so a customer who wrote
    /// on WhatsApp is answered on WhatsApp, from the number they wrote to. The recipient must be
    /// the customer's phone number. WhatsApp's 24-hour window applies to free-form text as it
    /// does on the Cloud API.
    async fn send_twilio(&self, account: crate::config::TwilioAccount, req: SendRequest) -> Result<(EventId, Position), ConnectorError> {
        let ledger = self.ingestor.ledger();
        let region = Region::parse(&account.region, "account region")?;
        let (whatsapp, number) = match req.to.strip_prefix("whatsapp:") {
            Some(n) => (true, n),
            None => (false, req.to.as_str()),
        };
        let Content::Text { body } = &req.content else { return Err(channel_err("Twilio takes text, not templates")) };
        let text_max = if whatsapp { 4096 } else { 1600 };
        if body.is_empty() || body.len() > text_max {
            return Err(channel_err(if whatsapp { "text must be 1 to 4096 bytes" } else { "text must be 1 to 1600 bytes" }));
        }
        let phone = crate::identity::phone(number, &account.default_phone_region)?;
        match ledger.resolve_customer(std::slice::from_ref(&phone), &region, false).await? {
            Some((c, _)) if c == req.customer => {}
            _ => return Err(ConnectorError::Invalid { field: "to", reason: "does not belong to this customer".into() }),
        }
        let (space, channel, name) = if whatsapp { ("whatsapp-send", Channel::Whatsapp, "whatsapp") } else { ("sms-send", Channel::Sms, "sms") };
        let event_id = ledger.keyed_event_id(&region, space, &req.request_id)?;
        let conversation = match req.reply_to {
            Some(r) => Some((r.stream, r.inbound_ms)),
            None => self.ingestor.conversation(req.customer, channel).await?,
        };
        if whatsapp {
            let window_ms = i64::try_from(self.config.whatsapp_window_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
            if !conversation.as_ref().is_some_and(|(_, last)| UnixMillis::now().0 - last <= window_ms) {
                return Err(ConnectorError::WindowClosed);
            }
        }
        let stream = conversation.map_or_else(|| new_conversation(name), |(s, _)| s);
        let to = if whatsapp { format!("whatsapp:{}", phone.value) } else { phone.value };
        let from = req.from.filter(|f| !f.is_empty());
        if let Some(f) = &from
            && f.starts_with("whatsapp:") != whatsapp
        {
            return Err(ConnectorError::Invalid { field: "from", reason: "must be on the same channel as to".into() });
        }
        let payload = Queued { schema: 1, channel: name.into(), account: req.account, to, content: req.content, thread: None, from };
        self.queue(req.customer, region, stream, event_id, channel, payload).await
    }

    /// Appends `MessageQueued` and writes the outbox row.
    async fn queue(&self, customer: CustomerId, region: Region, stream: String, event_id: EventId, channel: Channel, payload: Queued) -> Result<(EventId, Position), ConnectorError> {
        let ledger = self.ingestor.ledger();
        let account_id = payload.account.clone();
        let event = Event { customer, region: &region, stream: &stream, event_id, event_type: "MessageQueued", channel, direction: Direction::Outbound };
        let input = single_event(ledger, event, None, serde_json::to_vec(&payload).expect("serializes"), 1)?;
        let out = match ledger.append(input).await {
            Ok(out) => out,
            Err(LedgerError::DuplicateEventId { .. }) => return Err(ConnectorError::Invalid { field: "request_id", reason: "was used for another message".into() }),
            Err(e) => return Err(e.into()),
        };
        let exists = self.ingestor.on_db(move |db| Ok(db.get_cf(db.cf_handle(CF_OUTBOX).expect("cf"), event_id.as_bytes())?.is_some())).await?;
        if !out.idempotent_replay || !exists {
            let entry = OutboxEntry {
                position: out.first_position.0,
                customer,
                region: region.to_string(),
                account: account_id,
                state: OutboxState::Pending,
                attempts: 0,
                next_attempt_ms: UnixMillis::now().0,
            };
            self.store(event_id, &entry).await?;
            metrics::counter!("ledger_outbound_messages_total", "outcome" => "queued").increment(1);
        }
        self.wake.notify_one();
        Ok((event_id, out.first_position))
    }

    /// Runs the delivery worker until `shutdown` turns true.
    pub fn start(self: &Arc<Self>, shutdown: watch::Receiver<bool>) {
        let me = self.clone();
        tokio::spawn(async move { me.deliver_loop(shutdown).await });
    }

    async fn pending(&self) -> Result<Vec<(EventId, OutboxEntry)>, ConnectorError> {
        self.ingestor.on_db(Self::pending_in).await
    }

    fn pending_in(db: &rocksdb::DB) -> Result<Vec<(EventId, OutboxEntry)>, ConnectorError> {
        let cf = db.cf_handle(CF_OUTBOX).expect("cf");
        let mut out = Vec::new();
        for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (key, value) = item?;
            let Ok(entry) = serde_json::from_slice::<OutboxEntry>(&value) else { continue };
            if entry.state == OutboxState::Pending {
                let id = EventId(uuid::Uuid::from_slice(&key).map_err(|e| ConnectorError::Storage(e.to_string()))?);
                out.push((id, entry));
            }
        }
        Ok(out)
    }

    /// Writes an outbox row, synced, on a blocking thread.
    #[allow(clippy::disallowed_methods)]
    async fn store(&self, id: EventId, entry: &OutboxEntry) -> Result<(), ConnectorError> {
        let row = serde_json::to_vec(entry).expect("serializes");
        self.ingestor
            .on_db(move |db| {
                let mut opts = rocksdb::WriteOptions::default();
                opts.set_sync(true);
                Ok(db.put_cf_opt(db.cf_handle(CF_OUTBOX).expect("cf"), id.as_bytes(), row, &opts)?)
            })
            .await
    }

    async fn deliver_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let client = match reqwest::Client::builder().timeout(Duration::from_secs(10)).build() {
            Ok(c) => c,
            Err(e) => return tracing::error!(error = %e, "the outbound HTTP client could not be built"),
        };
        loop {
            let now = UnixMillis::now().0;
            let pending = self.pending().await.unwrap_or_else(|e| {
                tracing::error!(error = %e, "reading the outbound outbox failed");
                Vec::new()
            });
            let mut next_due = pending.iter().map(|(_, e)| e.next_attempt_ms).min();
            for (id, entry) in pending.into_iter().filter(|(_, e)| e.next_attempt_ms <= now) {
                if *shutdown.borrow() {
                    return;
                }
                match self.deliver(&client, id, entry).await {
                    Ok(Some(due)) => next_due = Some(next_due.map_or(due, |d| d.min(due))),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "an outbound delivery step failed; it will be retried"),
                }
            }
            let wait = next_due.map_or(OUTBOX_POLL_MS, |d| (d - UnixMillis::now().0).clamp(0, OUTBOX_POLL_MS as i64) as u64);
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Waits for the account's next send slot (`messages_per_second`).
    async fn pace(&self, account: &WhatsAppAccount) {
        let interval_ms = 1000.0 / f64::from(account.messages_per_second.max(1));
        let wait_ms = {
            let mut slots = self.next_slot_ms.lock().expect("slots");
            let now = UnixMillis::now().0 as f64;
            take_slot(slots.entry(account.phone_number_id.clone()).or_insert(now), now, interval_ms)
        };
        if wait_ms > 0.0 {
            tokio::time::sleep(Duration::from_micros((wait_ms * 1000.0) as u64)).await;
        }
    }

    /// One attempt: returns the next due time if the entry stays pending.
    async fn deliver(&self, client: &reqwest::Client, id: EventId, mut entry: OutboxEntry) -> Result<Option<i64>, ConnectorError> {
        let ledger = self.ingestor.ledger();
        // A decrypting read of the store: on a blocking thread.
        let reader = ledger.clone();
        let at = Position(entry.position);
        let (events, _) = tokio::task::spawn_blocking(move || reader.read_range(at, Position(at.0 + 1), 1, usize::MAX, &EventFilter::default()))
            .await
            .map_err(|_| ConnectorError::Storage("a blocking read task failed".into()))??;
        let event = events.into_iter().next().ok_or(ConnectorError::Storage("the queued event is missing".into()))?;
        let queued: Queued = match &event.payload {
            Payload::Available(p) => serde_json::from_slice(p).map_err(|e| ConnectorError::Storage(e.to_string()))?,
            // The customer was erased before delivery: nothing can (or may) be sent.
            _ => {
                let channel = event.header.channel;
                return self.finish(id, entry, &event.header.stream, channel, None, "customer erased before delivery").await.map(|_| None);
            }
        };
        let channel = match queued.channel.as_str() {
            "slack" => Channel::Slack,
            "sms" => Channel::Sms,
            _ => Channel::Whatsapp,
        };
        // Counted before it is made, so a crash mid-attempt still counts.
        entry.attempts += 1;
        let backoff = self.config.outbound_backoff_initial_ms.saturating_mul(1 << (entry.attempts - 1).min(16)).min(BACKOFF_MAX_MS);
        entry.next_attempt_ms = UnixMillis::now().0 + rand::thread_rng().gen_range(backoff / 2..=backoff.max(1)) as i64;
        self.store(id, &entry).await?;
        // The provider is the account's (a Twilio account sends SMS and WhatsApp alike); the
        // channel is the message's.
        let twilio = self.config.twilio.iter().find(|a| a.account_sid == queued.account);
        let attempt = if channel == Channel::Slack {
            let account = self.config.slack.iter().find(|a| a.team_id == queued.account).ok_or(ConnectorError::UnknownAccount("slack"))?;
            slack_send(client, account, &queued).await
        } else if let Some(account) = twilio {
            twilio_send(client, account, &queued).await
        } else if channel == Channel::Sms {
            return Err(ConnectorError::UnknownAccount("twilio"));
        } else {
            let account = self.account(&queued.account)?.clone();
            self.pace(&account).await;
            whatsapp_send(client, &account, &queued).await
        };
        let stream = event.header.stream.clone();
        match attempt {
            Attempt::Sent(provider_id) => self.finish(id, entry, &stream, channel, Some(provider_id), "").await.map(|_| None),
            Attempt::Permanent(why) => self.finish(id, entry, &stream, channel, None, &why).await.map(|_| None),
            Attempt::Transient(why) | Attempt::RateLimited(why) if entry.attempts >= self.config.outbound_attempts_max => {
                self.finish(id, entry, &stream, channel, None, &why).await.map(|_| None)
            }
            Attempt::RateLimited(why) => {
                metrics::counter!("ledger_outbound_messages_total", "outcome" => "rate_limited").increment(1);
                tracing::debug!(attempts = entry.attempts, error = %why, "outbound message rate-limited; backing off");
                Ok(Some(entry.next_attempt_ms))
            }
            Attempt::Transient(why) => {
                metrics::counter!("ledger_outbound_messages_total", "outcome" => "retry").increment(1);
                tracing::debug!(attempts = entry.attempts, error = %why, "outbound message failed; will retry");
                Ok(Some(entry.next_attempt_ms))
            }
        }
    }

    /// Appends `MessageSent` or `MessageFailed` (idempotently) and closes the outbox entry.
    async fn finish(&self, id: EventId, mut entry: OutboxEntry, stream: &str, channel: Channel, provider_id: Option<String>, error: &str) -> Result<(), ConnectorError> {
        let ledger = self.ingestor.ledger();
        let region = Region::parse(&entry.region, "region")?;
        if let Some(pid) = &provider_id {
            // Before the outcome is recorded, so a status callback racing it still links.
            let channel_name = match channel {
                Channel::Slack => "slack",
                Channel::Sms => "sms",
                _ => "whatsapp",
            };
            self.ingestor.record_sent(&region, channel_name, pid, id).await?;
        }
        let (event_type, payload) = match &provider_id {
            Some(pid) => ("MessageSent", serde_json::json!({ "schema": 1, "queued_event_id": id.to_string(), "provider_message_id": pid })),
            None => ("MessageFailed", serde_json::json!({ "schema": 1, "queued_event_id": id.to_string(), "error": error })),
        };
        let event_id = ledger.keyed_event_id(&region, "send-outcome", &id.to_string())?;
        let event = Event { customer: entry.customer, region: &region, stream, event_id, event_type, channel, direction: Direction::Outbound };
        let input = single_event(ledger, event, None, payload.to_string().into_bytes(), 1)?;
        match ledger.append(input).await {
            Ok(_) | Err(LedgerError::DuplicateEventId { .. }) => {}
            // An erased customer cannot get new events; the failure is the outcome.
            Err(LedgerError::CustomerErased { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        entry.state = OutboxState::Done;
        self.store(id, &entry).await?;
        let outcome = if provider_id.is_some() { "sent" } else { "failed" };
        metrics::counter!("ledger_outbound_messages_total", "outcome" => outcome).increment(1);
        Ok(())
    }
}

/// Takes the next send slot of a number whose next free slot is `slot` (ms), at time `now`, with
/// `interval_ms` between sends; returns how long to wait for it.
fn take_slot(slot: &mut f64, now: f64, interval_ms: f64) -> f64 {
    let start = slot.max(now);
    *slot = start + interval_ms;
    start - now
}

/// One Cloud API call: `POST {base}/{phone_number_id}/messages`.
async fn whatsapp_send(client: &reqwest::Client, account: &WhatsAppAccount, queued: &Queued) -> Attempt {
    let body = match &queued.content {
        Content::Text { body } => serde_json::json!({
            "messaging_product": "whatsapp", "recipient_type": "individual", "to": queued.to, "type": "text", "text": { "body": body }
        }),
        Content::Template { name, language, parameters } => serde_json::json!({
            "messaging_product": "whatsapp", "to": queued.to, "type": "template",
            "template": { "name": name, "language": { "code": language },
                "components": [{ "type": "body", "parameters": parameters.iter().map(|p| serde_json::json!({"type": "text", "text": p})).collect::<Vec<_>>() }] }
        }),
    };
    let url = format!("{}/{}/messages", account.api_base_url.trim_end_matches('/'), account.phone_number_id);
    let resp = match client.post(url).bearer_auth(account.access_token.expose()).json_body(&body).send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Attempt::Transient("timed out".into()),
        Err(_) => return Attempt::Transient("connection failed".into()),
    };
    let status = resp.status();
    let json: serde_json::Value = resp.json_value().await;
    if status.is_success() {
        return match json.pointer("/messages/0/id").and_then(serde_json::Value::as_str) {
            Some(id) => Attempt::Sent(id.to_owned()),
            None => Attempt::Transient("a 2xx without a message id".into()),
        };
    }
    let code = json.pointer("/error/code").and_then(serde_json::Value::as_i64);
    let what = format!("http {}{}", status.as_u16(), code.map_or_else(String::new, |c| format!(", error {c}")));
    match (status.as_u16(), code) {
        (_, Some(130429)) | (429, _) => Attempt::RateLimited(what),
        (500..=599, _) => Attempt::Transient(what),
        _ => Attempt::Permanent(what),
    }
}

/// One Slack Web API call: `POST {base}/chat.postMessage`, in the thread when one is given.
async fn slack_send(client: &reqwest::Client, account: &crate::config::SlackAccount, queued: &Queued) -> Attempt {
    let Content::Text { body } = &queued.content else { return Attempt::Permanent("slack takes text only".into()) };
    let mut payload = serde_json::json!({ "channel": queued.to, "text": body });
    if let Some(thread) = &queued.thread {
        payload["thread_ts"] = thread.clone().into();
    }
    let url = format!("{}/chat.postMessage", account.api_base_url.trim_end_matches('/'));
    let resp = match client.post(url).bearer_auth(account.bot_token.expose()).json_body(&payload).send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Attempt::Transient("timed out".into()),
        Err(_) => return Attempt::Transient("connection failed".into()),
    };
    let status = resp.status();
    let json = resp.json_value().await;
    if status.as_u16() == 429 {
        return Attempt::RateLimited("http 429".into());
    }
    if status.is_server_error() {
        return Attempt::Transient(format!("http {}", status.as_u16()));
    }
    match (json.get("ok").and_then(serde_json::Value::as_bool), json.get("ts").and_then(serde_json::Value::as_str)) {
        (Some(true), Some(ts)) => Attempt::Sent(format!("{}:{ts}", queued.to)),
        _ => {
            let error = json.get("error").and_then(serde_json::Value::as_str).unwrap_or("unknown").to_owned();
            if error == "ratelimited" { Attempt::RateLimited(error) } else { Attempt::Permanent(format!("slack error {error}")) }
        }
    }
}

/// One Twilio REST call: `POST {base}/2010-04-01/Accounts/{sid}/Messages.json`, form-encoded.
async fn twilio_send(client: &reqwest::Client, account: &crate::config::TwilioAccount, queued: &Queued) -> Attempt {
    let Content::Text { body } = &queued.content else { return Attempt::Permanent("sms takes text only".into()) };
    // WhatsApp through Twilio: both numbers carry the `whatsapp:` prefix.
    let from = match &queued.from {
        Some(f) => f.clone(),
        None if queued.to.starts_with("whatsapp:") => format!("whatsapp:{}", account.from_number),
        None => account.from_number.clone(),
    };
    let form = form_urlencoded::Serializer::new(String::new()).append_pair("To", &queued.to).append_pair("From", &from).append_pair("Body", body).finish();
    let url = format!("{}/2010-04-01/Accounts/{}/Messages.json", account.api_base_url.trim_end_matches('/'), account.account_sid);
    let resp = match client
        .post(url)
        .basic_auth(&account.account_sid, Some(account.auth_token.expose()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Attempt::Transient("timed out".into()),
        Err(_) => return Attempt::Transient("connection failed".into()),
    };
    let status = resp.status();
    let json = resp.json_value().await;
    if status.is_success() {
        return match json.get("sid").and_then(serde_json::Value::as_str) {
            Some(sid) => Attempt::Sent(sid.to_owned()),
            None => Attempt::Transient("a 2xx without a message sid".into()),
        };
    }
    let what = format!("http {}{}", status.as_u16(), json.get("code").and_then(serde_json::Value::as_i64).map_or_else(String::new, |c| format!(", error {c}")));
    match status.as_u16() {
        429 => Attempt::RateLimited(what),
        500..=599 => Attempt::Transient(what),
        _ => Attempt::Permanent(what),
    }
}

/// Small helpers so the crate needs no JSON feature of reqwest.
trait JsonBody {
    fn json_body(self, value: &serde_json::Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, value: &serde_json::Value) -> Self {
        self.header("content-type", "application/json").body(value.to_string())
    }
}

trait JsonValue {
    async fn json_value(self) -> serde_json::Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> serde_json::Value {
        self.bytes().await.ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At 80 messages/s, a burst gets slots 12.5 ms apart: the 81st waits a full second.
    #[test]
    fn sends_are_paced_to_the_per_number_rate() {
        let interval = 1000.0 / 80.0;
        let mut slot = 0.0;
        let waits: Vec<f64> = (0..81).map(|_| take_slot(&mut slot, 0.0, interval)).collect();
        assert_eq!(waits[0], 0.0);
        assert_eq!(waits[1], 12.5);
        assert_eq!(waits[80], 1000.0, "no more than 80 in any second");
        // An idle number does not bank slots: after a pause the next send goes at once.
        assert_eq!(take_slot(&mut slot, 5_000.0, interval), 0.0);
        assert_eq!(take_slot(&mut slot, 5_000.0, interval), 12.5);
    }
}
