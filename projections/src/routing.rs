//! The routing view: each conversation's state, intent, queue and escalation, folded from the
//! messages and from the decisions the router and agents wrote to the log (`ConversationTriaged`,
//! `ConversationEscalated`, `ConversationRerouted`, `ConversationStateChanged`). The state machine
//! is open -> triaged -> automated | awaiting_agent -> resolved -> closed, with abandoned after
//! inactivity; every transition is an event, so the history is auditable and a rebuild gives the
//! same rows whatever the rules say today.
//!
//! Rows (no message text, no identifiers): `c`‖customer‖stream -> `ConversationRow`;
//! `q`‖queue‖0‖opened‖customer‖stream -> "" for active conversations (ListQueue); `s`‖intent ->
//! `IntentStats` (the fallback rate); `x`‖customer marks an erased customer, whose rows are gone
//! and whose later events are ignored.

use ledger::types::{Channel, CustomerId, Direction};
use ledger::{Payload, RecordedEvent};
use rocksdb::DB;
use serde::{Deserialize, Serialize};

use crate::rules::{EscalationReason, Intent, ALL_INTENTS};
use crate::{erasure_of, ProjectionError, Tx, View};

/// The routing view's name.
pub const ROUTING_VIEW: &str = "routing";

/// A conversation's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationState {
    /// A message arrived; not yet triaged.
    Open,
    /// Classified (a transient step recorded in the history).
    Triaged,
    /// Handled without a person.
    Automated,
    /// Waiting in a queue for a person.
    AwaitingAgent,
    /// Answered.
    Resolved,
    /// Done.
    Closed,
    /// No activity for too long.
    Abandoned,
}

impl ConversationState {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationState::Open => "open",
            ConversationState::Triaged => "triaged",
            ConversationState::Automated => "automated",
            ConversationState::AwaitingAgent => "awaiting_agent",
            ConversationState::Resolved => "resolved",
            ConversationState::Closed => "closed",
            ConversationState::Abandoned => "abandoned",
        }
    }

    /// Whether the conversation still needs handling (it is in a queue).
    pub fn is_active(self) -> bool {
        matches!(self, ConversationState::Open | ConversationState::Triaged | ConversationState::Automated | ConversationState::AwaitingAgent)
    }

    /// Parses a state an agent may set.
    pub fn parse_settable(s: &str) -> Option<Self> {
        match s {
            "resolved" => Some(ConversationState::Resolved),
            "closed" => Some(ConversationState::Closed),
            "awaiting_agent" => Some(ConversationState::AwaitingAgent),
            _ => None,
        }
    }
}

/// `ConversationTriaged`: the router's classification and routing of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Triaged {
    /// Payload schema.
    pub schema: u32,
    /// The intent.
    pub intent: Intent,
    /// The queue.
    pub queue: String,
    /// `automated` or `awaiting_agent`.
    pub routed: ConversationState,
    /// The message that was classified.
    pub source_event_id: String,
}

/// `ConversationEscalated`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escalated {
    /// Payload schema.
    pub schema: u32,
    /// Why.
    pub reason: EscalationReason,
    /// The message that triggered it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_event_id: Option<String>,
}

/// `ConversationRerouted`: an agent's reclassification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rerouted {
    /// Payload schema.
    pub schema: u32,
    /// The new intent.
    pub intent: Intent,
    /// The new queue.
    pub queue: String,
    /// The agent.
    pub by: String,
    /// Why, in the agent's words.
    #[serde(default)]
    pub reason: String,
}

/// `ConversationStateChanged`: resolved or closed by an agent, abandoned by the router.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChanged {
    /// Payload schema.
    pub schema: u32,
    /// The new state.
    pub state: ConversationState,
    /// Who (`router` for abandonment).
    pub by: String,
}

/// The event types the router and agents write.
pub const TRIAGED: &str = "ConversationTriaged";
/// See [`Escalated`].
pub const ESCALATED: &str = "ConversationEscalated";
/// See [`Rerouted`].
pub const REROUTED: &str = "ConversationRerouted";
/// See [`StateChanged`].
pub const STATE_CHANGED: &str = "ConversationStateChanged";

