//! The region-scope matrix, in the spirit of the role matrix in `tests/auth.rs`: every
//! `ledger.v1` method called by a principal holding every role but scoped to `eu`, aimed at `us`
//! resources, with the expected answer written out here (independently of the server's code).
//! The test fails if a method exists that the matrix does not list.
//!
//! The rules it states: whatever names a `us` customer, a `us` region, a `us`-scoped or an unscoped
//! token, or spans every region (rebuilds, dead-letter retries, the global system streams), is
//! PERMISSION_DENIED. What holds no customer data (tree heads, proofs and leaf hashes, which are
//! hashes; projection lag; CRM sync counters) answers. Listings answer with the `eu` part only.
//! Also: the access records of `us` customers are not readable by the `eu` principal (they live in
//! the `us` system customer's stream), and every denial about a `us` customer is in that customer's
//! audit trail.

mod common;
use common::*;
use ledger::access::{system_customer_of, ACCESS_STREAM, SYSTEM_CUSTOMER};
use ledger::types::Region;
use proto::v1 as pb;
use proto::v1::admin_client::AdminClient;
use proto::v1::audit_client::AuditClient;
use proto::v1::ledger_client::LedgerClient;
use proto::v1::messaging_client::MessagingClient;
use proto::v1::privacy_client::PrivacyClient;
use proto::v1::views_client::ViewsClient;
use tonic::Code;

/// What an `eu`-scoped principal with every role gets, per method, aimed at `us`.
const EXPECTED: &[(&str, &str)] = &[
    ("/ledger.v1.Ledger/Append", "denied"),
    ("/ledger.v1.Ledger/ResolveCustomer", "denied"),
    ("/ledger.v1.Ledger/LinkIdentifier", "denied"),
    ("/ledger.v1.Ledger/ReadStream", "denied"),
    ("/ledger.v1.Ledger/ReadAll", "denied"),
    ("/ledger.v1.Ledger/Subscribe", "denied"),
    ("/ledger.v1.Audit/GetTreeHead", "ok: hashes of the whole log, no customer data"),
    ("/ledger.v1.Audit/GetInclusionProof", "ok: hashes only"),
    ("/ledger.v1.Audit/GetConsistencyProof", "ok: hashes only"),
    ("/ledger.v1.Audit/Replay", "denied"),
    ("/ledger.v1.Audit/ListLeafHashes", "ok: hashes only"),
    ("/ledger.v1.Audit/GetCustomerAuditTrail", "denied"),
    ("/ledger.v1.Privacy/EraseCustomer", "denied"),
    ("/ledger.v1.Privacy/GetErasureStatus", "denied"),
    ("/ledger.v1.Privacy/ExportCustomer", "denied"),
    ("/ledger.v1.Privacy/ExportRegion", "denied"),
    ("/ledger.v1.Privacy/RetryDeadLetters", "denied: every region's dead letters"),
    ("/ledger.v1.Admin/RotateRegionKey", "denied"),
    ("/ledger.v1.Admin/DestroyRegionKey", "denied"),
    ("/ledger.v1.Admin/ListRegionKeys", "denied"),
    ("/ledger.v1.Admin/GetProjectionStatus", "ok: lag counters only"),
    ("/ledger.v1.Admin/RebuildProjection", "denied: rewrites every region's rows"),
    ("/ledger.v1.Admin/CreateToken", "denied"),
    ("/ledger.v1.Admin/RevokeToken", "denied"),
    ("/ledger.v1.Admin/ListTokens", "ok: only tokens inside eu"),
    ("/ledger.v1.Messaging/SendMessage", "denied"),
    ("/ledger.v1.Views/GetCustomerContext", "denied"),
    ("/ledger.v1.Views/CrmSyncStatus", "ok: counters only"),
    ("/ledger.v1.Views/GetConversation", "denied"),
    ("/ledger.v1.Views/ListQueue", "ok: only eu conversations"),
    ("/ledger.v1.Views/Reroute", "denied"),
    ("/ledger.v1.Views/SetConversationState", "denied"),
];

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    r.map_or_else(|s| s.code(), |_| Code::Ok)
}

