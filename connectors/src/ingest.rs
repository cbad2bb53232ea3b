//! From a verified, parsed webhook to a durable event: the provider's id becomes the event id
//! (keyed, so a redelivery maps to the same event and is not written again), identity resolution
//! runs first, the message joins the customer's open conversation on its channel or opens one, and
//! the append is synced before the webhook is answered.
//!
//! The connectors keep a small RocksDB of their own under `<data_dir>/connectors`:
//! `conversations` (customer, channel -> open conversation and its last message time) and
//! `statuses` (keyed message id -> newest status), both derivable from the log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ledger::identity::Identifier;
use ledger::types::{Channel, CustomerId, Direction, Region, UnixMillis};
use ledger::{AppendInput, Ledger, LedgerError, NewEvent};
use rocksdb::{ColumnFamilyDescriptor, Options, DB};
use serde::{Deserialize, Serialize};

use crate::error::ConnectorError;
use crate::normalize::{Inbound, NormalizedMessage, RawIdentity};

const CF_CONVERSATIONS: &str = "conversations";
const CF_STATUSES: &str = "statuses";
/// Outbound messages waiting for delivery: event id -> `OutboxEntry` (no content: that stays in
/// the encrypted `MessageQueued` event, read back at delivery time).
pub(crate) const CF_OUTBOX: &str = "outbox";
/// Messages the ledger sent: keyed provider message id -> the `MessageQueued` event id, so status
/// callbacks link to the message they are about.
const CF_SENT: &str = "sent";

/// What happened to one inbound message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Appended now.
    Appended,
    /// Already in the ledger (a provider redelivery): nothing written.
    Duplicate,
}

#[derive(Serialize, Deserialize)]
struct Conversation {
    stream: String,
    last_ms: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct StatusView {
    status: String,
    provider_timestamp_ms: i64,
}

/// Status order for equal timestamps: a later stage wins.
fn rank(status: &str) -> u8 {
    match status {
        "queued" | "accepted" => 0,
        "sent" => 1,
        "delivered" => 2,
        "read" => 3,
        "failed" | "undelivered" => 4,
        _ => 0,
    }
}

/// A new conversation's stream name: opaque, never derived from who the customer is.
pub(crate) fn new_conversation(channel: &str) -> String {
    format!("conv.{channel}.{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

/// Where one connector event goes and what it is.
pub(crate) struct Event<'a> {
    pub customer: CustomerId,
    pub region: &'a Region,
    pub stream: &'a str,
    pub event_id: ledger::types::EventId,
    pub event_type: &'a str,
    pub channel: Channel,
    pub direction: Direction,
}

/// An append of one event with no metadata (everything about a message is in its payload).
pub(crate) fn single_event(ledger: &Ledger, e: Event<'_>, occurred_at: Option<UnixMillis>, payload: Vec<u8>, schema_version: u32) -> Result<AppendInput, ConnectorError> {
    Ok(AppendInput::single(e.customer, e.region.clone(), e.stream, e.event_type, &ledger.config().limits, |t| NewEvent {
        channel: e.channel,
        direction: e.direction,
        occurred_at,
        schema_version,
        ..NewEvent::internal(e.event_id, t, payload)
    })?)
}

/// Appends normalized messages to the ledger.
pub struct Ingestor {
    ledger: Ledger,
    /// Reached only through `on_db`, on a blocking thread: some of its writes are synced.
    pub(crate) db: Arc<DB>,
    conversation_gap_ms: i64,
    /// One lock per customer, so a conversation is chosen and extended by one message at a time.
    locks: CustomerLocks,
}

/// Idle per-customer locks kept before the map is pruned.
const LOCKS_MAX: usize = 100_000;

/// One async lock per customer, in a bounded map. Pruning drops only locks nobody holds or waits
/// for: every clone of a lock is taken under the map's mutex, so a lock whose `Arc` has no other
/// owner than the map is unused, and removing it can never hand a second lock to a customer
/// whose lock is held (clearing the whole map could, which let two first messages open two
/// conversations). The map holds at most `locks_max` idle locks plus those in use.
pub(crate) struct CustomerLocks {
    map: Mutex<HashMap<CustomerId, Arc<tokio::sync::Mutex<()>>>>,
    locks_max: usize,
}

impl CustomerLocks {
    pub(crate) fn new(locks_max: usize) -> Self {
        CustomerLocks { map: Mutex::new(HashMap::new()), locks_max }
    }

    /// The customer's lock; the same one for as long as anybody holds a clone of it.
    pub(crate) fn of(&self, customer: CustomerId) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= self.locks_max && !map.contains_key(&customer) {
            map.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        map.entry(customer).or_default().clone()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

impl Ingestor {
    /// Opens the connectors' store under `<data_dir>/connectors`.
    pub fn open(ledger: Ledger, conversation_gap_secs: u64) -> Result<Self, ConnectorError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let path = ledger.config().data_dir.join("connectors");
        let cfs = [CF_CONVERSATIONS, CF_STATUSES, CF_OUTBOX, CF_SENT].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = Arc::new(DB::open_cf_descriptors(&opts, path, cfs)?);
        Ok(Ingestor {
            ledger,
            db,
            conversation_gap_ms: i64::try_from(conversation_gap_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            locks: CustomerLocks::new(LOCKS_MAX),
        })
    }

    /// The ledger it appends to.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Runs `f` on the connectors' store on a blocking thread: RocksDB reads and (synced)
    /// writes never run on the async runtime's workers.
    pub(crate) async fn on_db<T: Send + 'static>(&self, f: impl FnOnce(&DB) -> Result<T, ConnectorError> + Send + 'static) -> Result<T, ConnectorError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db)).await.map_err(|_| ConnectorError::Storage("a blocking store task failed".into()))?
    }

