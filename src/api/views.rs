//! The gRPC edge of `ledger.v1.Views`: the CRM-sync and routing views. Rows come from the views;
//! message text and identifiers are decrypted from the log at call time, after an access record
//! is written, so an erased customer's content is gone from every answer.

use std::sync::Arc;

use ledger::types::{CustomerId, Direction, Position};
use ledger::{EventFilter, Ledger, LedgerError, Payload};
use projections::crm::CrmView;
use projections::crm_push::CrmPush;
use projections::routing::{ConversationRow, ConversationState, Rerouted, StateChanged, REROUTED, STATE_CHANGED};
use projections::rules::{Intent, Rules};
use projections::{EventIdFor, ProjectionError, Runner, RoutingView};
use proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::{blocking, blocking_outcome, record_access, refuse, status, Caller};

/// Maps a view error to the ledger's error codes: the log's own errors keep theirs; a view's
/// store failing is our fault (`INTERNAL`), not lost data (the log is intact and the view can be
/// rebuilt from it).
pub fn view_error(e: ProjectionError) -> LedgerError {
    match e {
        ProjectionError::Ledger(e) => e,
        other => LedgerError::Internal(other.to_string()),
    }
}

/// The `ledger.v1.Views` service.
#[derive(Clone)]
pub struct ViewsService {
    ledger: Ledger,
    views: Arc<Runner>,
    crm: Option<Arc<CrmPush>>,
    rules: Arc<Rules>,
}

impl ViewsService {
    /// A service over the views' store, the CRM push (if configured) and the routing rules.
    pub fn new(ledger: Ledger, views: Arc<Runner>, crm: Option<Arc<CrmPush>>, rules: Rules) -> Self {
        ViewsService { ledger, views, crm, rules: Arc::new(rules) }
    }
}

fn conversation_to_pb(r: ConversationRow) -> pb::Conversation {
    pb::Conversation {
        customer_id: r.customer.to_string(),
        stream: r.stream,
        channel: r.channel,
        state: r.state.as_str().into(),
        intent: r.intent.map(|i| i.as_str().to_owned()).unwrap_or_default(),
        queue: r.queue.unwrap_or_default(),
        escalation: r.escalation.map(|e| e.as_str().to_owned()).unwrap_or_default(),
        opened_at_unix_ms: r.opened_ms,
        last_inbound_unix_ms: r.last_inbound_ms,
        inbound_count: r.inbound_count,
        history: r.history.into_iter().map(|t| pb::ConversationTransition { to: t.to, at_unix_ms: t.at_ms, position: t.position, by: t.by }).collect(),
    }
}

/// One event's decrypted payload as JSON; `Err(CustomerErased)` once the key is gone.
fn decrypt(ledger: &Ledger, customer: CustomerId, position: u64) -> Result<serde_json::Value, LedgerError> {
    let filter = EventFilter { customer: Some(customer), ..EventFilter::default() };
    let (events, _) = ledger.read_range(Position(position), Position(position + 1), 1, usize::MAX, &filter)?;
    match events.into_iter().next().map(|e| e.payload) {
        Some(Payload::Available(p)) => Ok(serde_json::from_slice(&p).unwrap_or_default()),
        Some(Payload::Erased) => Err(LedgerError::NotFound { what: "customer" }),
        Some(Payload::RegionNotServed) => Err(LedgerError::invalid("customer_id", "the customer's region is not served here")),
        None => Err(LedgerError::Integrity(format!("the view points at position {position}, which is not this customer's event"))),
    }
}