/// The code of a server-streaming call: the call's, or its first message's.
async fn stream_code<T>(r: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>) -> Code {
    match r {
        Err(s) => s.code(),
        Ok(resp) => match resp.into_inner().message().await {
            Err(s) => s.code(),
            Ok(_) => Code::Ok,
        },
    }
}

async fn token(admin: &mut AdminClient<Conn>, principal: &str, roles: &[&str], regions: &[&str]) -> (String, String) {
    let r = admin
        .create_token(pb::CreateTokenRequest {
            principal: principal.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            regions: regions.iter().map(|r| r.to_string()).collect(),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    (r.token, r.info.unwrap().id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eu_scoped_principal_reaches_nothing_of_us_on_any_method() {
    let server = Server::start(&[]);
    let mut admin = AdminClient::new(server.channel().await);
    let all = ["appender", "reader", "auditor", "dpo", "admin"];
    let (eu_token, eu_id) = token(&mut admin, "eu-all", &all, &["eu"]).await;
    let (_, us_id) = token(&mut admin, "us-reader", &["reader"], &["us"]).await;
    let root_id = admin.list_tokens(pb::ListTokensRequest {}).await.unwrap().into_inner().tokens.into_iter().find(|t| t.principal == "admin").unwrap().id;

    // A us customer with a conversation, an erased us customer, and an eu customer.
    let mut root = server.client().await;
    let (us, us_erased, eu) = (new_id(), new_id(), new_id());
    for (who, region) in [(&us, "us"), (&us_erased, "us"), (&eu, "eu")] {
        let mut req = append_req(who, "conv", vec![proposed(b"hello")]);
        req.region = region.into();
        root.append(req).await.unwrap();
    }
    let us_request = new_id();
    PrivacyClient::new(server.channel().await)
        .erase_customer(pb::EraseCustomerRequest { customer_id: us_erased.clone(), request_id: us_request.clone(), legal_basis: "gdpr-art17".into(), requested_by: "dpo".into() })
        .await
        .unwrap();
    let us_position = read_stream(&mut root, &us, "conv").await[0].position;

    let ch = server.channel_as(Some(&eu_token)).await;
    let (mut ledger, mut audit, mut privacy) = (LedgerClient::new(ch.clone()), AuditClient::new(ch.clone()), PrivacyClient::new(ch.clone()));
    let (mut admin_eu, mut messaging, mut views) = (AdminClient::new(ch.clone()), MessagingClient::new(ch.clone()), ViewsClient::new(ch));
    let us_filter = Some(pb::EventFilter { customer_id: us.clone(), ..Default::default() });
    let phone = Some(pb::Identifier { kind: pb::IdentifierKind::Phone as i32, value: "+12025550143".into() });
    let mut got: Vec<(&str, Code)> = Vec::new();
    let mut us_append = append_req(&us, "conv", vec![proposed(b"from eu")]);
    us_append.region = "us".into();
    got.push(("/ledger.v1.Ledger/Append", code(ledger.append(us_append).await)));
    got.push((
        "/ledger.v1.Ledger/ResolveCustomer",
        code(ledger.resolve_customer(pb::ResolveCustomerRequest { identifier: phone.clone(), region: "us".into(), create: true, default_phone_region: "US".into() }).await),
    ));
    got.push((
        "/ledger.v1.Ledger/LinkIdentifier",
        code(ledger.link_identifier(pb::LinkIdentifierRequest { customer_id: us.clone(), identifier: phone, default_phone_region: "US".into() }).await),
    ));
    got.push(("/ledger.v1.Ledger/ReadStream", code(ledger.read_stream(pb::ReadStreamRequest { customer_id: us.clone(), stream: "conv".into(), ..Default::default() }).await)));
    got.push(("/ledger.v1.Ledger/ReadAll", stream_code(ledger.read_all(pb::ReadAllRequest { filter: us_filter.clone(), ..Default::default() }).await).await));
    got.push(("/ledger.v1.Ledger/Subscribe", stream_code(ledger.subscribe(pb::SubscribeRequest { from_position: 0, filter: us_filter }).await).await));
    got.push(("/ledger.v1.Audit/GetTreeHead", code(audit.get_tree_head(pb::GetTreeHeadRequest {}).await)));
    got.push(("/ledger.v1.Audit/GetInclusionProof", code(audit.get_inclusion_proof(pb::GetInclusionProofRequest { position: us_position, tree_size: 0 }).await)));
    got.push(("/ledger.v1.Audit/GetConsistencyProof", code(audit.get_consistency_proof(pb::GetConsistencyProofRequest { first_size: 1, second_size: 2 }).await)));
    got.push(("/ledger.v1.Audit/Replay", stream_code(audit.replay(pb::ReplayRequest { customer_id: us.clone(), ..Default::default() }).await).await));
    got.push(("/ledger.v1.Audit/ListLeafHashes", stream_code(audit.list_leaf_hashes(pb::ListLeafHashesRequest { from_position: us_position, to_position: us_position + 1 }).await).await));
    got.push(("/ledger.v1.Audit/GetCustomerAuditTrail", code(audit.get_customer_audit_trail(pb::GetCustomerAuditTrailRequest { customer_id: us.clone() }).await)));
    got.push((
        "/ledger.v1.Privacy/EraseCustomer",
        code(privacy.erase_customer(pb::EraseCustomerRequest { customer_id: us.clone(), request_id: new_id(), legal_basis: "gdpr-art17".into(), requested_by: "eu-dpo".into() }).await),
    ));
    // By customer and by request id, both refused.
    let by_customer = code(privacy.get_erasure_status(pb::GetErasureStatusRequest { customer_id: us_erased.clone(), request_id: String::new() }).await);
    let by_request = code(privacy.get_erasure_status(pb::GetErasureStatusRequest { request_id: us_request.clone(), customer_id: String::new() }).await);
    assert_eq!(by_customer, by_request, "GetErasureStatus by customer and by request id");
    got.push(("/ledger.v1.Privacy/GetErasureStatus", by_request));
    got.push(("/ledger.v1.Privacy/ExportCustomer", stream_code(privacy.export_customer(pb::ExportCustomerRequest { customer_id: us.clone() }).await).await));
    got.push(("/ledger.v1.Privacy/ExportRegion", stream_code(privacy.export_region(pb::ExportRegionRequest { region: "us".into() }).await).await));
    got.push(("/ledger.v1.Privacy/RetryDeadLetters", code(privacy.retry_dead_letters(pb::RetryDeadLettersRequest {}).await)));
    got.push(("/ledger.v1.Admin/RotateRegionKey", code(admin_eu.rotate_region_key(pb::RotateRegionKeyRequest { region: "us".into() }).await)));
    got.push(("/ledger.v1.Admin/DestroyRegionKey", code(admin_eu.destroy_region_key(pb::DestroyRegionKeyRequest { region: "us".into(), version: 1 }).await)));
    got.push(("/ledger.v1.Admin/ListRegionKeys", code(admin_eu.list_region_keys(pb::ListRegionKeysRequest { region: "us".into() }).await)));
    got.push(("/ledger.v1.Admin/GetProjectionStatus", code(admin_eu.get_projection_status(pb::GetProjectionStatusRequest {}).await)));
    got.push(("/ledger.v1.Admin/RebuildProjection", code(admin_eu.rebuild_projection(pb::RebuildProjectionRequest { name: "audit".into() }).await)));
    got.push((
        "/ledger.v1.Admin/CreateToken",
        code(admin_eu.create_token(pb::CreateTokenRequest { principal: "x".into(), roles: vec!["reader".into()], regions: vec!["us".into()], ttl_seconds: 0 }).await),
    ));
    // A us-scoped token and the root admin's: both refused, and both still work afterwards.
    let revoke_us = code(admin_eu.revoke_token(pb::RevokeTokenRequest { id: us_id.clone() }).await);
    let revoke_root = code(admin_eu.revoke_token(pb::RevokeTokenRequest { id: root_id.clone() }).await);
    assert_eq!(revoke_us, revoke_root, "revoking a us token and the root admin's");
    got.push(("/ledger.v1.Admin/RevokeToken", revoke_root));
    let listed = admin_eu.list_tokens(pb::ListTokensRequest {}).await;
    got.push(("/ledger.v1.Admin/ListTokens", code(listed.as_ref().map(|_| ()).map_err(Clone::clone))));
    let listed: Vec<String> = listed.unwrap().into_inner().tokens.into_iter().map(|t| t.id).collect();
    assert_eq!(listed, vec![eu_id.clone()], "a scoped admin lists only the tokens inside its scope");
    got.push((
        "/ledger.v1.Messaging/SendMessage",
        code(
            messaging
                .send_message(pb::SendMessageRequest {
                    customer_id: us.clone(),
                    account: "100000000000001".into(),
                    to: "+12025550143".into(),
                    content: Some(pb::send_message_request::Content::Text("hi".into())),
                    request_id: new_id(),
                    thread: String::new(),
                })
                .await,
        ),
    ));
    got.push(("/ledger.v1.Views/GetCustomerContext", code(views.get_customer_context(pb::GetCustomerContextRequest { customer_id: us.clone(), ..Default::default() }).await)));
    got.push(("/ledger.v1.Views/CrmSyncStatus", code(views.crm_sync_status(pb::CrmSyncStatusRequest {}).await)));
    got.push(("/ledger.v1.Views/GetConversation", code(views.get_conversation(pb::GetConversationRequest { customer_id: us.clone(), stream: "conv".into() }).await)));
    let queue = views.list_queue(pb::ListQueueRequest { queue: "support".into(), max_count: 100 }).await;
    got.push(("/ledger.v1.Views/ListQueue", code(queue.as_ref().map(|_| ()).map_err(Clone::clone))));
    assert!(queue.unwrap().into_inner().conversations.iter().all(|c| c.customer_id != us), "a us conversation listed to eu");
    got.push((
        "/ledger.v1.Views/Reroute",
        code(
            views
                .reroute(pb::RerouteRequest {
                    customer_id: us.clone(),
                    stream: "conv".into(),
                    intent: "complaint".into(),
                    queue: "support".into(),
                    agent: "agent-1".into(),
                    reason: "test".into(),
                    request_id: new_id(),
                })
                .await,
        ),
    ));
    got.push((
        "/ledger.v1.Views/SetConversationState",
        code(
            views
                .set_conversation_state(pb::SetConversationStateRequest { customer_id: us.clone(), stream: "conv".into(), state: "resolved".into(), agent: "agent-1".into(), request_id: new_id() })
                .await,
        ),
    ));

    let mut wrong = Vec::new();
    for (path, want) in EXPECTED {
        let Some((_, code)) = got.iter().find(|(p, _)| p == path) else {
            wrong.push(format!("{path}: not called"));
            continue;
        };
        let denied = *code == Code::PermissionDenied;
        if denied != want.starts_with("denied") || (!denied && *code != Code::Ok) {
            wrong.push(format!("{path}: {code:?}, expected {want}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Every service method the server describes is in the matrix.
    for path in all_method_paths() {
        assert!(EXPECTED.iter().any(|(p, _)| *p == path), "{path} is not in the region matrix");
    }

    // The us customer was not touched: its one event, readable, and the us token still works.
    assert_eq!(read_stream(&mut root, &us, "conv").await.len(), 1);
    assert!(admin.list_tokens(pb::ListTokensRequest {}).await.unwrap().into_inner().tokens.iter().any(|t| t.id == us_id && t.revoked_unix_ms == 0));

    // Access records: the global and the us system streams are closed to eu; the eu one is open
    // and holds records about eu customers only.
    let (eu_region, us_region) = (Region::parse("eu", "r").unwrap(), Region::parse("us", "r").unwrap());
    for closed in [SYSTEM_CUSTOMER, system_customer_of(&us_region)] {
        let r = ledger.read_stream(pb::ReadStreamRequest { customer_id: closed.to_string(), stream: ACCESS_STREAM.into(), max_count: 1000, ..Default::default() }).await;
        assert_eq!(code(r), Code::PermissionDenied, "{closed}'s access records are readable by eu");
    }
    // Read something of eu so the eu system stream has a record, then read that stream.
    assert_eq!(read_stream(&mut ledger, &eu, "conv").await.len(), 1);
    let eu_records = read_stream(&mut ledger, &system_customer_of(&eu_region).to_string(), ACCESS_STREAM).await;
    assert!(!eu_records.is_empty());
    for ev in &eu_records {
        let rec: ledger::access::AccessRecord = serde_json::from_slice(&ev.payload).unwrap();
        assert_eq!(rec.customer.map(|c| c.to_string()).as_deref(), Some(eu.as_str()), "{rec:?}");
    }
    // The us customer's trail shows the denied attempts, with the principal and the code.
    let trail = AuditClient::new(server.channel().await).get_customer_audit_trail(pb::GetCustomerAuditTrailRequest { customer_id: us.clone() }).await.unwrap().into_inner().entries;
    let denied: Vec<&str> = trail.iter().filter(|e| e.principal == "eu-all" && e.outcome == "ledger.permission_denied").map(|e| e.action.as_str()).collect();
    for action in ["ledger.v1.Ledger/ReadStream", "ledger.v1.Privacy/EraseCustomer", "ledger.v1.Audit/Replay", "ledger.v1.Views/GetCustomerContext"] {
        assert!(denied.contains(&action), "{action} denial not in the us customer's trail: {denied:?}");
    }
}

/// A scoped DPO asks for the status of its own erasure by request id or by customer; a second
/// request id for an already-erased customer is answered OK and then known to `GetErasureStatus`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_status_answers_every_request_it_accepted_within_scope() {
    let server = Server::start(&[]);
    let mut admin = AdminClient::new(server.channel().await);
    let (dpo_token, _) = token(&mut admin, "eu-dpo", &["dpo"], &["eu"]).await;
    let mut root = server.client().await;
    let customer = new_id();
    root.append(append_req(&customer, "conv", vec![proposed(b"hello")])).await.unwrap();
    let mut dpo = PrivacyClient::new(server.channel_as(Some(&dpo_token)).await);
    let erase = |request_id: &str| pb::EraseCustomerRequest { customer_id: customer.clone(), request_id: request_id.into(), legal_basis: "gdpr-art17".into(), requested_by: "dpo".into() };
    let (first, second) = (new_id(), new_id());
    let certificate = dpo.erase_customer(erase(&first)).await.unwrap().into_inner().certificate;
    let again = dpo.erase_customer(erase(&second)).await.unwrap().into_inner().certificate;
    assert_eq!(certificate, again, "the repeat is answered with the same certificate");
    for id in [&first, &second] {
        let status = dpo.get_erasure_status(pb::GetErasureStatusRequest { request_id: id.clone(), customer_id: String::new() }).await.unwrap().into_inner().status.unwrap();
        assert_eq!(status.customer_id, customer);
        assert_eq!(status.certificate, certificate);
        assert_eq!(status.also_requested_as, vec![second.clone()]);
    }
    let by_customer = dpo.get_erasure_status(pb::GetErasureStatusRequest { customer_id: customer.clone(), request_id: String::new() }).await.unwrap().into_inner();
    assert_eq!(by_customer.status.unwrap().request_id, first);
    let unknown = dpo.get_erasure_status(pb::GetErasureStatusRequest { request_id: new_id(), customer_id: String::new() }).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}
