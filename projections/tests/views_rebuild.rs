//! The CRM-sync and routing views: rebuilding gives the rows incremental building gave, on random
//! histories of messages, outcomes, routing decisions, CRM events and erasures (where a rebuild
//! sees the erased customer's events as unreadable, and incremental building saw them in clear).

use ledger::types::{Channel, CustomerId, Direction, EventId, EventType, ExpectedVersion, Metadata, Region, StreamName};
use ledger::{AppendInput, Ledger, LedgerConfig, NewEvent};
use projections::routing::{ConversationState, Escalated, Rerouted, StateChanged, Triaged};
use projections::rules::{EscalationReason, Intent};
use projections::{AuditView, CrmView, RoutingView, Runner, View, AUDIT_VIEW, CRM_VIEW, ROUTING_VIEW};
use proptest::prelude::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn append(ledger: &Ledger, customer: CustomerId, stream: &str, event_type: &str, direction: Direction, payload: serde_json::Value) -> Option<EventId> {
    append_bytes(ledger, customer, stream, event_type, direction, serde_json::to_vec(&payload).unwrap()).await
}

/// A message whose payload is whatever bytes a client sent.
async fn append_raw(ledger: &Ledger, customer: CustomerId, stream: &str, payload: &[u8]) {
    append_bytes(ledger, customer, stream, "MessageReceived", Direction::Inbound, payload.to_vec()).await;
}

async fn append_bytes(ledger: &Ledger, customer: CustomerId, stream: &str, event_type: &str, direction: Direction, payload: Vec<u8>) -> Option<EventId> {
    let limits = &ledger.config().limits;
    let id = EventId::new_random();
    let input = AppendInput {
        customer,
        region: Some(Region::parse("eu", "r").unwrap()),
        stream: StreamName::parse(stream, "s", limits).unwrap(),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent {
            event_id: id,
            event_type: EventType::parse(event_type, "t", limits).unwrap(),
            channel: Channel::Whatsapp,
            direction,
            occurred_at: None,
            metadata: Metadata::new(),
            payload,
            schema_version: 1,
        }],
    };
    // Appends to an erased customer are refused; the history goes on without them.
    ledger.append(input).await.ok().map(|_| id)
}

