//! The router: follows the log, classifies each inbound message by the rules, and writes its
//! decisions back as events in the conversation's stream (`ConversationTriaged`,
//! `ConversationEscalated`, `ConversationStateChanged` for abandonment), sends the
//! acknowledgement through the outbound connector when a person will answer, and posts
//! escalations to Slack. A timer sweep escalates conversations waiting past the SLA and abandons
//! idle ones.
//!
//! Its own state (column family `router`: per conversation the intent, whether it escalated, the
//! negative streak and times; per customer the CRM attributes) moves with its checkpoint in one
//! batch, and each chunk's effects run before that batch commits. Effects carry ids derived from
//! the event that caused them (keyed event ids, outbound request ids), so a chunk re-run after a
//! crash finds them done rather than doing them twice. No message text or identifier is stored:
//! the acknowledgement's recipient comes from the decrypted message in memory, and an escalation's
//! context is read from the log when it is posted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connectors::outbound::{Content, Outbound, ReplyTo, SendRequest};
use connectors::ConnectorError;
use ledger::types::{Channel, CustomerId, Direction, StreamName, UnixMillis};
use ledger::{Ledger, LedgerError, Payload, RecordedEvent};
use serde::{Deserialize, Serialize};

use crate::crm::{crm_attributes, CRM_EVENT};
use crate::routing::{erased_key, ConversationState, Escalated, Rerouted, StateChanged, Triaged, ESCALATED, REROUTED, STATE_CHANGED, TRIAGED};
use crate::rules::{EscalationReason, Intent, Rules};
use crate::{erasure_of, ProjectionError, Runner, Tx, View};

/// The router's state column family (and checkpoint name).
pub const ROUTER: &str = "router";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct RouterConv {
    channel: String,
    triaged: bool,
    state: Option<ConversationState>,
    intent: Option<Intent>,
    queue: Option<String>,
    escalated: bool,
    negative_streak: u32,
    last_inbound_ms: i64,
    last_inbound_event: String,
    /// Our last reply that was not the automatic acknowledgement.
    last_reply_ms: i64,
    last_outbound_ms: i64,
    last_activity_ms: i64,
    ack_event: Option<String>,
}

impl RouterConv {
    fn active(&self) -> bool {
        self.state.is_none_or(ConversationState::is_active)
    }
}

/// Something the router does besides updating its state.
#[derive(Debug)]
enum Effect {
    Append { customer: CustomerId, stream: String, channel: Channel, event_type: &'static str, key: String, occurred_ms: i64, payload: Vec<u8> },
    Send { req: SendRequest },
    Escalate { customer: CustomerId, stream: String, reason: EscalationReason, key: String },
}

fn conv_key(customer: CustomerId, stream: &str) -> Vec<u8> {
    [b"c".as_slice(), customer.as_bytes(), stream.as_bytes()].concat()
}

fn attrs_key(customer: CustomerId) -> Vec<u8> {
    [b"a".as_slice(), customer.as_bytes()].concat()
}

/// The router.
pub struct Router {
    ledger: Ledger,
    outbound: Option<Arc<Outbound>>,
    rules: Rules,
    effects: Mutex<Vec<Effect>>,
}

/// Which `Outbound` request-id space a channel's sends use (to predict the acknowledgement's
/// event id).
fn send_space(channel: &str) -> Option<&'static str> {
    match channel {
        "whatsapp" => Some("whatsapp-send"),
        "sms" => Some("sms-send"),
        "slack" => Some("slack-send"),
        _ => None,
    }
}

fn recommended(reason: EscalationReason) -> &'static str {
    match reason {
        EscalationReason::Keyword => "Legal or regulatory language: a supervisor should reply personally within the hour.",
        EscalationReason::HumanRequest => "The customer asked for a person: reply personally, not with automation.",
        EscalationReason::Negative => "Several negative messages in a row: acknowledge the problem and offer a concrete resolution.",
        EscalationReason::Sla => "Waiting longer than the SLA: reply now.",
    }
}

