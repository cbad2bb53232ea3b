//! End to end over real gRPC: append and read back, idempotent retries, expected versions,
//! residency, health and reflection, and every kind of bad input, which must get a clear status and
//! leave the store unchanged.

mod common;
use common::*;
use proto::v1 as pb;
use tonic::Code;

#[tokio::test]
async fn append_then_read_back_everything_a_caller_needs() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let customer = new_id();
    let mut first = proposed(b"hello from the customer");
    first.metadata.insert("provider".into(), "meta".into());
    first.occurred_at = Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 250_000_000 });
    let out = c.append(append_req(&customer, "conv-1", vec![first.clone(), proposed(b"second")])).await.unwrap().into_inner();
    assert_eq!((out.first_position, out.next_stream_version, out.tree_size), (0, 2, 2));
    assert_eq!(out.root_hash.len(), 32);
    assert!(!out.idempotent_replay);

    let events = read_stream(&mut c, &customer, "conv-1").await;
    assert_eq!(events.len(), 2);
    let e = &events[0];
    assert_eq!((e.position, e.stream_version), (0, 0));
    assert_eq!(e.payload, b"hello from the customer");
    assert_eq!(e.payload_state, pb::PayloadState::Available as i32);
    assert_eq!(e.event_id, first.event_id);
    assert_eq!(e.customer_id, customer);
    assert_eq!(e.metadata.get("provider").map(String::as_str), Some("meta"));
    assert_eq!(e.occurred_at, first.occurred_at);
    assert!(e.recorded_at.is_some());
    assert_eq!((e.key_version, e.schema_version), (1, 1));
    // The root in the response is the RFC 9162 root of the leaves the reads return.
    let leaves: Vec<[u8; 32]> = events.iter().map(|e| e.leaf_hash.as_slice().try_into().unwrap()).collect();
    assert_eq!(root_of(&leaves).to_vec(), out.root_hash);

    // Backward reads and ReadAll with filters.
    let back = c
        .read_stream(pb::ReadStreamRequest {
            customer_id: customer.clone(),
            stream: "conv-1".into(),
            direction: pb::ReadDirection::Backward as i32,
            max_count: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.events[0].stream_version, 1);
    let other = new_id();
    c.append(append_req(&other, "conv-9", vec![proposed(b"other customer")])).await.unwrap();
    let mut filtered = c
        .read_all(pb::ReadAllRequest {
            from_position: 0,
            max_count: 0,
            filter: Some(pb::EventFilter { customer_id: other.clone(), ..Default::default() }),
        })
        .await
        .unwrap()
        .into_inner();
    let msg = filtered.message().await.unwrap().unwrap();
    assert_eq!(msg.events.len(), 1);
    assert_eq!(msg.events[0].customer_id, other);
    assert_eq!(read_customer_events(&mut c).await.len(), 3);
    // Filters by event type and by channel.
    let mut sms = proposed(b"an sms");
    sms.channel = pb::Channel::Sms as i32;
    sms.event_type = "MessageSent".into();
    c.append(append_req(&other, "conv-9", vec![sms])).await.unwrap();
    for filter in [
        pb::EventFilter { event_types: vec!["MessageSent".into()], ..Default::default() },
        pb::EventFilter { channels: vec![pb::Channel::Sms as i32], ..Default::default() },
    ] {
        let mut s = c.read_all(pb::ReadAllRequest { filter: Some(filter.clone()), ..Default::default() }).await.unwrap().into_inner();
        let mut got = Vec::new();
        while let Some(msg) = s.message().await.unwrap() {
            got.extend(msg.events);
        }
        assert_eq!(got.len(), 1, "{filter:?}");
        assert_eq!(got[0].payload, b"an sms");
    }
    // Payloads never reach the logs.
    assert!(!server.logs().contains("hello from the customer"));
}

#[tokio::test]
async fn retries_are_idempotent_and_reused_ids_are_refused() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let customer = new_id();
    let req = append_req(&customer, "conv", vec![proposed(b"a"), proposed(b"b")]);
    let first = c.append(req.clone()).await.unwrap().into_inner();
    c.append(append_req(&customer, "conv", vec![proposed(b"c")])).await.unwrap();
    let again = c.append(req.clone()).await.unwrap().into_inner();
    assert!(again.idempotent_replay);
    assert_eq!(again.first_position, first.first_position);
    assert_eq!(again.tree_size, 3, "nothing new written");

    let mut changed = req.clone();
    changed.events[1].payload = b"different".to_vec();
    let err = c.append(changed).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(&req.events[1].event_id), "{}", err.message());
    assert_eq!(read_customer_events(&mut c).await.len(), 3);
}

#[tokio::test]
async fn expected_version_conflicts_report_the_actual_version() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let customer = new_id();
    let mut req = append_req(&customer, "conv", vec![proposed(b"a")]);
    req.expected_version = no_stream();
    c.append(req.clone()).await.unwrap();
    let mut second = append_req(&customer, "conv", vec![proposed(b"b")]);
    second.expected_version = no_stream();
    let err = c.append(second.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.metadata().get("ledger-actual-version").unwrap(), "0");
    assert_eq!(err.metadata().get("ledger-error-code").unwrap(), "ledger.wrong_expected_version");
    second.expected_version = exact(5);
    assert_eq!(c.append(second.clone()).await.unwrap_err().code(), Code::FailedPrecondition);
    second.expected_version = exact(0);
    assert_eq!(c.append(second).await.unwrap().into_inner().next_stream_version, 2);
}

