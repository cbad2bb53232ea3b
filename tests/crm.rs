//! CRM push against a real local HTTP server: every message becomes a signed activity, spaced to
//! the configured requests per minute, retried after 5xx (and after a lost acknowledgement, with
//! the same activity id so the CRM deduplicates), failed on 4xx, and counted in the coverage rate.
//! And the way back: `/webhooks/crm` events are verified, appended once, and show in the context.

mod common;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use proto::v1 as pb;
use proto::v1::views_client::ViewsClient;

const WA_SECRET: &str = "wa-app-secret";
const NUMBER: &str = "106540352242922";
const RPM: u64 = 240;

#[derive(Clone, Default)]
struct Crm {
    /// (webhook-id, received at, signature valid, body)
    requests: Arc<Mutex<Vec<(String, Instant, bool, serde_json::Value)>>>,
    /// Activities the CRM stored, deduplicated by id.
    stored: Arc<Mutex<BTreeSet<String>>>,
}

fn signing_secret() -> String {
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(b"crm-signing-key"))
}

async fn fake_crm() -> (String, Crm) {
    let crm = Crm::default();
    let state = crm.clone();
    let app = axum::Router::new().route(
        "/activities",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let s = state.clone();
            async move {
                let h = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
                let (id, ts, sig) = (h("webhook-id"), h("webhook-timestamp").parse::<i64>().unwrap(), h("webhook-signature"));
                let valid = erasure::webhook::verify(&signing_secret(), &id, ts, body.as_bytes(), &sig) && h("idempotency-key") == id;
                let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                let text = json["text"].as_str().unwrap_or_default().to_owned();
                let mut requests = s.requests.lock().unwrap();
                let seen = requests.iter().filter(|(i, ..)| *i == id).count();
                requests.push((id.clone(), Instant::now(), valid, json));
                let code = if text.contains("flaky") && seen == 0 {
                    503
                } else if text.contains("refuse") {
                    400
                } else {
                    // Stored (once per id, whatever the retries) ...
                    s.stored.lock().unwrap().insert(id);
                    // ... but the first acknowledgement of this one is lost.
                    if text.contains("lost-ack") && seen == 0 { 500 } else { 200 }
                };
                axum::http::StatusCode::from_u16(code).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/activities", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, crm)
}

fn inbound(server: &Server, wa_id: &str, text: &str) {
    let body = serde_json::json!({"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
        "messaging_product":"whatsapp","metadata":{"display_phone_number":"1","phone_number_id":NUMBER},
        "messages":[{"from":wa_id,"id":format!("wamid.{}", new_id()),"timestamp":"1763800000","type":"text","text":{"body":text}}]}}]}]})
    .to_string();
    post_whatsapp_signed(server, WA_SECRET, &body);
}