/// One step of a conversation's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The state entered, or `escalated:<reason>` / `rerouted`.
    pub to: String,
    /// When (the event's time), unix ms.
    pub at_ms: i64,
    /// The event's position.
    pub position: u64,
    /// Who: `customer`, `router` or an agent.
    pub by: String,
}

/// A conversation as the routing view holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationRow {
    /// The customer.
    pub customer: CustomerId,
    /// The conversation's stream.
    pub stream: String,
    /// The channel.
    pub channel: String,
    /// The state.
    pub state: ConversationState,
    /// The intent, once triaged.
    pub intent: Option<Intent>,
    /// The queue, once triaged.
    pub queue: Option<String>,
    /// Whether it went to a person (counted in the fallback rate).
    pub human: bool,
    /// The escalation, if any.
    pub escalation: Option<EscalationReason>,
    /// When it opened, unix ms.
    pub opened_ms: i64,
    /// The customer's last message, unix ms.
    pub last_inbound_ms: i64,
    /// The last activity either way, unix ms.
    pub last_activity_ms: i64,
    /// Messages from the customer.
    pub inbound_count: u64,
    /// Every transition, in order.
    pub history: Vec<Transition>,
}

/// Per intent: conversations triaged to it and how many of those went to a person.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentStats {
    /// Conversations with this intent.
    pub conversations: u64,
    /// Of those, routed to a person.
    pub to_human: u64,
}

/// The routing view.
#[derive(Debug, Default)]
pub struct RoutingView;

fn conv_key(customer: CustomerId, stream: &str) -> Vec<u8> {
    [b"c".as_slice(), customer.as_bytes(), stream.as_bytes()].concat()
}

fn queue_key(queue: &str, row: &ConversationRow) -> Vec<u8> {
    [b"q".as_slice(), queue.as_bytes(), &[0], &row.opened_ms.to_be_bytes(), row.customer.as_bytes(), row.stream.as_bytes()].concat()
}

fn stats_key(intent: Intent) -> Vec<u8> {
    [b"s".as_slice(), intent.as_str().as_bytes()].concat()
}

pub(crate) fn erased_key(customer: CustomerId) -> Vec<u8> {
    [b"x".as_slice(), customer.as_bytes()].concat()
}


fn bump(tx: &mut Tx<'_>, intent: Intent, conversations: i64, to_human: i64) -> Result<(), ProjectionError> {
    let key = stats_key(intent);
    let mut s: IntentStats = tx.get_json(&key)?.unwrap_or_default();
    s.conversations = s.conversations.saturating_add_signed(conversations);
    s.to_human = s.to_human.saturating_add_signed(to_human);
    // A count back at zero is no row at all, as a rebuild that never saw it would leave it.
    if s == IntentStats::default() {
        tx.delete(key);
    } else {
        tx.put_json(key, &s);
    }
    Ok(())
}

/// Writes `row` back, keeping the queue index in step with its queue and state.
fn store(tx: &mut Tx<'_>, before: Option<&ConversationRow>, row: &ConversationRow) {
    if let Some(b) = before
        && let Some(q) = &b.queue
        && b.state.is_active()
    {
        tx.delete(queue_key(q, b));
    }
    if let Some(q) = &row.queue
        && row.state.is_active()
    {
        tx.put(queue_key(q, row), Vec::new());
    }
    tx.put_json(conv_key(row.customer, &row.stream), row);
}

/// Removes a customer's conversations (and their part of the counts) and marks them erased.
pub(crate) fn forget_customer(tx: &mut Tx<'_>, customer: CustomerId) -> Result<(), ProjectionError> {
    let prefix = [b"c".as_slice(), customer.as_bytes()].concat();
    for key in tx.keys_with_prefix(&prefix)? {
        let row: ConversationRow = tx.get_json(&key)?.ok_or_else(|| tx.corrupt("listed row vanished"))?;
        if let Some(q) = &row.queue
            && row.state.is_active()
        {
            tx.delete(queue_key(q, &row));
        }
        if let Some(intent) = row.intent {
            bump(tx, intent, -1, if row.human { -1 } else { 0 })?;
        }
        tx.delete(key);
    }
    tx.put(erased_key(customer), Vec::new());
    Ok(())
}