const INTENTS: [Intent; 5] = [Intent::SupportInquiry, Intent::OrderOrBooking, Intent::InformationRequest, Intent::Complaint, Intent::UnpromptedReply];

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn rebuild_equals_incremental_for_every_view(steps in proptest::collection::vec((0u8..10, 0usize..3, 0usize..2, 0usize..5, any::<bool>()), 1..80), snapshot_at in 0usize..80) {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let (ledger, _) = Ledger::open(LedgerConfig::new(dir.path(), vec![Region::parse("eu", "r").unwrap()])).unwrap();
        let customers: Vec<CustomerId> = (0..3).map(|_| CustomerId::new_random()).collect();
        let views: [&dyn View; 3] = [&AuditView, &CrmView, &RoutingView];
        let incremental = Runner::open_at(ledger.clone(), &dir.path().join("p1"), &[AUDIT_VIEW, CRM_VIEW, ROUTING_VIEW]).unwrap();
        let mut queued: Vec<Option<EventId>> = vec![None; 3];
        let snapshot = dir.path().join("older");
        for (step, (kind, who, conv, pick, catch_up)) in steps.into_iter().enumerate() {
            if step == snapshot_at {
                // The views' state as an older checkpoint, exactly what a power loss leaves when
                // it takes the unsynced tail of their commits.
                rocksdb::checkpoint::Checkpoint::new(incremental.db()).unwrap().create_checkpoint(&snapshot).unwrap();
            }
            let customer = customers[who];
            let stream = format!("conv.whatsapp.{who}{conv}");
            let intent = INTENTS[pick];
            rt.block_on(async {
                match kind {
                    0 => { append(&ledger, customer, &stream, "MessageReceived", Direction::Inbound, serde_json::json!({"kind": "message", "text": "ola preciso de ajuda", "channel_identity": "5511999990000"})).await; }
                    1 => { if let Some(id) = append(&ledger, customer, &stream, "MessageQueued", Direction::Outbound, serde_json::json!({"content": {"type": "text", "body": "hi"}})).await { queued[who] = Some(id); } }
                    2 => { if let Some(q) = queued[who] { append(&ledger, customer, &stream, "MessageSent", Direction::Outbound, serde_json::json!({"queued_event_id": q.to_string()})).await; } }
                    3 => { append(&ledger, customer, &stream, "ConversationTriaged", Direction::Internal, serde_json::to_value(Triaged { schema: 1, intent, queue: "support".into(), routed: if pick % 2 == 0 { ConversationState::AwaitingAgent } else { ConversationState::Automated }, source_event_id: "x".into() }).unwrap()).await; }
                    4 => { append(&ledger, customer, &stream, "ConversationEscalated", Direction::Internal, serde_json::to_value(Escalated { schema: 1, reason: EscalationReason::Negative, source_event_id: None }).unwrap()).await; }
                    5 => { append(&ledger, customer, &stream, "ConversationRerouted", Direction::Internal, serde_json::to_value(Rerouted { schema: 1, intent, queue: "sales".into(), by: "agent-7".into(), reason: String::new() }).unwrap()).await; }
                    6 => { append(&ledger, customer, &stream, "ConversationStateChanged", Direction::Internal, serde_json::to_value(StateChanged { schema: 1, state: if pick % 2 == 0 { ConversationState::Resolved } else { ConversationState::Closed }, by: "agent-7".into() }).unwrap()).await; }
                    7 => { append(&ledger, customer, "crm", "CrmEventReceived", Direction::Inbound, serde_json::json!({"type": "deal.stage_changed", "data": {"attributes": {"vip": if pick % 2 == 0 { "true" } else { "false" }}}})).await; }
                    // Not JSON: skipped (and counted), never a stalled view.
                    9 => { append_raw(&ledger, customer, &stream, b"\x00\xffnot json").await; }
                    _ => {
                        if ledger.customer_region(customer).is_ok() {
                            let mut meta = Metadata::new();
                            meta.insert("customer".into(), customer.to_string());
                            let _ = ledger.append_system("erasure.requests", "ErasureRequested", 1, EventId::new_random(), meta, b"{}".to_vec()).await;
                            let _ = ledger.erase_key(customer).await;
                        }
                    }
                }
            });
            if catch_up {
                incremental.catch_up_group(&views, &mut |_| Ok(())).unwrap();
            }
        }
        incremental.catch_up_group(&views, &mut |_| Ok(())).unwrap();
        let rebuilt = Runner::open_at(ledger.clone(), &dir.path().join("p2"), &[AUDIT_VIEW, CRM_VIEW, ROUTING_VIEW]).unwrap();
        rebuilt.rebuild(&views).unwrap();
        for view in [AUDIT_VIEW, CRM_VIEW, ROUTING_VIEW] {
            prop_assert_eq!(incremental.rows(view).unwrap(), rebuilt.rows(view).unwrap(), "view {}", view);
            prop_assert_eq!(incremental.lag(view).unwrap(), 0);
        }
        // Re-applied from the older checkpoint (after erasures it did not see in clear), the
        // views end with the same rows: why their commits need no fsync of their own.
        if snapshot.exists() {
            let older = Runner::open_at(ledger.clone(), &snapshot, &[AUDIT_VIEW, CRM_VIEW, ROUTING_VIEW]).unwrap();
            older.catch_up_group(&views, &mut |_| Ok(())).unwrap();
            for view in [AUDIT_VIEW, CRM_VIEW, ROUTING_VIEW] {
                prop_assert_eq!(incremental.rows(view).unwrap(), older.rows(view).unwrap(), "view {} re-applied from an older checkpoint", view);
            }
        }
    }
}