    /// The customer's open conversation on `channel` and the provider time of their last inbound
    /// message on it.
    /// The customer's open conversation on `channel`, or a new stream for one.
    pub(crate) async fn conversation_or_new(&self, customer: CustomerId, channel: Channel, channel_name: &str) -> Result<String, ConnectorError> {
        Ok(self.conversation(customer, channel).await?.map_or_else(|| new_conversation(channel_name), |(s, _)| s))
    }

    pub(crate) async fn conversation(&self, customer: CustomerId, channel: Channel) -> Result<Option<(String, i64)>, ConnectorError> {
        let key = [customer.as_bytes().as_slice(), &[channel as u8]].concat();
        self.on_db(move |db| {
            let cf = db.cf_handle(CF_CONVERSATIONS).expect("cf");
            Ok(db.get_cf(cf, &key)?.and_then(|b| serde_json::from_slice::<Conversation>(&b).ok()).map(|c| (c.stream, c.last_ms)))
        })
        .await
    }

    pub(crate) fn lock_of(&self, customer: CustomerId) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.of(customer)
    }

    fn identifiers(identity: &RawIdentity, default_phone_region: &str) -> Result<Vec<Identifier>, ConnectorError> {
        match identity {
            RawIdentity::WhatsApp(wa_id) => crate::identity::whatsapp(wa_id, default_phone_region),
            RawIdentity::Phone(p) => Ok(vec![crate::identity::phone(p, default_phone_region)?]),
            RawIdentity::Slack(u) => crate::identity::parse(ledger::identity::IdentifierKind::Slack, u, default_phone_region),
            RawIdentity::Email(a) => Ok(vec![crate::identity::email(a)?]),
            RawIdentity::Teams(u) => crate::identity::parse(ledger::identity::IdentifierKind::Teams, u, default_phone_region),
        }
    }

    /// The idempotency key of a message: the provider's id (for a status: the id and the status).
    fn event_key(m: &NormalizedMessage) -> String {
        match &m.status {
            // Each status is reached once per message; Twilio's callbacks carry no time of their own.
            Some(s) => format!("status:{}:{}", m.provider_message_id, s.status),
            None => m.provider_message_id.clone(),
        }
    }

    /// Appends one inbound message (or status) for the account's region. Returns after the event
    /// is durable, or reports a duplicate.
    pub async fn ingest(&self, region: &Region, default_phone_region: &str, inbound: Inbound) -> Result<Outcome, ConnectorError> {
        let mut m = inbound.message;
        if m.kind == "status" {
            m.linked_event_id = self.sent_event(region, &m.channel, &m.provider_message_id).await?;
        }
        // An edit or a deletion links to the original message's event (its id is keyed on the
        // provider's id, so it is known whether or not the original has arrived yet).
        if let Some(original) = &m.edits {
            m.linked_event_id = Some(self.ledger.keyed_event_id(region, &m.channel, original)?.to_string());
        }
        let event_id = self.ledger.keyed_event_id(region, &m.channel, &Self::event_key(&m))?;
        if self.ledger.event_exists(event_id)? {
            metrics::counter!("ledger_webhook_messages_total", "outcome" => "duplicate").increment(1);
            return Ok(Outcome::Duplicate);
        }
        let ids = Self::identifiers(&inbound.identity, default_phone_region)?;
        let (customer, _) = self.ledger.resolve_customer(&ids, region, true).await?.expect("create is set");
        let lock = self.lock_of(customer);
        let _one_at_a_time = lock.lock().await;
        let channel = Channel::from_name(&m.channel);
        let conv_key = [customer.as_bytes().as_slice(), &[channel as u8]].concat();
        let key = conv_key.clone();
        let current: Option<Conversation> = self
            .on_db(move |db| Ok(db.get_cf(db.cf_handle(CF_CONVERSATIONS).expect("cf"), &key)?.and_then(|b| serde_json::from_slice(&b).ok())))
            .await?;
        let is_message = m.kind == "message";
        let stream = match &current {
            Some(c) if !is_message || m.provider_timestamp_ms - c.last_ms <= self.conversation_gap_ms => c.stream.clone(),
            _ => new_conversation(&m.channel),
        };
        let event_type = match m.kind.as_str() {
            "message" => "MessageReceived",
            "edit" => "MessageEdited",
            "delete" => "MessageDeleted",
            _ => "MessageStatusUpdated",
        };
        let direction = if m.direction == "inbound" { Direction::Inbound } else { Direction::Outbound };
        let input = single_event(
            &self.ledger,
            Event { customer, region, stream: &stream, event_id, event_type, channel, direction },
            Some(UnixMillis(m.provider_timestamp_ms)),
            serde_json::to_vec(&m).expect("serializes"),
            crate::normalize::SCHEMA_VERSION,
        )?;
        match self.ledger.append(input).await {
            Ok(_) => {}
            // A concurrent redelivery won the race (it may have picked another stream).
            Err(LedgerError::DuplicateEventId { .. }) => return Ok(Outcome::Duplicate),
            Err(e) => return Err(e.into()),
        }
        if is_message {
            let last_ms = current.as_ref().filter(|c| c.stream == stream).map_or(m.provider_timestamp_ms, |c| c.last_ms.max(m.provider_timestamp_ms));
            let row = serde_json::to_vec(&Conversation { stream, last_ms }).expect("serializes");
            self.on_db(move |db| Ok(db.put_cf(db.cf_handle(CF_CONVERSATIONS).expect("cf"), &conv_key, row)?)).await?;
        } else if let Some(s) = &m.status {
            self.record_status(region, &m, s).await?;
        }
        metrics::counter!("ledger_webhook_messages_total", "outcome" => "appended").increment(1);
        Ok(Outcome::Appended)
    }

    /// Keeps the newest status per message: by provider time, then by stage, so a late-arriving
    /// earlier status never replaces a later one.
    async fn record_status(&self, region: &Region, m: &NormalizedMessage, s: &crate::normalize::Status) -> Result<(), ConnectorError> {
        let key = self.ledger.keyed_event_id(region, &m.channel, &m.provider_message_id)?;
        let newer = StatusView { status: s.status.clone(), provider_timestamp_ms: m.provider_timestamp_ms };
        self.on_db(move |db| {
            let cf = db.cf_handle(CF_STATUSES).expect("cf");
            let keep = match db.get_cf(cf, key.as_bytes())?.and_then(|b| serde_json::from_slice::<StatusView>(&b).ok()) {
                Some(old) => (old.provider_timestamp_ms, rank(&old.status)) > (newer.provider_timestamp_ms, rank(&newer.status)),
                None => false,
            };
            if !keep {
                db.put_cf(cf, key.as_bytes(), serde_json::to_vec(&newer).expect("serializes"))?;
            }
            Ok(())
        })
        .await
    }

    /// Remembers that the provider knows the message queued as `queued` by `provider_message_id`.
    // The synced write runs in `on_db`, on a blocking thread.
    #[allow(clippy::disallowed_methods)]
    pub(crate) async fn record_sent(&self, region: &Region, channel: &str, provider_message_id: &str, queued: ledger::types::EventId) -> Result<(), ConnectorError> {
        let key = self.ledger.keyed_event_id(region, channel, provider_message_id)?;
        self.on_db(move |db| {
            let mut opts = rocksdb::WriteOptions::default();
            opts.set_sync(true);
            Ok(db.put_cf_opt(db.cf_handle(CF_SENT).expect("cf"), key.as_bytes(), queued.to_string(), &opts)?)
        })
        .await
    }

    async fn sent_event(&self, region: &Region, channel: &str, provider_message_id: &str) -> Result<Option<String>, ConnectorError> {
        let key = self.ledger.keyed_event_id(region, channel, provider_message_id)?;
        self.on_db(move |db| Ok(db.get_cf(db.cf_handle(CF_SENT).expect("cf"), key.as_bytes())?.map(|b| String::from_utf8_lossy(&b).into_owned()))).await
    }

    /// The newest status of a message the provider knows as `provider_message_id`.
    pub fn message_status(&self, region: &Region, channel: &str, provider_message_id: &str) -> Result<Option<String>, ConnectorError> {
        let key = self.ledger.keyed_event_id(region, channel, provider_message_id)?;
        let cf = self.db.cf_handle(CF_STATUSES).expect("cf");
        Ok(self.db.get_cf(cf, key.as_bytes())?.and_then(|b| serde_json::from_slice::<StatusView>(&b).ok()).map(|v| v.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pruning the bounded lock map never hands out a second lock for a customer whose lock is
    /// held or awaited: the held lock survives pruning and is returned again.
    #[test]
    fn pruning_keeps_locks_in_use() {
        let locks = CustomerLocks::new(4);
        let busy = CustomerId::new_random();
        let held = locks.of(busy);
        let _guard = held.try_lock().unwrap();
        for _ in 0..64 {
            drop(locks.of(CustomerId::new_random()));
        }
        assert!(locks.len() <= 5, "idle locks are pruned: {}", locks.len());
        let again = locks.of(busy);
        assert!(Arc::ptr_eq(&held, &again), "a held lock was replaced: two messages could run at once");
        assert!(again.try_lock().is_err(), "the customer's lock is still held");
    }
}
