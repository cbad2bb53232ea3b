//! Authentication and authorization end to end: every method called by every role (allowed or
//! PERMISSION_DENIED as the issue defines the roles), no or bad credentials refused, expired and
//! revoked tokens refused, region scopes held for reads, exports and erasure, and every refusal
//! in the access trail. Also the safe defaults: the admin token file, and no plaintext listener
//! beyond loopback unless overridden.

mod common;
use common::*;
use proto::v1 as pb;
use proto::v1::admin_client::AdminClient;
use proto::v1::privacy_client::PrivacyClient;

/// Who may call what, as the issue defines the roles (written out here, independently of the
/// server's table). `open` is health; `any` is any authenticated principal.
const EXPECTED: &[(&str, &str)] = &[
    ("/grpc.health.v1.Health/Check", "open"),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "any"),
    ("/ledger.v1.Ledger/Append", "appender"),
    ("/ledger.v1.Ledger/ResolveCustomer", "appender"),
    ("/ledger.v1.Ledger/LinkIdentifier", "appender"),
    ("/ledger.v1.Ledger/ReadStream", "reader"),
    ("/ledger.v1.Ledger/ReadAll", "reader"),
    ("/ledger.v1.Ledger/Subscribe", "reader"),
    ("/ledger.v1.Audit/GetTreeHead", "auditor"),
    ("/ledger.v1.Audit/GetInclusionProof", "auditor"),
    ("/ledger.v1.Audit/GetConsistencyProof", "auditor"),
    ("/ledger.v1.Audit/Replay", "auditor"),
    ("/ledger.v1.Audit/ListLeafHashes", "auditor"),
    ("/ledger.v1.Audit/GetCustomerAuditTrail", "auditor dpo"),
    ("/ledger.v1.Privacy/EraseCustomer", "dpo"),
    ("/ledger.v1.Privacy/GetErasureStatus", "dpo"),
    ("/ledger.v1.Privacy/ExportCustomer", "dpo"),
    ("/ledger.v1.Privacy/ExportRegion", "dpo"),
    ("/ledger.v1.Privacy/RetryDeadLetters", "admin"),
    ("/ledger.v1.Admin/RotateRegionKey", "admin"),
    ("/ledger.v1.Admin/DestroyRegionKey", "admin"),
    ("/ledger.v1.Admin/ListRegionKeys", "admin"),
    ("/ledger.v1.Admin/GetProjectionStatus", "admin"),
    ("/ledger.v1.Admin/RebuildProjection", "admin"),
    ("/ledger.v1.Admin/CreateToken", "admin"),
    ("/ledger.v1.Admin/RevokeToken", "admin"),
    ("/ledger.v1.Admin/ListTokens", "admin"),
    ("/ledger.v1.Messaging/SendMessage", "appender"),
    ("/ledger.v1.Views/GetCustomerContext", "reader"),
    ("/ledger.v1.Views/CrmSyncStatus", "reader admin"),
    ("/ledger.v1.Views/GetConversation", "reader"),
    ("/ledger.v1.Views/ListQueue", "reader"),
    ("/ledger.v1.Views/Reroute", "appender"),
    ("/ledger.v1.Views/SetConversationState", "appender"),
];

const ROLES: [&str; 5] = ["appender", "reader", "auditor", "dpo", "admin"];

/// Calls `path` with an empty request message (every field at its default) as a bidirectional
/// stream, which reaches unary and streaming methods alike; returns the status code the call got
/// (Ok if the server accepted it).
async fn call(channel: Conn, path: &'static str) -> tonic::Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let request = tonic::Request::new(tokio_stream::iter(vec![()]));
    match grpc.streaming(request, http::uri::PathAndQuery::from_static(path), codec).await {
        Ok(mut response) => match tokio::time::timeout(std::time::Duration::from_millis(300), response.get_mut().message()).await {
            Ok(Err(status)) => status.code(),
            _ => tonic::Code::Ok,
        },
        Err(status) => status.code(),
    }
}

async fn create_token(admin: &mut AdminClient<Conn>, principal: &str, roles: &[&str], regions: &[&str], ttl_seconds: u64) -> (String, String) {
    let r = admin
        .create_token(pb::CreateTokenRequest {
            principal: principal.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            regions: regions.iter().map(|r| r.to_string()).collect(),
            ttl_seconds,
        })
        .await
        .unwrap()
        .into_inner();
    (r.token, r.info.unwrap().id)
}