impl Router {
    /// A router over `ledger` with `rules`, sending through `outbound` (none: decisions are
    /// written, nothing is sent).
    pub fn new(ledger: Ledger, outbound: Option<Arc<Outbound>>, rules: Rules) -> Arc<Self> {
        Arc::new(Router { ledger, outbound, rules, effects: Mutex::new(Vec::new()) })
    }

    /// The rules.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    fn push(&self, e: Effect) {
        self.effects.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(e);
    }

    fn inbound(&self, tx: &mut Tx<'_>, event: &RecordedEvent, m: &serde_json::Value) -> Result<(), ProjectionError> {
        let h = &event.header;
        let key = conv_key(h.customer, &h.stream);
        let mut conv: RouterConv = tx.get_json(&key)?.unwrap_or_else(|| RouterConv { channel: h.channel.name().to_owned(), ..RouterConv::default() });
        let text = [m["subject"].as_str().unwrap_or_default(), m["text"].as_str().unwrap_or_default()].join(" ");
        let replies_to_us = !m["reply_to"].is_null() || conv.last_outbound_ms > conv.last_inbound_ms;
        let a = self.rules.assess(&text, replies_to_us);
        let at = h.occurred_at.0;
        let source = h.event_id.to_string();
        conv.negative_streak = if a.negative { conv.negative_streak + 1 } else { 0 };
        if !conv.triaged || !conv.active() {
            let attrs: BTreeMap<String, String> = tx.get_json(&attrs_key(h.customer))?.unwrap_or_default();
            let queue = self.rules.queue(a.intent, &conv.channel, &attrs, at);
            // An explicit request for a person goes to a person, whatever the intent.
            let routed =
                if a.human_requested || self.rules.needs_human(a.intent) { ConversationState::AwaitingAgent } else { ConversationState::Automated };
            let t = Triaged { schema: 1, intent: a.intent, queue: queue.clone(), routed, source_event_id: source.clone() };
            self.push(Effect::Append {
                customer: h.customer,
                stream: h.stream.clone(),
                channel: h.channel,
                event_type: TRIAGED,
                key: format!("{source}:triaged"),
                occurred_ms: at,
                payload: serde_json::to_vec(&t).expect("serializes"),
            });
            metrics::counter!("ledger_routing_triaged_total", "intent" => a.intent.as_str(), "routed" => routed.as_str()).increment(1);
            conv = RouterConv { triaged: true, state: Some(routed), intent: Some(a.intent), queue: Some(queue), escalated: false, ack_event: None, ..conv };
            if routed == ConversationState::AwaitingAgent
                && let (Some(body), Some(space), Some(_)) = (self.rules.acknowledgement(a.lang), send_space(&conv.channel), &self.outbound)
            {
                let account = m["account"].as_str().unwrap_or_default().to_owned();
                let provider_id = m["provider_message_id"].as_str().unwrap_or_default();
                let (to, thread) = match conv.channel.as_str() {
                    // Slack: the channel the message came from, in its thread.
                    "slack" => match provider_id.split_once(':') {
                        Some((channel, ts)) => (channel.to_owned(), Some(m["thread"].as_str().unwrap_or(ts).to_owned())),
                        None => (String::new(), None),
                    },
                    _ => (m["channel_identity"].as_str().unwrap_or_default().to_owned(), None),
                };
                let request_id = format!("ack:{source}");
                let region = self.ledger.customer_region(h.customer)?;
                conv.ack_event = Some(self.ledger.keyed_event_id(&region, space, &request_id)?.to_string());
                let reply_to = Some(ReplyTo { stream: h.stream.clone(), inbound_ms: at });
                // Twilio: from the number the customer wrote to, on the channel they used.
                let from = m["business_address"].as_str().map(str::to_owned);
                let req = SendRequest { customer: h.customer, account, to, content: Content::Text { body: body.to_owned() }, request_id, thread, from, reply_to };
                self.push(Effect::Send { req });
            }
        }
        if !conv.escalated {
            let reason = a.escalation.or((conv.negative_streak >= self.rules.escalation().negative_streak).then_some(EscalationReason::Negative));
            if let Some(reason) = reason {
                self.escalate(h.customer, &h.stream, h.channel, reason, Some(source.clone()), at, format!("{source}:escalated"));
                conv.escalated = true;
                conv.state = Some(ConversationState::AwaitingAgent);
            }
        }
        conv.last_inbound_ms = conv.last_inbound_ms.max(at);
        conv.last_inbound_event = source;
        conv.last_activity_ms = conv.last_activity_ms.max(at);
        tx.put_json(key, &conv);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn escalate(&self, customer: CustomerId, stream: &str, channel: Channel, reason: EscalationReason, source: Option<String>, at: i64, key: String) {
        let e = Escalated { schema: 1, reason, source_event_id: source };
        self.push(Effect::Append {
            customer,
            stream: stream.to_owned(),
            channel,
            event_type: ESCALATED,
            key: key.clone(),
            occurred_ms: at,
            payload: serde_json::to_vec(&e).expect("serializes"),
        });
        metrics::counter!("ledger_routing_escalations_total", "reason" => reason.as_str()).increment(1);
        if !self.rules.escalation().slack_account.is_empty() {
            self.push(Effect::Escalate { customer, stream: stream.to_owned(), reason, key });
        }
    }

    /// Runs the effects collected so far. Blocking (called from the runner's thread).
    fn run_effects(&self) -> Result<(), ProjectionError> {
        let effects = std::mem::take(&mut *self.effects.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        if effects.is_empty() {
            return Ok(());
        }
        let handle = tokio::runtime::Handle::current();
        for effect in effects {
            match effect {
                Effect::Append { customer, stream, channel, event_type, key, occurred_ms, payload } => {
                    handle.block_on(self.append(customer, &stream, channel, event_type, &key, occurred_ms, payload))?;
                }
                Effect::Send { req } => {
                    let Some(outbound) = &self.outbound else { continue };
                    match handle.block_on(outbound.send(req)) {
                        Ok(_) => metrics::counter!("ledger_routing_acknowledgements_total", "outcome" => "queued").increment(1),
                        Err(ConnectorError::Ledger(LedgerError::CustomerErased { .. })) => {}
                        Err(ConnectorError::Ledger(e)) => return Err(e.into()),
                        Err(e) => {
                            // Not retryable (no account for the channel, window closed...): the
                            // decision stands, the acknowledgement is skipped.
                            tracing::warn!(error = %e, "routing acknowledgement not sent");
                            metrics::counter!("ledger_routing_acknowledgements_total", "outcome" => "skipped").increment(1);
                        }
                    }
                }
                Effect::Escalate { customer, stream, reason, key } => self.post_escalation(&handle, customer, &stream, reason, &key)?,
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn append(&self, customer: CustomerId, stream: &str, channel: Channel, event_type: &str, key: &str, occurred_ms: i64, payload: Vec<u8>) -> Result<(), ProjectionError> {
        let id = crate::EventIdFor::Keyed { space: "router", key };
        match crate::append_one(&self.ledger, customer, stream, channel, Direction::Internal, event_type, id, Some(UnixMillis(occurred_ms)), payload).await {
            Ok(_) | Err(LedgerError::DuplicateEventId { .. } | LedgerError::CustomerErased { .. } | LedgerError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Posts the escalation's context block to the configured Slack channel: customer, channel,
    /// intent and queue, the last messages, and a recommended action.
    fn post_escalation(&self, handle: &tokio::runtime::Handle, customer: CustomerId, stream: &str, reason: EscalationReason, key: &str) -> Result<(), ProjectionError> {
        let Some(outbound) = &self.outbound else { return Ok(()) };
        let esc = self.rules.escalation();
        let limits = &self.ledger.config().limits;
        let name = StreamName::parse(stream, "stream", limits)?;
        let recent = match self.ledger.read_stream(customer, &name, None, true, 20) {
            Ok(r) => r,
            Err(LedgerError::CustomerErased { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut lines = Vec::new();
        let (mut intent, mut queue) = (None, None);
        for ev in &recent {
            let Payload::Available(p) = &ev.payload else { return Ok(()) };
            let v: serde_json::Value = serde_json::from_slice(p).unwrap_or_default();
            match ev.header.event_type.as_str() {
                TRIAGED if intent.is_none() => {
                    intent = v["intent"].as_str().map(str::to_owned);
                    queue = v["queue"].as_str().map(str::to_owned);
                }
                REROUTED if intent.is_none() => {
                    intent = v["intent"].as_str().map(str::to_owned);
                    queue = v["queue"].as_str().map(str::to_owned);
                }
                "MessageReceived" | "MessageQueued" if lines.len() < 5 => {
                    let text = v["text"].as_str().or(v["content"]["body"].as_str()).unwrap_or("(no text)");
                    let who = if ev.header.direction == Direction::Inbound { "customer" } else { "us" };
                    lines.push(format!("> {who}: {}", text.chars().take(300).collect::<String>()));
                }
                _ => {}
            }
        }
        lines.reverse();
        let body = format!(
            "*Escalation: {}*\nCustomer {customer} · conversation {stream}\nIntent: {} · queue: {}\nLast messages:\n{}\nRecommended action: {}",
            reason.as_str(),
            intent.as_deref().unwrap_or("not triaged"),
            queue.as_deref().unwrap_or("none"),
            lines.join("\n"),
            recommended(reason),
        );
        let req = SendRequest {
            customer,
            account: esc.slack_account.clone(),
            to: esc.slack_channel.clone(),
            content: Content::Text { body },
            request_id: format!("escalation:{key}"),
            thread: None,
            from: None,
            reply_to: None,
        };
        match handle.block_on(outbound.send(req)) {
            Ok(_) | Err(ConnectorError::Ledger(LedgerError::CustomerErased { .. })) => Ok(()),
            Err(ConnectorError::Ledger(e)) => Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, "escalation not posted to Slack");
                Ok(())
            }
        }
    }

    /// The timers: escalates conversations awaiting an agent past the SLA, abandons idle ones,
    /// and publishes the fallback rate per intent. Blocking.
    pub fn sweep(&self, runner: &Runner, now_ms: i64) -> Result<(), ProjectionError> {
        let db = runner.db();
        let cf = db.cf_handle(ROUTER).expect("router column family");
        let sla_ms = i64::try_from(self.rules.escalation().sla_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let abandon_ms = i64::try_from(self.rules.abandon_after_secs().saturating_mul(1000)).unwrap_or(i64::MAX);
        for item in db.prefix_iterator_cf(cf, b"c") {
            let (k, v) = item?;
            if !k.starts_with(b"c") {
                break;
            }
            let Ok(conv) = serde_json::from_slice::<RouterConv>(&v) else { continue };
            if conv.last_inbound_ms == 0 || !conv.active() {
                continue;
            }
            let customer = CustomerId(uuid::Uuid::from_bytes(k[1..17].try_into().expect("16-byte customer")));
            let stream = String::from_utf8_lossy(&k[17..]).into_owned();
            let channel = ledger::types::Channel::from_name(&conv.channel);
            if now_ms - conv.last_activity_ms > abandon_ms {
                let s = StateChanged { schema: 1, state: ConversationState::Abandoned, by: "router".into() };
                self.push(Effect::Append {
                    customer,
                    stream,
                    channel,
                    event_type: STATE_CHANGED,
                    key: format!("{}:{}:abandoned", conv.last_inbound_event, conv.last_activity_ms),
                    occurred_ms: now_ms,
                    payload: serde_json::to_vec(&s).expect("serializes"),
                });
            } else if conv.state == Some(ConversationState::AwaitingAgent) && !conv.escalated && conv.last_inbound_ms > conv.last_reply_ms && now_ms - conv.last_inbound_ms > sla_ms {
                self.escalate(customer, &stream, channel, EscalationReason::Sla, None, now_ms, format!("{}:sla", conv.last_inbound_event));
            }
        }
        self.run_effects()?;
        for (intent, s) in crate::RoutingView::intent_stats(db)? {
            if s.conversations > 0 {
                metrics::gauge!("ledger_routing_fallback_ratio", "intent" => intent.as_str()).set(s.to_human as f64 / s.conversations as f64);
            }
        }
        Ok(())
    }

    /// Follows the log until `shutdown`, sweeping every `sweep_every`.
    pub async fn run(self: Arc<Self>, runner: Arc<Runner>, sweep_every: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut batches = self.ledger.subscribe_batches();
        let mut last_sweep = std::time::Instant::now();
        loop {
            let (me, r) = (self.clone(), runner.clone());
            let sweep = last_sweep.elapsed() >= sweep_every;
            if sweep {
                last_sweep = std::time::Instant::now();
            }
            let step = tokio::task::spawn_blocking(move || {
                r.catch_up_with(me.as_ref(), &mut |_| me.run_effects())?;
                if sweep {
                    me.sweep(&r, UnixMillis::now().0)?;
                }
                Ok::<_, ProjectionError>(())
            });
            match step.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "router failed; retrying"),
                Err(_) => return,
            }
            if !crate::wait_for_commits(&mut batches, &mut shutdown, sweep_every.min(Duration::from_secs(1))).await {
                return;
            }
        }
    }
}

impl View for Router {
    fn name(&self) -> &'static str {
        ROUTER
    }

    fn apply(&self, tx: &mut Tx<'_>, event: &RecordedEvent) -> Result<(), ProjectionError> {
        let h = &event.header;
        if let Some(customer) = erasure_of(event) {
            tx.delete_prefix(&[b"c".as_slice(), customer.as_bytes()].concat())?;
            tx.delete(attrs_key(customer));
            tx.put(erased_key(customer), Vec::new());
            return Ok(());
        }
        let Payload::Available(payload) = &event.payload else { return Ok(()) };
        if ledger::access::is_system_customer(h.customer) || tx.get(&erased_key(h.customer))?.is_some() {
            return Ok(());
        }
        let decode = || crate::json::<serde_json::Value>(ROUTER, payload);
        let key = conv_key(h.customer, &h.stream);
        match h.event_type.as_str() {
            "MessageReceived" if h.direction == Direction::Inbound => {
                if let Some(m) = decode()
                    && m["kind"] == "message"
                {
                    self.inbound(tx, event, &m)?;
                }
            }
            "MessageQueued" | "MessageSent" => {
                let mut conv: RouterConv = tx.get_json(&key)?.unwrap_or_else(|| RouterConv { channel: h.channel.name().to_owned(), ..RouterConv::default() });
                let at = h.occurred_at.0;
                let ack = h.event_type == "MessageQueued" && conv.ack_event.as_deref() == Some(h.event_id.to_string().as_str());
                let ack_sent = h.event_type == "MessageSent" && decode().is_some_and(|v| conv.ack_event.as_deref() == v["queued_event_id"].as_str());
                if !ack && !ack_sent {
                    conv.last_reply_ms = conv.last_reply_ms.max(at);
                }
                conv.last_outbound_ms = conv.last_outbound_ms.max(at);
                conv.last_activity_ms = conv.last_activity_ms.max(at);
                tx.put_json(key, &conv);
            }
            ESCALATED | REROUTED | STATE_CHANGED => {
                let Some(mut conv) = tx.get_json::<RouterConv>(&key)? else { return Ok(()) };
                match h.event_type.as_str() {
                    ESCALATED => {
                        conv.escalated = true;
                        if conv.state != Some(ConversationState::AwaitingAgent) && conv.active() {
                            conv.state = Some(ConversationState::AwaitingAgent);
                        }
                    }
                    REROUTED => {
                        let Some(r) = crate::json::<Rerouted>(ROUTER, payload) else { return Ok(()) };
                        conv.intent = Some(r.intent);
                        conv.queue = Some(r.queue);
                        conv.state = Some(ConversationState::AwaitingAgent);
                    }
                    _ => {
                        let Some(s) = crate::json::<StateChanged>(ROUTER, payload) else { return Ok(()) };
                        conv.state = Some(s.state);
                    }
                }
                conv.last_activity_ms = conv.last_activity_ms.max(h.occurred_at.0);
                tx.put_json(key, &conv);
            }
            CRM_EVENT => {
                let Some(v) = decode() else { return Ok(()) };
                let set = crm_attributes(&v);
                if !set.is_empty() {
                    let mut attrs: BTreeMap<String, String> = tx.get_json(&attrs_key(h.customer))?.unwrap_or_default();
                    attrs.extend(set);
                    tx.put_json(attrs_key(h.customer), &attrs);
                }
            }
            _ => {}
        }
        Ok(())
    }
}