/// A CRM webhook, signed Standard Webhooks style with `secret`.
fn crm_event(server: &Server, secret: &str, id: &str, body: &str) -> u16 {
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let sig = erasure::webhook::sign(secret, id, ts, body.as_bytes());
    http_post(server, "/webhooks/crm", &[("webhook-id", id.to_owned()), ("webhook-timestamp", ts.to_string()), ("webhook-signature", sig)], body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activities_are_signed_paced_retried_deduplicated_and_counted() {
    let (endpoint, crm) = fake_crm().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ledgerd.toml");
    std::fs::write(
        &config,
        format!(
            "[[connectors.whatsapp]]\nphone_number_id = \"{NUMBER}\"\napp_secret = \"{WA_SECRET}\"\nverify_token = \"v\"\nregion = \"eu\"\ndefault_phone_region = \"BR\"\n\
             [crm]\nendpoint = \"{endpoint}\"\nsigning_secret = \"{}\"\nwebhook_secret = \"crm-inbound-secret\"\nrequests_per_minute = {RPM}\nbackoff_initial_ms = 100\n\
             [routing]\nenabled = false\n",
            signing_secret()
        ),
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let texts = ["hello one", "hello two", "flaky one", "lost-ack one", "refuse this", "hello three"];
    for (i, t) in texts.iter().enumerate() {
        inbound(&server, &format!("55119222200{i:02}"), t);
    }
    let mut views = ViewsClient::new(server.channel().await);
    let mut status = pb::CrmSyncStatusResponse::default();
    for _ in 0..400 {
        status = views.crm_sync_status(pb::CrmSyncStatusRequest {}).await.unwrap().into_inner();
        if status.activities == 6 && status.pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(status.enabled);
    assert_eq!((status.activities, status.acknowledged, status.failed, status.pending), (6, 5, 1, 0), "{status:?}");
    assert!((status.coverage_rate - 5.0 / 6.0).abs() < 1e-9, "{status:?}");
    assert_eq!(status.last_error, "http 400");

    let requests = crm.requests.lock().unwrap().clone();
    // Every request signed; the body names the activity the header does.
    assert!(requests.iter().all(|(id, _, valid, body)| *valid && body["activity_id"] == id.as_str() && body["type"] == "message.inbound"));
    // Retries reuse the activity id: 6 activities, 8 requests (the 503 and the lost ack), and the
    // CRM stored each acknowledged activity once.
    let ids: BTreeSet<&String> = requests.iter().map(|(id, ..)| id).collect();
    assert_eq!((ids.len(), requests.len()), (6, 8));
    assert_eq!(crm.stored.lock().unwrap().len(), 5);
    // The rate: consecutive requests at least 60/RPM s apart (less a scheduling margin).
    let mut times: Vec<Instant> = requests.iter().map(|(_, t, ..)| *t).collect();
    times.sort();
    let spacing = Duration::from_millis(60_000 / RPM - 25);
    for w in times.windows(2) {
        assert!(w[1] - w[0] >= spacing, "requests {:?} apart, the limit allows one per {} ms", w[1] - w[0], 60_000 / RPM);
    }
    let (_, metrics) = server.http_get("/metrics");
    assert!(metrics.contains("ledger_crm_coverage_ratio 0.83"), "{}", metrics.lines().filter(|l| l.contains("crm")).collect::<Vec<_>>().join("\n"));

    // The way back: a signed CRM event is appended once and shows in the customer's context.
    let customer = requests[0].3["customer_id"].as_str().unwrap().to_owned();
    let body = serde_json::json!({"type": "deal.stage_changed", "customer_id": customer, "data": {"stage": "won", "attributes": {"vip": "true"}}}).to_string();
    assert_eq!(crm_event(&server, "crm-inbound-secret", "evt-1", &body), 200);
    assert_eq!(crm_event(&server, "crm-inbound-secret", "evt-1", &body), 200, "a redelivery is accepted");
    assert_eq!(crm_event(&server, "wrong-secret", "evt-2", &body), 401);
    let stranger = serde_json::json!({"type": "x", "customer_id": new_id(), "data": {}}).to_string();
    assert_eq!(crm_event(&server, "crm-inbound-secret", "evt-3", &stranger), 404);
    assert_eq!(crm_event(&server, "crm-inbound-secret", "evt-4", "{not json"), 400);
    let mut ctx = pb::GetCustomerContextResponse::default();
    for _ in 0..200 {
        ctx = views.get_customer_context(pb::GetCustomerContextRequest { customer_id: customer.clone(), max_interactions: 10 }).await.unwrap().into_inner();
        if ctx.attributes.get("vip").is_some_and(|v| v == "true") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ctx.attributes.get("vip").map(String::as_str), Some("true"));
    let crm_events: Vec<&pb::Interaction> = ctx.interactions.iter().filter(|i| i.channel == "crm").collect();
    assert_eq!(crm_events.len(), 1, "the redelivery was not appended again");
    assert_eq!(crm_events[0].text, "deal.stage_changed");
}