fn context(ledger: &Ledger, views: &Runner, customer: CustomerId, max: usize) -> Result<pb::GetCustomerContextResponse, LedgerError> {
    ledger.check_customer_readable(customer)?;
    let Some(rows) = CrmView::customer(views.db(), customer, max).map_err(view_error)? else {
        return Err(LedgerError::NotFound { what: "customer" });
    };
    let mut identities = Vec::new();
    for (channel, r) in rows.identities {
        let m = decrypt(ledger, customer, r.position)?;
        identities.push(pb::ChannelIdentity {
            channel,
            identifier: m["channel_identity"].as_str().unwrap_or_default().to_owned(),
            display_name: m["sender_name"].as_str().unwrap_or_default().to_owned(),
            last_seen_unix_ms: r.at_ms,
        });
    }
    let mut interactions = Vec::new();
    for i in rows.interactions {
        let m = decrypt(ledger, customer, i.position)?;
        let text = match i.event_type.as_str() {
            "MessageQueued" => m["content"]["body"].as_str().map(str::to_owned).or_else(|| m["content"]["name"].as_str().map(|n| format!("template:{n}"))),
            projections::crm::CRM_EVENT => m["type"].as_str().map(str::to_owned),
            _ => m["text"].as_str().map(str::to_owned),
        };
        interactions.push(pb::Interaction {
            event_id: i.event_id,
            position: i.position,
            channel: i.channel,
            direction: i.direction,
            event_type: i.event_type,
            occurred_at_unix_ms: i.occurred_ms,
            conversation: i.stream,
            text: text.unwrap_or_default(),
            subject: m["subject"].as_str().unwrap_or_default().to_owned(),
            outcome: i.outcome.unwrap_or_default(),
        });
    }
    let conversations = RoutingView::conversations_of(views.db(), customer).map_err(view_error)?.into_iter().map(conversation_to_pb).collect();
    Ok(pb::GetCustomerContextResponse { customer_id: customer.to_string(), identities, interactions, conversations, attributes: rows.attributes.into_iter().collect() })
}

/// Appends an agent's decision to a conversation's stream (keyed by `request_id` when given, so a
/// retry records one event).
async fn append_decision(ledger: &Ledger, row: &ConversationRow, event_type: &str, request_id: &str, payload: Vec<u8>) -> Result<u64, LedgerError> {
    let key = format!("{event_type}:{request_id}");
    let id = if request_id.is_empty() { EventIdFor::Random } else { EventIdFor::Keyed { space: "agent", key: &key } };
    let channel = ledger::types::Channel::from_name(&row.channel);
    Ok(projections::append_one(ledger, row.customer, &row.stream, channel, Direction::Internal, event_type, id, None, payload).await?.first_position.0)
}

fn agent_field(agent: &str) -> Result<(), Status> {
    if agent.is_empty() || agent.len() > 128 {
        return Err(status(LedgerError::invalid("agent", "must be 1 to 128 bytes")));
    }
    Ok(())
}

impl ViewsService {
    async fn conversation(&self, caller: &Caller, customer_id: &str, stream: &str) -> Result<ConversationRow, Status> {
        let customer = CustomerId::parse(customer_id, "customer_id").map_err(status)?;
        caller.may_customer(&self.ledger, customer).await?;
        if stream.is_empty() {
            return Err(status(LedgerError::invalid("stream", "is required")));
        }
        let (views, stream) = (self.views.clone(), stream.to_owned());
        blocking(move || RoutingView::conversation(views.db(), customer, &stream).map_err(view_error)?.ok_or(LedgerError::NotFound { what: "conversation" })).await
    }
}

