//! The audit view end to end: a customer's trail lists every read, export and erasure of their
//! data (and reads of the whole log), survives the erasure, holds no payload text on disk, and is
//! the same after `ledgerd projections rebuild`.

mod common;
use common::*;
use proto::v1 as pb;

async fn trail(server: &Server, customer: &str) -> Vec<pb::AuditTrailEntry> {
    let mut audit = proto::v1::audit_client::AuditClient::new(server.channel().await);
    audit.get_customer_audit_trail(pb::GetCustomerAuditTrailRequest { customer_id: customer.into() }).await.unwrap().into_inner().entries
}


#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customers_trail_lists_every_access_and_survives_erasure_and_rebuild() {
    let server = Server::start(&[]);
    let (a, b) = (new_id(), new_id());
    let mut c = server.client().await;
    c.append(append_req(&a, "conv", vec![proposed(b"canary-payload-alpha")])).await.unwrap();
    c.append(append_req(&b, "conv", vec![proposed(b"bravo")])).await.unwrap();
    read_stream(&mut c, &a, "conv").await;
    read_stream(&mut c, &b, "conv").await;
    read_all(&mut c).await;
    let mut audit = proto::v1::audit_client::AuditClient::new(server.channel().await);
    let mut r = audit.replay(pb::ReplayRequest { customer_id: a.clone(), ..Default::default() }).await.unwrap().into_inner();
    while r.message().await.unwrap().is_some() {}
    let mut privacy = proto::v1::privacy_client::PrivacyClient::new(server.channel().await);
    let mut e = privacy.export_customer(pb::ExportCustomerRequest { customer_id: a.clone() }).await.unwrap().into_inner();
    while e.message().await.unwrap().is_some() {}
    privacy
        .erase_customer(pb::EraseCustomerRequest { customer_id: a.clone(), request_id: "req-a".into(), legal_basis: "gdpr-art17".into(), requested_by: "dpo-7".into() })
        .await
        .unwrap();

    let entries = trail(&server, &a).await;
    let actions: Vec<(&str, bool)> = entries.iter().map(|e| (e.action.as_str(), e.whole_log)).collect();
    assert_eq!(
        actions,
        vec![
            ("ledger.v1.Ledger/ReadStream", false),
            ("ledger.v1.Ledger/ReadAll", true),
            ("ledger.v1.Audit/Replay", false),
            ("ledger.v1.Privacy/ExportCustomer", false),
            ("ledger.v1.Privacy/EraseCustomer", false),
            ("erasure.requested", false),
            ("erasure.certified", false),
        ],
        "{entries:#?}"
    );
    assert!(entries.iter().all(|e| e.principal != "" && e.at.is_some()));
    // Access records name the authenticated principal; the erasure request names whom the DPO
    // says asked.
    assert!(entries.iter().filter(|e| e.action.starts_with("ledger.v1.")).all(|e| e.principal == "admin"), "{entries:#?}");
    assert_eq!(entries[5].principal, "dpo-7");
    assert!(entries[0].origin.starts_with("127.0.0.1:"));
    // B's trail has B's read and the whole-log read, none of A's.
    let b_actions: Vec<String> = trail(&server, &b).await.into_iter().map(|e| e.action).collect();
    assert_eq!(b_actions, vec!["ledger.v1.Ledger/ReadStream", "ledger.v1.Ledger/ReadAll"]);

    // No payload text in the views' files.
    assert_eq!(files_containing(&server.data_dir.join("projections"), b"canary-payload-alpha"), Vec::<std::path::PathBuf>::new());

    // Status, then a rebuild gives the same trail.
    let o = server.cli(&["projections", "status"]);
    assert!(o.status.success() && text(&o).contains("audit: checkpoint"), "{}", text(&o));
    let o = server.cli(&["projections", "rebuild", "audit"]);
    assert!(o.status.success() && text(&o).contains("audit: rebuilt from"), "{}", text(&o));
    let after: Vec<String> = trail(&server, &a).await.into_iter().map(|e| e.action).collect();
    assert_eq!(after, entries.iter().map(|e| e.action.clone()).collect::<Vec<_>>());
    let o = server.cli(&["projections", "rebuild", "nope"]);
    assert!(!o.status.success());
}