#[tokio::test]
async fn bad_input_gets_a_clear_status_and_changes_nothing() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let customer = new_id();
    c.append(append_req(&customer, "conv", vec![proposed(b"seed")])).await.unwrap();
    let before = read_customer_events(&mut c).await;

    let ok = || append_req(&customer, "conv", vec![proposed(b"x")]);
    let mut cases: Vec<(&str, pb::AppendRequest, Code, &str)> = Vec::new();
    let mut r = ok();
    r.events[0].payload.clear();
    cases.push(("empty payload", r, Code::InvalidArgument, "payload"));
    let mut r = ok();
    r.events[0].payload = vec![7u8; 1024 * 1024 + 1];
    cases.push(("oversized payload", r, Code::InvalidArgument, "payload_bytes_max"));
    let mut r = ok();
    r.events = (0..1001).map(|_| proposed(b"x")).collect();
    cases.push(("too many events", r, Code::InvalidArgument, "events_per_append_max"));
    let mut r = ok();
    r.events.clear();
    cases.push(("no events", r, Code::InvalidArgument, "events"));
    let mut r = append_req(&new_id(), "conv", vec![proposed(b"x")]);
    r.region = "mars".into();
    cases.push(("unknown region", r, Code::FailedPrecondition, "region mars is not served"));
    let mut r = append_req(&new_id(), "conv", vec![proposed(b"x")]);
    r.region.clear();
    cases.push(("new customer without region", r, Code::InvalidArgument, "region"));
    let mut r = ok();
    r.region = "us".into();
    cases.push(("region mismatch", r, Code::FailedPrecondition, "region does not match"));
    let mut r = ok();
    r.customer_id = "+5511912345678".into();
    cases.push(("malformed customer id", r, Code::InvalidArgument, "customer_id"));
    let mut r = ok();
    r.events[0].event_id = "not-a-uuid".into();
    cases.push(("malformed event id", r, Code::InvalidArgument, "event_id"));
    let mut r = ok();
    r.stream = "alice@example.com".into();
    cases.push(("stream name with an email", r, Code::InvalidArgument, "stream"));
    let mut r = ok();
    r.events[0].channel = 0;
    cases.push(("unspecified channel", r, Code::InvalidArgument, "channel"));
    let mut r = ok();
    r.events.push(r.events[0].clone());
    cases.push(("duplicate id in one append", r, Code::InvalidArgument, "unique"));
    let mut r = ok();
    for i in 0..17 {
        r.events[0].metadata.insert(format!("k{i}"), "v".into());
    }
    cases.push(("too much metadata", r, Code::InvalidArgument, "metadata"));
    let mut r = ok();
    r.expected_version = exact(9);
    cases.push(("expected version conflict", r, Code::FailedPrecondition, "wrong expected version"));

    for (name, req, code, needle) in cases {
        let err = c.append(req).await.expect_err(name);
        assert_eq!(err.code(), code, "{name}: {}", err.message());
        assert!(err.message().contains(needle), "{name}: message {:?} should mention {needle:?}", err.message());
        assert!(!err.message().contains("5511912345678"), "{name}: rejected values are not echoed");
    }
    let after = read_customer_events(&mut c).await;
    assert_eq!(after, before, "bad input changed the store");

    // Reads of a region this node does not serve are refused too.
    let err = c
        .read_stream(pb::ReadStreamRequest { customer_id: customer, stream: "conv".into(), max_count: 5000, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "page over page_size_max");
}

#[tokio::test]
async fn residency_is_enforced_across_nodes() {
    // One node serves eu and us and creates a us customer; a node that serves only eu refuses it.
    let dir = tempfile::tempdir().unwrap();
    let customer = new_id();
    {
        let server = Server::start_in(dir.path(), &[]);
        let mut c = server.client().await;
        let mut req = append_req(&customer, "conv", vec![proposed(b"us data")]);
        req.region = "us".into();
        c.append(req).await.unwrap();
    }
    let server = Server::start_in(dir.path(), &["--regions", "eu"]);
    let mut c = server.client().await;
    let err = c.append(append_req(&customer, "conv", vec![proposed(b"more")])).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = c
        .read_stream(pb::ReadStreamRequest { customer_id: customer.clone(), stream: "conv".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("region us is not served"));
    // The global log keeps its positions but does not decrypt the other region's payloads.
    let all = read_customer_events(&mut c).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].payload_state, pb::PayloadState::RegionNotServed as i32);
    assert!(all[0].payload.is_empty());
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let server = Server::start(&[]);
    // Health checks need no credentials; reflection needs a token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel_as(None).await);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest { service: "ledger.v1.Ledger".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    use tonic_reflection::pb::v1::{server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest, server_reflection_response::MessageResponse, ServerReflectionRequest};
    let mut refl = ServerReflectionClient::new(server.channel().await);
    let req = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut resp = refl.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let msg = resp.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else { panic!("no service list") };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"ledger.v1.Ledger"), "{names:?}");
    assert!(names.contains(&"ledger.v1.Audit"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
}