impl View for RoutingView {
    fn name(&self) -> &'static str {
        ROUTING_VIEW
    }

    fn apply(&self, tx: &mut Tx<'_>, event: &RecordedEvent) -> Result<(), ProjectionError> {
        let h = &event.header;
        if let Some(customer) = erasure_of(event) {
            return forget_customer(tx, customer);
        }
        let Payload::Available(payload) = &event.payload else { return Ok(()) };
        if h.channel == Channel::Internal && !h.event_type.starts_with("Conversation") {
            return Ok(());
        }
        if tx.get(&erased_key(h.customer))?.is_some() {
            return Ok(());
        }
        let position = h.position.0;
        let at = h.occurred_at.0;
        let key = conv_key(h.customer, &h.stream);
        let before: Option<ConversationRow> = tx.get_json(&key)?;
        let step = |to: &str, by: &str| Transition { to: to.to_owned(), at_ms: at, position, by: by.to_owned() };
        let mut row = match (h.event_type.as_str(), &before) {
            ("MessageReceived", _) if h.direction == Direction::Inbound => {
                if !crate::is_message(ROUTING_VIEW, payload) {
                    return Ok(());
                }
                match before.clone() {
                    Some(mut r) if r.state.is_active() => {
                        r.last_inbound_ms = r.last_inbound_ms.max(at);
                        r.last_activity_ms = r.last_activity_ms.max(at);
                        r.inbound_count += 1;
                        r
                    }
                    // A message on a finished conversation opens it again.
                    Some(mut r) => {
                        r.state = ConversationState::Open;
                        r.escalation = None;
                        r.last_inbound_ms = at;
                        r.last_activity_ms = r.last_activity_ms.max(at);
                        r.inbound_count += 1;
                        r.history.push(step("open", "customer"));
                        r
                    }
                    None => ConversationRow {
                        customer: h.customer,
                        stream: h.stream.clone(),
                        channel: h.channel.name().to_owned(),
                        state: ConversationState::Open,
                        intent: None,
                        queue: None,
                        human: false,
                        escalation: None,
                        opened_ms: at,
                        last_inbound_ms: at,
                        last_activity_ms: at,
                        inbound_count: 1,
                        history: vec![step("open", "customer")],
                    },
                }
            }
            ("MessageQueued" | "MessageSent", Some(r)) => {
                let mut r = r.clone();
                r.last_activity_ms = r.last_activity_ms.max(at);
                r
            }
            (TRIAGED, Some(r)) => {
                let Some(t) = crate::json::<Triaged>(ROUTING_VIEW, payload) else { return Ok(()) };
                let mut r = r.clone();
                if let Some(old) = r.intent {
                    bump(tx, old, -1, if r.human { -1 } else { 0 })?;
                }
                r.intent = Some(t.intent);
                r.queue = Some(t.queue);
                r.state = t.routed;
                r.human = t.routed == ConversationState::AwaitingAgent;
                bump(tx, t.intent, 1, i64::from(r.human))?;
                r.history.push(step("triaged", "router"));
                r.history.push(step(t.routed.as_str(), "router"));
                r
            }
            (ESCALATED, Some(r)) => {
                let Some(e) = crate::json::<Escalated>(ROUTING_VIEW, payload) else { return Ok(()) };
                let mut r = r.clone();
                r.escalation = Some(e.reason);
                r.history.push(step(&format!("escalated:{}", e.reason.as_str()), "router"));
                if r.state == ConversationState::Automated || r.state == ConversationState::Open {
                    r.state = ConversationState::AwaitingAgent;
                    r.history.push(step("awaiting_agent", "router"));
                }
                if !r.human
                    && let Some(intent) = r.intent
                {
                    bump(tx, intent, 0, 1)?;
                }
                r.human = true;
                r
            }
            (REROUTED, Some(r)) => {
                let Some(e) = crate::json::<Rerouted>(ROUTING_VIEW, payload) else { return Ok(()) };
                let mut r = r.clone();
                if let Some(old) = r.intent {
                    bump(tx, old, -1, if r.human { -1 } else { 0 })?;
                }
                r.intent = Some(e.intent);
                r.queue = Some(e.queue);
                r.human = true;
                bump(tx, e.intent, 1, 1)?;
                r.history.push(step("rerouted", &e.by));
                if r.state != ConversationState::AwaitingAgent {
                    r.state = ConversationState::AwaitingAgent;
                    r.history.push(step("awaiting_agent", &e.by));
                }
                r
            }
            (STATE_CHANGED, Some(r)) => {
                let Some(e) = crate::json::<StateChanged>(ROUTING_VIEW, payload) else { return Ok(()) };
                let mut r = r.clone();
                r.state = e.state;
                r.history.push(step(e.state.as_str(), &e.by));
                r
            }
            _ => return Ok(()),
        };
        row.last_activity_ms = row.last_activity_ms.max(at);
        store(tx, before.as_ref(), &row);
        Ok(())
    }
}

