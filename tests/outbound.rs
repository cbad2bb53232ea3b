//! Outbound WhatsApp messages against a local fake Cloud API: success, a transient failure then
//! success, a permanent failure, the 24-hour window, a rate limit, idempotent requests, and a
//! restart with a message still in the outbox.

mod common;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use proto::v1 as pb;
use proto::v1::messaging_client::MessagingClient;

const WA_SECRET: &str = "wa-app-secret";
const NUMBER: &str = "106540352242922";

/// The fake Cloud API: scripted by the text it is asked to send.
#[derive(Clone, Default)]
struct Fake {
    requests: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
    down: Arc<Mutex<bool>>,
}

async fn fake_provider() -> (String, Fake) {
    let fake = Fake::default();
    let state = fake.clone();
    let twilio_state = fake.clone();
    let slack_state = fake.clone();
    let app = axum::Router::new()
        .route(
            "/2010-04-01/Accounts/{sid}/Messages.json",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let state = twilio_state.clone();
                async move {
                    let form: serde_json::Map<String, serde_json::Value> =
                        form_urlencoded::parse(body.as_bytes()).map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned()))).collect();
                    let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
                    state.requests.lock().unwrap().push((auth, serde_json::Value::Object(form)));
                    (axum::http::StatusCode::CREATED, [(axum::http::header::CONTENT_TYPE, "application/json")], r#"{"sid":"SM0123456789abcdef","status":"queued"}"#)
                }
            }),
        )
        .route(
            "/slack/chat.postMessage",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let state = slack_state.clone();
                async move {
                    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                    let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
                    state.requests.lock().unwrap().push((auth, json));
                    ([(axum::http::header::CONTENT_TYPE, "application/json")], r#"{"ok":true,"channel":"C0LAN2Q65","ts":"1749416400.000300"}"#)
                }
            }),
        )
        .route(
        "/{number}/messages",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let state = state.clone();
            async move {
                let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
                let text = json.pointer("/text/body").and_then(|v| v.as_str()).unwrap_or("template").to_owned();
                let mut requests = state.requests.lock().unwrap();
                requests.push((auth, json));
                let seen = requests.iter().filter(|(_, j)| j.pointer("/text/body").and_then(|v| v.as_str()).unwrap_or("template") == text).count();
                let (code, reply) = if *state.down.lock().unwrap() {
                    (503, serde_json::json!({"error": {"code": 1}}))
                } else if text.contains("fail-twice") && seen <= 2 {
                    (500, serde_json::json!({"error": {"code": 2}}))
                } else if text.contains("permanent") {
                    (400, serde_json::json!({"error": {"code": 131026, "message": "undeliverable"}}))
                } else if text.contains("ratelimit") && seen == 1 {
                    (400, serde_json::json!({"error": {"code": 130429, "message": "rate limit hit"}}))
                } else {
                    (200, serde_json::json!({"messaging_product": "whatsapp", "messages": [{"id": format!("wamid.out.{}", requests.len())}]}))
                };
                (axum::http::StatusCode::from_u16(code).unwrap(), [(axum::http::header::CONTENT_TYPE, "application/json")], reply.to_string())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, fake)
}

fn write_config(dir: &std::path::Path, api: &str) -> std::path::PathBuf {
    let path = dir.join("ledgerd.toml");
    std::fs::write(
        &path,
        format!(
            "[routing]\n# These tests count the events ingestion writes; the router would add its own.\nenabled = false\n[connectors]\noutbound_backoff_initial_ms = 100\noutbound_attempts_max = 5\n\
             [[connectors.twilio]]\naccount_sid = \"AC123\"\nauth_token = \"twilio-token\"\nregion = \"eu\"\nfrom_number = \"+15005550006\"\napi_base_url = \"{api}\"\n\
             [[connectors.slack]]\nteam_id = \"T1DC2JH3J\"\nsigning_secret = \"s\"\nregion = \"eu\"\nbot_token = \"xoxb-test\"\napi_base_url = \"{api}/slack\"\n\
             [[connectors.whatsapp]]\nphone_number_id = \"{NUMBER}\"\napp_secret = \"{WA_SECRET}\"\nverify_token = \"v\"\nregion = \"eu\"\n\
             default_phone_region = \"BR\"\naccess_token = \"cloud-api-token\"\napi_base_url = \"{api}\"\n"
        ),
    )
    .unwrap();
    path
}

