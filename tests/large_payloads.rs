//! Reads of large payloads stay within a default gRPC client's 4 MiB message limit: messages are
//! bounded by bytes as well as by event count, on ReadStream, ReadAll and Subscribe.

mod common;
use common::*;
use proto::v1 as pb;
use proto::v1::ledger_client::LedgerClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_client_reads_large_payloads() {
    let server = Server::start(&[]);
    // A client with tonic's default limits: it refuses messages over 4 MiB.
    let mut c = LedgerClient::new(server.channel().await);
    let customer = new_id();
    let payloads: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; 900 * 1024]).collect();
    let events = payloads.iter().map(|p| proposed(p)).collect();
    c.append(append_req(&customer, "attachments", events)).await.unwrap();

    let req = pb::ReadStreamRequest { customer_id: customer.clone(), stream: "attachments".into(), ..Default::default() };
    let mut s = c.read_stream(req).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(msg) = s.message().await.unwrap() {
        got.extend(msg.events.into_iter().map(|e| e.payload));
    }
    assert_eq!(got, payloads, "read stream");

    // The customer's events only: every read also appends an access record to the system stream.
    let only = Some(pb::EventFilter { customer_id: customer.clone(), ..Default::default() });
    let mut s = c.read_all(pb::ReadAllRequest { filter: only.clone(), ..Default::default() }).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(msg) = s.message().await.unwrap() {
        got.extend(msg.events.into_iter().map(|e| e.payload));
    }
    assert_eq!(got, payloads, "read all");

    // Live: subscribe at the end, append another large batch, receive it in bounded messages.
    let mut sub = c.subscribe(pb::SubscribeRequest { from_position: 12, filter: only }).await.unwrap().into_inner();
    let more: Vec<Vec<u8>> = (20..28u8).map(|i| vec![i; 900 * 1024]).collect();
    c.append(append_req(&customer, "attachments", more.iter().map(|p| proposed(p)).collect())).await.unwrap();
    let mut got = Vec::new();
    while got.len() < more.len() {
        let msg = sub.message().await.unwrap().unwrap();
        got.extend(msg.events.into_iter().map(|e| e.payload));
    }
    assert_eq!(got, more, "subscribe");
}
