//! A malformed request is the caller's error. Every `ledger.v1` method gets bodies that are not
//! valid protobuf messages of it (the 3-byte body `0a 01 ff`, a customer id that is not UTF-8,
//! truncated varints and lengths, and seeded random mutations of a valid body): none may be
//! answered INTERNAL, and every refusal carries a registry code in `ledger-error-code`
//! (`ledger.malformed_request` for a body that does not decode).

mod common;
use common::*;
use prost::bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// Sends and receives raw bytes, so a test can put anything on the wire.
#[derive(Clone, Copy, Default)]
struct Raw;
struct RawEncoder;
struct RawDecoder;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// The status a call with `body` got (`None`: accepted).
async fn call(channel: Conn, path: String, body: Vec<u8>) -> Option<Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::try_from(path).unwrap();
    let request = tonic::Request::new(tokio_stream::iter(vec![body]));
    match grpc.streaming(request, path, Raw).await {
        Ok(mut response) => match tokio::time::timeout(std::time::Duration::from_millis(500), response.get_mut().message()).await {
            Ok(Err(status)) => Some(status),
            _ => None,
        },
        Err(status) => Some(status),
    }
}

/// xorshift64*: seeded, so a failure names the body that caused it and replays.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_bodies_are_invalid_argument_on_every_method() {
    let server = Server::start(&[]);
    use prost::Message;
    let methods = all_method_paths();
    assert!(methods.len() >= 30, "{methods:?}");
    // A valid Append body to mutate: field 1 (customer id), 3 (stream), 5 (an event).
    let valid = proto::v1::AppendRequest {
        customer_id: new_id(),
        stream: "conv".into(),
        events: vec![proposed(b"payload")],
        ..Default::default()
    }
    .encode_to_vec();
    let mut fixed: Vec<Vec<u8>> = vec![
        vec![0x0a, 0x01, 0xff],             // field 1, a 1-byte string that is not UTF-8
        vec![0x0a, 0x80],                   // a truncated length
        vec![0x08, 0xff, 0xff, 0xff, 0xff], // a truncated varint
        vec![0x0a, 0x05, b'a'],             // a length past the end
        vec![0x07],                         // wire type 7 does not exist
        vec![0x00],                         // field number 0
    ];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut bodies = Vec::new();
    bodies.append(&mut fixed);
    for _ in 0..24 {
        let mut b = valid.clone();
        for _ in 0..=(rng.next() % 4) {
            let i = (rng.next() as usize) % b.len();
            match rng.next() % 3 {
                0 => b[i] ^= 1 << (rng.next() % 8),
                1 => b.truncate(i.max(1)),
                _ => b.insert(i, rng.next() as u8),
            }
        }
        bodies.push(b);
    }
    let mut internal = Vec::new();
    let mut uncoded = Vec::new();
    let mut malformed = 0usize;
    let channel = server.channel().await;
    for method in &methods {
        for (i, body) in bodies.iter().enumerate() {
            let Some(status) = call(channel.clone(), method.clone(), body.clone()).await else { continue };
            let code = status.metadata().get("ledger-error-code").and_then(|v| v.to_str().ok()).map(str::to_owned);
            if status.code() == tonic::Code::Internal {
                internal.push(format!("{method} body {i} {body:02x?}: {status:?}"));
            }
            match code.as_deref() {
                Some("ledger.malformed_request") => {
                    malformed += 1;
                    assert_eq!(status.code(), tonic::Code::InvalidArgument);
                }
                Some(c) => assert!(c.starts_with("ledger."), "{c}"),
                None => uncoded.push(format!("{method} body {i}: {status:?}")),
            }
        }
    }
    assert!(internal.is_empty(), "{} INTERNAL answers to malformed bodies:\n{}", internal.len(), internal.join("\n"));
    assert!(uncoded.is_empty(), "{} refusals without a registry code:\n{}", uncoded.len(), uncoded.join("\n"));
    // The defect's own body: a customer id that is not UTF-8.
    let append = call(channel, "/ledger.v1.Ledger/Append".into(), vec![0x0a, 0x01, 0xff]).await.expect("refused");
    assert_eq!(append.code(), tonic::Code::InvalidArgument);
    assert_eq!(append.metadata().get("ledger-error-code").unwrap(), "ledger.malformed_request");
    assert!(malformed > 0);
    eprintln!("{} methods x {} bodies: {malformed} refused as malformed, none INTERNAL", methods.len(), bodies.len());
}