/// An inbound WhatsApp message from `wa_id` at `ts` (unix seconds), posted and signed.
fn inbound(server: &Server, wa_id: &str, ts: i64, id: &str) {
    let body = serde_json::json!({"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
        "messaging_product":"whatsapp","metadata":{"display_phone_number":"1","phone_number_id":NUMBER},
        "messages":[{"from":wa_id,"id":id,"timestamp":ts.to_string(),"type":"text","text":{"body":"hello"}}]}}]}]})
    .to_string();
    post_whatsapp_signed(server, WA_SECRET, &body);
}

/// The provider id recorded in a queued message's `MessageSent`.
async fn p_sent_id(server: &Server, queued: &str) -> String {
    outcome(server, queued).await.1["provider_message_id"].as_str().unwrap().to_owned()
}

/// A signed WhatsApp status callback.
fn status_webhook(server: &Server, wa_id: &str, wamid: &str, status: &str) {
    let body = serde_json::json!({"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
        "messaging_product":"whatsapp","metadata":{"display_phone_number":"1","phone_number_id":NUMBER},
        "statuses":[{"id":wamid,"status":status,"timestamp":now().to_string(),"recipient_id":wa_id}]}}]}]})
    .to_string();
    post_whatsapp_signed(server, WA_SECRET, &body);
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn customer_of(server: &Server, wa_id: &str) -> String {
    let mut c = server.client().await;
    c.resolve_customer(pb::ResolveCustomerRequest {
        identifier: Some(pb::Identifier { kind: pb::IdentifierKind::Whatsapp as i32, value: wa_id.into() }),
        region: "eu".into(),
        create: false,
        default_phone_region: "BR".into(),
    })
    .await
    .unwrap()
    .into_inner()
    .customer_id
}

/// A new customer with one identifier (phone numbers read with default region US).
async fn create_customer(server: &Server, kind: pb::IdentifierKind, value: &str) -> String {
    let req = pb::ResolveCustomerRequest {
        identifier: Some(pb::Identifier { kind: kind as i32, value: value.into() }),
        region: "eu".into(),
        create: true,
        default_phone_region: "US".into(),
    };
    server.client().await.resolve_customer(req).await.unwrap().into_inner().customer_id
}

fn text_request(customer: &str, wa_id: &str, text: &str, request_id: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        customer_id: customer.into(),
        account: NUMBER.into(),
        to: wa_id.into(),
        content: Some(pb::send_message_request::Content::Text(text.into())),
        request_id: request_id.into(),
        thread: String::new(),
    }
}