/// The access records of refusals, from the whole log.
async fn refusals(server: &Server) -> Vec<ledger::access::AccessRecord> {
    let mut c = server.client().await;
    read_all(&mut c)
        .await
        .into_iter()
        .filter(|e| e.stream == ledger::access::ACCESS_STREAM)
        .map(|e| serde_json::from_slice::<ledger::access::AccessRecord>(&e.payload).unwrap())
        .filter(|r| r.outcome == "ledger.permission_denied" || r.outcome == "ledger.unauthenticated")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_by_every_role_is_allowed_or_denied_as_the_roles_say() {
    let server = Server::start(&[]);
    let mut admin = AdminClient::new(server.channel().await);
    let mut tokens = Vec::new();
    for role in ROLES {
        tokens.push((role, create_token(&mut admin, &format!("svc-{role}"), &[role], &[], 0).await.0));
    }
    let mut wrong = Vec::new();
    for (path, who) in EXPECTED {
        // No credentials: only health answers.
        let code = call(server.channel_as(None).await, path).await;
        let denied = matches!(code, tonic::Code::Unauthenticated);
        if denied != (*who != "open") {
            wrong.push(format!("{path} without credentials: {code:?}"));
        }
        for (role, token) in &tokens {
            let code = call(server.channel_as(Some(token)).await, path).await;
            let allowed = !matches!(code, tonic::Code::PermissionDenied | tonic::Code::Unauthenticated);
            let expected = *who == "open" || *who == "any" || who.split(' ').any(|w| w == *role);
            if allowed != expected {
                wrong.push(format!("{path} as {role}: {code:?}, expected {}", if expected { "allowed" } else { "denied" }));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Every service method the server describes is in the table above, so none is unchecked.
    for path in all_method_paths() {
        assert!(EXPECTED.iter().any(|(p, _)| *p == path), "{path} is not in the role matrix");
    }
    // The denials are in the trail, with principal, action, origin and outcome.
    let refused = refusals(&server).await;
    let denial = refused.iter().find(|r| r.principal == "svc-reader" && r.action == "ledger.v1.Privacy/EraseCustomer").expect("a recorded denial");
    assert_eq!(denial.outcome, "ledger.permission_denied");
    assert!(denial.origin.starts_with("127.0.0.1:") && denial.at_unix_ms > 0);
    assert!(refused.iter().any(|r| r.outcome == "ledger.unauthenticated" && r.action == "ledger.v1.Ledger/ReadAll"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expired_and_revoked_tokens_are_refused_and_recorded() {
    let server = Server::start(&[]);
    let mut admin = AdminClient::new(server.channel().await);
    let (token, id) = create_token(&mut admin, "svc-reader", &["reader"], &[], 0).await;
    let (short, _) = create_token(&mut admin, "svc-short", &["reader"], &[], 1).await;
    let path = "/ledger.v1.Ledger/ReadAll";
    assert_eq!(call(server.channel_as(Some(&token)).await, path).await, tonic::Code::Ok);
    assert_eq!(call(server.channel_as(Some(&short)).await, path).await, tonic::Code::Ok);
    assert_eq!(call(server.channel_as(Some("ldg_0000")).await, path).await, tonic::Code::Unauthenticated);
    admin.revoke_token(pb::RevokeTokenRequest { id: id.clone() }).await.unwrap();
    assert_eq!(call(server.channel_as(Some(&token)).await, path).await, tonic::Code::Unauthenticated);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(call(server.channel_as(Some(&short)).await, path).await, tonic::Code::Unauthenticated);
    let listed = admin.list_tokens(pb::ListTokensRequest {}).await.unwrap().into_inner().tokens;
    assert!(listed.iter().any(|t| t.id == id && t.revoked_unix_ms > 0));
    let reasons: Vec<String> = refusals(&server).await.iter().filter_map(|r| r.params.get("reason").cloned()).collect();
    for why in ["unknown token", "revoked token", "expired token"] {
        assert!(reasons.iter().any(|r| r == why), "{why} not recorded: {reasons:?}");
    }
    // The store holds hashes only: no token in any file under the data directory.
    for t in [&token, &short] {
        assert_eq!(files_containing(&server.data_dir, t.as_bytes()), Vec::<std::path::PathBuf>::new());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_scopes_hold_for_reads_exports_and_erasure() {
    let server = Server::start(&[]);
    let mut admin = AdminClient::new(server.channel().await);
    let (eu_reader, _) = create_token(&mut admin, "eu-reader", &["reader"], &["eu"], 0).await;
    let (eu_dpo, _) = create_token(&mut admin, "eu-dpo", &["dpo"], &["eu"], 0).await;
    let mut c = server.client().await;
    let (eu, us) = (new_id(), new_id());
    c.append(append_req(&eu, "conv", vec![proposed(b"eu text")])).await.unwrap();
    let mut req = append_req(&us, "conv", vec![proposed(b"us text")]);
    req.region = "us".into();
    c.append(req).await.unwrap();

    let mut reader = proto::v1::ledger_client::LedgerClient::new(server.channel_as(Some(&eu_reader)).await);
    assert_eq!(read_stream(&mut reader, &eu, "conv").await.len(), 1);
    let denied = reader.read_stream(pb::ReadStreamRequest { customer_id: us.clone(), stream: "conv".into(), max_count: 10, ..Default::default() }).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    // Across customers, a scoped reader must name one of its own.
    let whole = reader.read_all(pb::ReadAllRequest::default()).await.unwrap_err();
    assert_eq!(whole.code(), tonic::Code::PermissionDenied);
    let filter = Some(pb::EventFilter { customer_id: eu.clone(), ..Default::default() });
    assert!(reader.read_all(pb::ReadAllRequest { filter, ..Default::default() }).await.is_ok());

    let mut dpo = PrivacyClient::new(server.channel_as(Some(&eu_dpo)).await);
    assert_eq!(dpo.export_customer(pb::ExportCustomerRequest { customer_id: us.clone() }).await.unwrap_err().code(), tonic::Code::PermissionDenied);
    assert_eq!(dpo.export_region(pb::ExportRegionRequest { region: "us".into() }).await.unwrap_err().code(), tonic::Code::PermissionDenied);
    assert!(dpo.export_region(pb::ExportRegionRequest { region: "eu".into() }).await.is_ok());
    let erase = |customer: &str| pb::EraseCustomerRequest { customer_id: customer.into(), request_id: new_id(), legal_basis: "gdpr-art17".into(), requested_by: "dpo".into() };
    assert_eq!(dpo.erase_customer(erase(&us)).await.unwrap_err().code(), tonic::Code::PermissionDenied);
    dpo.erase_customer(erase(&eu)).await.unwrap();
    // The US customer is untouched; the refusal is recorded with the principal and the region.
    assert_eq!(read_stream(&mut c, &us, "conv").await[0].payload, b"us text");
    let refused = refusals(&server).await;
    for (who, action) in [("eu-reader", "ledger.v1.Ledger/ReadStream"), ("eu-reader", "ledger.v1.Ledger/ReadAll"), ("eu-dpo", "ledger.v1.Privacy/ExportRegion"), ("eu-dpo", "ledger.v1.Privacy/EraseCustomer")] {
        assert!(refused.iter().any(|r| r.principal == who && r.action == action), "{who} {action} not recorded: {refused:#?}");
    }
    // A scoped admin cannot mint a token wider than itself.
    let (eu_admin, _) = create_token(&mut admin, "eu-admin", &["admin"], &["eu"], 0).await;
    let mut scoped_admin = AdminClient::new(server.channel_as(Some(&eu_admin)).await);
    let wider = scoped_admin.create_token(pb::CreateTokenRequest { principal: "x".into(), roles: vec!["reader".into()], regions: vec![], ttl_seconds: 0 }).await.unwrap_err();
    assert_eq!(wider.code(), tonic::Code::PermissionDenied);
}

#[test]
fn the_first_start_writes_a_private_admin_token_and_plaintext_beyond_loopback_is_refused() {
    let server = Server::start(&[]);
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(server.data_dir.join("admin.token")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(server.admin_token().starts_with("ldg_"));
    assert!(server.logs().contains("created an admin token"));
    assert!(!server.logs().contains(&server.admin_token()), "the token itself is never logged");
    // The CLI finds the token by itself (here through LEDGER_TOKEN_FILE, as on the server's
    // machine through the data directory).
    let o = server.cli(&["projections", "status"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = ledgerd(&["projections", "status", "--target", &server.endpoint()]);
    assert!(!o.status.success() && text(&o).contains("Unauthenticated"), "{}", text(&o));

    let dir = tempfile::tempdir().unwrap();
    let o = ledgerd(&["serve", "--grpc-addr", "0.0.0.0:0", "--http-addr", "127.0.0.1:0", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("refusing to serve plaintext grpc"), "{}", text(&o));
}

#[test]
fn the_cli_creates_a_token_into_a_private_file_without_printing_it() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reader.token");
    let o = server.cli(&["tokens", "create", "--principal", "crm-sync", "--roles", "reader", "--regions", "eu", "--out", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("ldg_"), "the token is not printed: {}", text(&o));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let token = std::fs::read_to_string(&path).unwrap().trim().to_owned();
    // A reader's token is valid (not 401) but may not read metrics (403).
    assert_eq!(server.http_get_as("/metrics", Some(&token)).0, 403);
    let o = server.cli(&["tokens", "list"]);
    assert!(text(&o).contains("crm-sync roles=reader regions=eu active") && !text(&o).contains(&token), "{}", text(&o));
}