#[tonic::async_trait]
impl pb::views_server::Views for ViewsService {
    async fn get_customer_context(&self, request: Request<pb::GetCustomerContextRequest>) -> Result<Response<pb::GetCustomerContextResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let customer = CustomerId::parse(&req.customer_id, "customer_id").map_err(status)?;
        caller.may_customer(&self.ledger, customer).await?;
        let max = match req.max_interactions {
            0 => 20,
            n if n > 200 => return Err(status(LedgerError::invalid("max_interactions", "must be at most 200"))),
            n => n as usize,
        };
        let mut record = caller.access("ledger.v1.Views/GetCustomerContext");
        record.customer = Some(customer);
        let record = record.param("max_interactions", max.to_string());
        let (ledger, views) = (self.ledger.clone(), self.views.clone());
        match blocking_outcome(move || context(&ledger, &views, customer, max)).await? {
            Ok(resp) => {
                record_access(&self.ledger, &record).await?;
                Ok(Response::new(resp))
            }
            Err(e) => Err(refuse(&self.ledger, record, e).await),
        }
    }

    async fn crm_sync_status(&self, _request: Request<pb::CrmSyncStatusRequest>) -> Result<Response<pb::CrmSyncStatusResponse>, Status> {
        let Some(crm) = self.crm.clone() else {
            return Ok(Response::new(pb::CrmSyncStatusResponse { coverage_rate: 0.0, ..Default::default() }));
        };
        let s = blocking(move || crm.status().map_err(view_error)).await?;
        Ok(Response::new(pb::CrmSyncStatusResponse {
            enabled: s.enabled,
            activities: s.activities,
            acknowledged: s.acknowledged,
            failed: s.failed,
            dropped_erased: s.dropped_erased,
            pending: s.pending,
            coverage_rate: s.coverage,
            last_error: s.last_error,
        }))
    }

    async fn get_conversation(&self, request: Request<pb::GetConversationRequest>) -> Result<Response<pb::GetConversationResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let row = self.conversation(&caller, &req.customer_id, &req.stream).await?;
        Ok(Response::new(pb::GetConversationResponse { conversation: Some(conversation_to_pb(row)) }))
    }

    async fn list_queue(&self, request: Request<pb::ListQueueRequest>) -> Result<Response<pb::ListQueueResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        if !self.rules.queues().contains(&req.queue.as_str()) {
            return Err(status(LedgerError::invalid("queue", "is not a queue of the routing rules")));
        }
        let max = match req.max_count {
            0 => 100,
            n if n > 1000 => return Err(status(LedgerError::invalid("max_count", "must be at most 1000"))),
            n => n as usize,
        };
        let views = self.views.clone();
        let rows = blocking(move || RoutingView::queue(views.db(), &req.queue, max).map_err(view_error)).await?;
        // A region-scoped agent sees the conversations of its regions' customers only.
        let conversations = rows.into_iter().filter(|r| caller.sees(&self.ledger, r.customer)).map(conversation_to_pb).collect();
        Ok(Response::new(pb::ListQueueResponse { conversations }))
    }

    async fn reroute(&self, request: Request<pb::RerouteRequest>) -> Result<Response<pb::RerouteResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        agent_field(&req.agent)?;
        let intent = Intent::parse(&req.intent).ok_or_else(|| status(LedgerError::invalid("intent", "must be one of support_inquiry, order_or_booking, information_request, complaint, unprompted_reply")))?;
        if !self.rules.queues().contains(&req.queue.as_str()) {
            return Err(status(LedgerError::invalid("queue", "is not a queue of the routing rules")));
        }
        if req.reason.len() > 1024 || req.request_id.len() > 128 {
            return Err(status(LedgerError::invalid("reason", "at most 1024 bytes (request_id at most 128)")));
        }
        let row = self.conversation(&caller, &req.customer_id, &req.stream).await?;
        let payload = Rerouted { schema: 1, intent, queue: req.queue, by: req.agent, reason: req.reason };
        let position = append_decision(&self.ledger, &row, REROUTED, &req.request_id, serde_json::to_vec(&payload).expect("serializes")).await.map_err(status)?;
        Ok(Response::new(pb::RerouteResponse { position }))
    }

    async fn set_conversation_state(&self, request: Request<pb::SetConversationStateRequest>) -> Result<Response<pb::SetConversationStateResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        agent_field(&req.agent)?;
        let state = ConversationState::parse_settable(&req.state).ok_or_else(|| status(LedgerError::invalid("state", "must be resolved, closed or awaiting_agent")))?;
        let row = self.conversation(&caller, &req.customer_id, &req.stream).await?;
        let allowed = match state {
            ConversationState::Resolved => matches!(row.state, ConversationState::AwaitingAgent | ConversationState::Automated | ConversationState::Triaged | ConversationState::Open),
            ConversationState::Closed => row.state != ConversationState::Closed,
            _ => row.state != ConversationState::AwaitingAgent,
        };
        if !allowed {
            return Err(status(LedgerError::invalid("state", &format!("a conversation cannot go from {} to {}", row.state.as_str(), state.as_str()))));
        }
        let payload = StateChanged { schema: 1, state, by: req.agent };
        let position = append_decision(&self.ledger, &row, STATE_CHANGED, &req.request_id, serde_json::to_vec(&payload).expect("serializes")).await.map_err(status)?;
        Ok(Response::new(pb::SetConversationStateResponse { position }))
    }
}