/// Waits for the outcome event of a queued message: (event type, payload).
async fn outcome(server: &Server, queued_event_id: &str) -> (String, serde_json::Value) {
    for _ in 0..200 {
        let events = read_customer_events(&mut server.client().await).await;
        for e in events.iter().filter(|e| e.event_type == "MessageSent" || e.event_type == "MessageFailed") {
            let p: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
            if p["queued_event_id"] == queued_event_id {
                return (e.event_type.clone(), p);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no outcome for {queued_event_id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_messages_are_recorded_delivered_retried_and_refused_by_the_rules() {
    let (api, fake) = fake_provider().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &api);
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    inbound(&server, "5511912345678", now() - 60, "wamid.in.1");
    let customer = customer_of(&server, "5511912345678").await;
    let mut m = MessagingClient::new(server.channel().await);
    let mut results = HashMap::new();
    for (text, id) in [("hello there", "r1"), ("please fail-twice", "r2"), ("permanent trouble", "r3"), ("ratelimit me", "r4")] {
        let r = m.send_message(text_request(&customer, "5511912345678", text, id)).await.unwrap().into_inner();
        results.insert(id, r.event_id);
    }
    // A repeat of a request id is the same message, delivered once.
    let again = m.send_message(text_request(&customer, "5511912345678", "hello there", "r1")).await.unwrap().into_inner();
    assert_eq!(again.event_id, results["r1"]);

    let (kind, p) = outcome(&server, &results["r1"]).await;
    assert_eq!(kind, "MessageSent");
    assert!(p["provider_message_id"].as_str().unwrap().starts_with("wamid.out."));
    let (kind, _) = outcome(&server, &results["r2"]).await;
    assert_eq!(kind, "MessageSent", "a transient failure is retried");
    let (kind, p) = outcome(&server, &results["r3"]).await;
    assert_eq!((kind.as_str(), p["error"].as_str().unwrap()), ("MessageFailed", "http 400, error 131026"));
    let (kind, _) = outcome(&server, &results["r4"]).await;
    assert_eq!(kind, "MessageSent", "a rate limit backs off and retries");

    let requests = fake.requests.lock().unwrap().clone();
    let count = |t: &str| requests.iter().filter(|(_, j)| j.pointer("/text/body").and_then(|v| v.as_str()) == Some(t)).count();
    assert_eq!(count("hello there"), 1, "one delivery for a repeated request id");
    assert_eq!(count("please fail-twice"), 3);
    assert_eq!(count("permanent trouble"), 1, "a permanent failure is not retried");
    assert_eq!(count("ratelimit me"), 2);
    assert!(requests.iter().all(|(auth, j)| auth == "Bearer cloud-api-token" && j["to"] == "5511912345678"));
    // The queued message is in the customer's conversation, before its outcome.
    let events = read_customer_events(&mut server.client().await).await;
    let queued = events.iter().find(|e| e.event_id == results["r1"]).unwrap();
    let sent = events.iter().find(|e| e.event_type == "MessageSent").unwrap();
    assert_eq!(queued.event_type, "MessageQueued");
    assert_eq!(queued.stream, events[0].stream, "the conversation the customer opened");
    assert!(queued.position < sent.position);

    // A status callback for the sent message links to the queued event.
    let wamid = p_sent_id(&server, &results["r1"]).await;
    status_webhook(&server, "5511912345678", &wamid, "delivered");
    let statuses: Vec<_> = read_customer_events(&mut server.client().await)
        .await
        .into_iter()
        .filter(|e| e.event_type == "MessageStatusUpdated")
        .map(|e| serde_json::from_slice::<serde_json::Value>(&e.payload).unwrap())
        .collect();
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0]["linked_event_id"], results["r1"].as_str());
    assert_eq!(statuses[0]["status"]["status"], "delivered");

    // Outside the 24-hour window: text is refused, a template goes out.
    inbound(&server, "5511987654321", now() - 25 * 3600, "wamid.in.old");
    let old = customer_of(&server, "5511987654321").await;
    let refused = m.send_message(text_request(&old, "5511987654321", "hi again", "r5")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("template"), "{}", refused.message());
    let template = pb::SendMessageRequest {
        content: Some(pb::send_message_request::Content::Template(pb::Template { name: "order_update".into(), language: "pt_BR".into(), parameters: vec!["41532".into()] })),
        ..text_request(&old, "5511987654321", "", "r6")
    };
    let t = m.send_message(template).await.unwrap().into_inner();
    assert_eq!(outcome(&server, &t.event_id).await.0, "MessageSent");
    // The recipient must be the customer.
    let wrong = m.send_message(text_request(&customer, "5511987654321", "hi", "r7")).await.unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_message_survives_a_restart() {
    let (api, fake) = fake_provider().await;
    *fake.down.lock().unwrap() = true;
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &api);
    let flags = ["--config", config.to_str().unwrap()];
    let mut server = Server::start_in(data.path(), &flags);
    inbound(&server, "5511912345678", now() - 60, "wamid.in.1");
    let customer = customer_of(&server, "5511912345678").await;
    let mut m = MessagingClient::new(server.channel().await);
    let queued = m.send_message(text_request(&customer, "5511912345678", "survive me", "r1")).await.unwrap().into_inner();
    for _ in 0..100 {
        if !fake.requests.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(m);
    assert!(server.terminate().success());
    *fake.down.lock().unwrap() = false;
    let server = Server::start_in(data.path(), &flags);
    let (kind, _) = outcome(&server, &queued.event_id).await;
    assert_eq!(kind, "MessageSent", "delivered after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_posts_go_to_the_thread() {
    let (api, fake) = fake_provider().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &api);
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let customer = create_customer(&server, pb::IdentifierKind::Slack, "T1DC2JH3J:U2CERLKJA").await;
    let mut m = MessagingClient::new(server.channel().await);
    let req = pb::SendMessageRequest {
        customer_id: customer,
        account: "T1DC2JH3J".into(),
        to: "C0LAN2Q65".into(),
        content: Some(pb::send_message_request::Content::Text("Taking this one".into())),
        request_id: "s1".into(),
        thread: "1749416390.000200".into(),
    };
    let queued = m.send_message(req).await.unwrap().into_inner();
    let (kind, p) = outcome(&server, &queued.event_id).await;
    assert_eq!(kind, "MessageSent");
    assert_eq!(p["provider_message_id"], "C0LAN2Q65:1749416400.000300");
    let requests = fake.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].0, "Bearer xoxb-test");
    assert_eq!(requests[0].1, serde_json::json!({"channel": "C0LAN2Q65", "text": "Taking this one", "thread_ts": "1749416390.000200"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_goes_out_through_twilio() {
    let (api, fake) = fake_provider().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &api);
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let customer = create_customer(&server, pb::IdentifierKind::Phone, "+1 212 555 0143").await;
    let mut m = MessagingClient::new(server.channel().await);
    let req = pb::SendMessageRequest { account: "AC123".into(), ..text_request(&customer, "(212) 555-0143", "Your order shipped", "t1") };
    let queued = m.send_message(req).await.unwrap().into_inner();
    let (kind, p) = outcome(&server, &queued.event_id).await;
    assert_eq!((kind.as_str(), p["provider_message_id"].as_str().unwrap()), ("MessageSent", "SM0123456789abcdef"));
    let requests = fake.requests.lock().unwrap().clone();
    assert_eq!(requests[0].1, serde_json::json!({"To": "+12125550143", "From": "+15005550006", "Body": "Your order shipped"}));
    use base64::Engine as _;
    assert_eq!(requests[0].0, format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("AC123:twilio-token")));
}

/// A customer who writes through Twilio's WhatsApp (`From=whatsapp:+55…`) asks for a person: the
/// router's acknowledgement goes out through Twilio on WhatsApp, to `whatsapp:<their number>`
/// from the `whatsapp:` number they wrote to, never as an SMS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twilio_whatsapp_customer_is_answered_on_whatsapp() {
    let (api, fake) = fake_provider().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &api);
    let text = std::fs::read_to_string(&config).unwrap().replace("enabled = false", "enabled = true\nsweep_interval_ms = 200");
    std::fs::write(&config, text).unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("MessageSid", "SMa1b2c3d4e5f6")
        .append_pair("AccountSid", "AC123")
        .append_pair("From", "whatsapp:+12125550143")
        .append_pair("To", "whatsapp:+14155238886")
        .append_pair("Body", "Quero falar com uma pessoa, meu pedido chegou quebrado")
        .append_pair("NumMedia", "0")
        .finish();
    let signature = {
        use base64::Engine as _;
        use hmac::Mac;
        let mut params: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes()).into_owned().collect();
        params.sort();
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(b"twilio-token").unwrap();
        mac.update(b"http://127.0.0.1:8080/webhooks/twilio");
        for (k, v) in &params {
            mac.update(k.as_bytes());
            mac.update(v.as_bytes());
        }
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    };
    let headers = [("X-Twilio-Signature", signature)];
    assert_eq!(http_post(&server, "/webhooks/twilio", &headers, &form), 200, "{}", server.logs());
    let mut sent = Vec::new();
    for _ in 0..200 {
        sent = fake.requests.lock().unwrap().clone();
        if !sent.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sent.len(), 1, "one acknowledgement: {sent:?}");
    let (auth, body) = &sent[0];
    use base64::Engine as _;
    assert_eq!(auth, &format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("AC123:twilio-token")), "sent through Twilio");
    assert_eq!(body["To"], "whatsapp:+12125550143");
    assert_eq!(body["From"], "whatsapp:+14155238886", "from the number the customer wrote to");
    assert!(body["Body"].as_str().unwrap().starts_with("Obrigado"), "acknowledged in Portuguese: {body}");
    // The outcome is recorded on the WhatsApp channel of the customer's conversation.
    let events = read_customer_events(&mut server.client().await).await;
    let queued = events.iter().find(|e| e.event_type == "MessageQueued").expect("queued");
    assert_eq!(queued.channel, pb::Channel::Whatsapp as i32);
    let p: serde_json::Value = serde_json::from_slice(&queued.payload).unwrap();
    assert_eq!((p["channel"].as_str(), p["to"].as_str()), (Some("whatsapp"), Some("whatsapp:+12125550143")));
}