impl RoutingView {
    /// A conversation.
    pub fn conversation(db: &DB, customer: CustomerId, stream: &str) -> Result<Option<ConversationRow>, ProjectionError> {
        let cf = db.cf_handle(ROUTING_VIEW).expect("routing column family");
        Tx::new(db, cf, ROUTING_VIEW).get_json(&conv_key(customer, stream))
    }

    /// A customer's conversations, active ones first, then by when they opened.
    pub fn conversations_of(db: &DB, customer: CustomerId) -> Result<Vec<ConversationRow>, ProjectionError> {
        let cf = db.cf_handle(ROUTING_VIEW).expect("routing column family");
        let tx = Tx::new(db, cf, ROUTING_VIEW);
        let mut out = Vec::new();
        for key in tx.keys_with_prefix(&[b"c".as_slice(), customer.as_bytes()].concat())? {
            out.extend(tx.get_json::<ConversationRow>(&key)?);
        }
        out.sort_by_key(|r| (!r.state.is_active(), r.opened_ms));
        Ok(out)
    }

    /// Whether the view has seen the customer erased.
    pub fn is_erased(db: &DB, customer: CustomerId) -> Result<bool, ProjectionError> {
        let cf = db.cf_handle(ROUTING_VIEW).expect("routing column family");
        Ok(db.get_cf(cf, erased_key(customer))?.is_some())
    }

    /// Up to `max` active conversations in `queue`, oldest first.
    pub fn queue(db: &DB, queue: &str, max: usize) -> Result<Vec<ConversationRow>, ProjectionError> {
        let cf = db.cf_handle(ROUTING_VIEW).expect("routing column family");
        let tx = Tx::new(db, cf, ROUTING_VIEW);
        let prefix = [b"q".as_slice(), queue.as_bytes(), &[0]].concat();
        let mut out = Vec::new();
        for item in db.prefix_iterator_cf(cf, &prefix) {
            let (k, _) = item?;
            if !k.starts_with(&prefix) || out.len() >= max {
                break;
            }
            let rest = &k[prefix.len() + 8..];
            let customer = CustomerId(uuid::Uuid::from_bytes(rest[..16].try_into().map_err(|_| tx.corrupt("short queue key"))?));
            let stream = std::str::from_utf8(&rest[16..]).map_err(|_| tx.corrupt("queue key stream"))?;
            out.extend(tx.get_json::<ConversationRow>(&conv_key(customer, stream))?);
        }
        Ok(out)
    }

    /// Per intent: conversations and how many went to a person.
    pub fn intent_stats(db: &DB) -> Result<Vec<(Intent, IntentStats)>, ProjectionError> {
        let cf = db.cf_handle(ROUTING_VIEW).expect("routing column family");
        let tx = Tx::new(db, cf, ROUTING_VIEW);
        ALL_INTENTS.into_iter().map(|i| Ok((i, tx.get_json(&stats_key(i))?.unwrap_or_default()))).collect()
    }
}
