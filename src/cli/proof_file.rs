//! `ledgerd audit replay` and `ledgerd export`: an audited Replay or an export, fetched over
//! gRPC and written as a proof file (the format and its offline verifier are the `proof` crate).
//! Written to a temporary name (0600), synced, then renamed; progress goes to stderr, never a
//! payload.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use clap::Args;
use proof::{Line, Scope, FORMAT};
use proto::v1 as pb;

/// Writes one event line straight from the wire message: the same JSON `FileEvent` reads (a test
/// holds them equal), without building its strings. Ids, hashes and names are written raw (their
/// character sets need no escaping, and the server validated them); metadata and payload text go
/// through serde_json's escaping.
fn write_event_line(out: &mut Vec<u8>, p: &pb::ProvenEvent) -> anyhow::Result<()> {
    let ev = p.event.as_ref().context("a proven event without its event")?;
    let raw_ok = |s: &str| s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    anyhow::ensure!(
        raw_ok(&ev.customer_id) && raw_ok(&ev.stream) && raw_ok(&ev.event_id) && raw_ok(&ev.event_type),
        "the server sent an id with characters ids cannot have"
    );
    out.clear();
    let b64 = |out: &mut Vec<u8>, bytes: &[u8]| {
        let start = out.len();
        out.resize(start + bytes.len().div_ceil(3) * 4, 0);
        let n = B64.encode_slice(bytes, &mut out[start..]).expect("sized for base64");
        out.truncate(start + n);
    };
    let hex = |out: &mut Vec<u8>, bytes: &[u8]| {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for b in bytes {
            out.push(DIGITS[usize::from(b >> 4)]);
            out.push(DIGITS[usize::from(b & 15)]);
        }
    };
    write!(out, "{{\"type\":\"event\",\"position\":{},\"leaf_hash\":\"", ev.position)?;
    hex(out, &ev.leaf_hash);
    out.extend_from_slice(b"\",\"header\":\"");
    b64(out, &p.header);
    out.extend_from_slice(b"\",\"ciphertext_sha256\":\"");
    hex(out, &p.ciphertext_sha256);
    out.extend_from_slice(b"\",\"inclusion_proof\":[");
    for (i, h) in p.inclusion_proof.iter().enumerate() {
        out.extend_from_slice(if i == 0 { b"\"" } else { b",\"" });
        b64(out, h);
        out.push(b'"');
    }
    let name = |full: &'static str, prefix: &str| full.trim_start_matches(prefix).to_ascii_lowercase();
    let channel = pb::Channel::try_from(ev.channel).map_or_else(|_| "unknown".into(), |c| name(c.as_str_name(), "CHANNEL_"));
    let direction = pb::Direction::try_from(ev.direction).map_or_else(|_| "unknown".into(), |d| name(d.as_str_name(), "DIRECTION_"));
    write!(
        out,
        "],\"customer_id\":\"{}\",\"stream\":\"{}\",\"stream_version\":{},\"event_id\":\"{}\",\"event_type\":\"{}\",\"channel\":\"{channel}\",\"direction\":\"{direction}\",\"occurred_at\":\"{}\",\"recorded_at\":\"{}\",\"metadata\":",
        ev.customer_id,
        ev.stream,
        ev.stream_version,
        ev.event_id,
        ev.event_type,
        timestamp_text(ev.occurred_at.as_ref()),
        timestamp_text(ev.recorded_at.as_ref()),
    )?;
    let metadata: std::collections::BTreeMap<&String, &String> = ev.metadata.iter().collect();
    serde_json::to_writer(&mut *out, &metadata)?;
    let state = match pb::PayloadState::try_from(ev.payload_state) {
        Ok(pb::PayloadState::Available) => "available",
        Ok(pb::PayloadState::Erased) => "erased",
        Ok(pb::PayloadState::RegionNotServed) => "region_not_served",
        _ => "unknown",
    };
    write!(out, ",\"schema_version\":{},\"payload_state\":\"{state}\"", ev.schema_version)?;
    if state == "available" {
        match std::str::from_utf8(&ev.payload) {
            Ok(text) => {
                out.extend_from_slice(b",\"payload_text\":");
                serde_json::to_writer(&mut *out, text)?;
            }
            Err(_) => {
                out.extend_from_slice(b",\"payload\":\"");
                b64(out, &ev.payload);
                out.push(b'"');
            }
        }
    }
    out.extend_from_slice(b"}\n");
    Ok(())
}

fn timestamp_text(t: Option<&prost_types::Timestamp>) -> String {
    t.map_or_else(String::new, |t| erasure::rfc3339_millis(t.seconds * 1000 + i64::from(t.nanos / 1_000_000)))
}

/// Options of `ledgerd audit replay`.
#[derive(Args, Debug, Clone)]
pub struct ReplayArgs {
    /// The server's gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// The customer whose history to replay.
    #[arg(long)]
    pub customer: String,
    /// Only this stream of the customer.
    #[arg(long)]
    pub stream: Option<String>,
    /// The first global position.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// The position to stop before; 0 means the signed head's size.
    #[arg(long, default_value_t = 0)]
    pub to: u64,
    /// The file to write (owner-only permissions: it holds decrypted personal data).
    #[arg(long)]
    pub out: PathBuf,
}

/// Writes a proof file: to a temporary name, 0600, synced, then renamed. Prints progress to
/// stderr every two seconds, never a payload.
pub struct ProofFileWriter {
    out: std::io::BufWriter<ledger::files::PrivateFile>,
    /// One event line, reused.
    line: Vec<u8>,
    path: PathBuf,
    label: &'static str,
    events: u64,
    head_size: Option<u64>,
    started: Instant,
    last_report: Instant,
}

impl ProofFileWriter {
    /// Starts a file at `path`.
    pub fn create(path: &Path, label: &'static str) -> anyhow::Result<Self> {
        let file = ledger::files::PrivateFile::create(path, "partial").with_context(|| format!("creating {}", path.display()))?;
        let out = std::io::BufWriter::with_capacity(1 << 20, file);
        let now = Instant::now();
        Ok(ProofFileWriter { out, line: Vec::with_capacity(4096), path: path.to_owned(), label, events: 0, head_size: None, started: now, last_report: now })
    }

    /// Writes the head line; it must come first, once.
    pub fn head(&mut self, scope: &Scope, head: pb::SignedTreeHead) -> anyhow::Result<()> {
        anyhow::ensure!(self.head_size.is_none(), "the server sent a second tree head");
        self.head_size = Some(head.tree_size);
        write_line(&mut self.out, &Line::Head { format: FORMAT.into(), request: scope.clone(), checkpoint: head.checkpoint })
    }

    /// Writes event lines.
    pub fn events(&mut self, events: Vec<pb::ProvenEvent>) -> anyhow::Result<()> {
        anyhow::ensure!(self.head_size.is_some() || events.is_empty(), "the server sent events before the tree head");
        for p in &events {
            write_event_line(&mut self.line, p)?;
            self.out.write_all(&self.line)?;
            self.events += 1;
        }
        if self.last_report.elapsed().as_secs() >= 2 {
            let rate = self.events as f64 / self.started.elapsed().as_secs_f64();
            eprintln!("{}: {} events written ({rate:.0} events/s)", self.label, self.events);
            self.last_report = Instant::now();
        }
        Ok(())
    }

    /// Writes the end line, syncs and renames. Returns (events, head size, seconds). The CLI is a
    /// client with one task: blocking it for the fsync holds up nothing else.
    #[allow(clippy::disallowed_methods)]
    pub fn finish(mut self, customers: Option<u64>, erased_events: Option<u64>) -> anyhow::Result<(u64, u64, f64)> {
        let size = self.head_size.context("the server sent no tree head")?;
        write_line(&mut self.out, &Line::End { events: self.events, customers, erased_events })?;
        let file = self.out.into_inner().map_err(|e| e.into_error()).context("writing the proof file")?;
        file.commit().with_context(|| format!("writing {}", self.path.display()))?;
        Ok((self.events, size, self.started.elapsed().as_secs_f64()))
    }
}

/// Runs an audited Replay and writes it to a proof file. Prints progress and a summary to stderr,
/// never a payload.
pub async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let mut audit = pb::audit_client::AuditClient::new(crate::cli::client::connect(&args.target).await?).max_decoding_message_size(64 * 1024 * 1024);
    let request = pb::ReplayRequest {
        customer_id: args.customer.clone(),
        stream: args.stream.clone().unwrap_or_default(),
        from_position: args.from,
        to_position: args.to,
    };
    let mut stream = audit.replay(request).await.map_err(|s| anyhow::anyhow!("replay refused: {}", s.message()))?.into_inner();
    let scope = Scope {
        kind: "replay".into(),
        customer_id: Some(args.customer),
        region: None,
        stream: args.stream,
        from_position: args.from,
        to_position: args.to,
    };
    let mut file = ProofFileWriter::create(&args.out, "replay")?;
    while let Some(msg) = stream.message().await.map_err(|s| anyhow::anyhow!("replay failed after {} events: {}", file.events, s.message()))? {
        if let Some(head) = msg.tree_head {
            file.head(&scope, head)?;
        }
        file.events(msg.events)?;
    }
    let (events, size, secs) = file.finish(None, None)?;
    eprintln!(
        "replay: wrote {events} events with inclusion proofs against the signed head of size {size} to {} in {secs:.1} s",
        args.out.display()
    );
    Ok(())
}

/// Options of `ledgerd export`.
#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// The server's gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// Export this customer (GDPR Art. 15/20).
    #[arg(long, conflicts_with = "region", required_unless_present = "region")]
    pub customer: Option<String>,
    /// Export every customer of this region (migration, regulator).
    #[arg(long)]
    pub region: Option<String>,
    /// The file to write (owner-only permissions: it holds decrypted personal data).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs an export and writes it to a proof file that `ledgerd verify --file` accepts.
pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let mut privacy = pb::privacy_client::PrivacyClient::new(crate::cli::client::connect(&args.target).await?).max_decoding_message_size(64 * 1024 * 1024);
    let refused = |s: tonic::Status| anyhow::anyhow!("export refused: {}", s.message());
    match (&args.customer, &args.region) {
        (Some(c), _) => {
            let s = privacy.export_customer(pb::ExportCustomerRequest { customer_id: c.clone() }).await.map_err(refused)?.into_inner();
            let scope = Scope { kind: "customer".into(), customer_id: Some(c.clone()), ..Default::default() };
            write_export(s, |m: pb::ExportCustomerResponse| m.chunk.unwrap_or_default(), &scope, &args.out).await
        }
        (None, Some(r)) => {
            let s = privacy.export_region(pb::ExportRegionRequest { region: r.clone() }).await.map_err(refused)?.into_inner();
            let scope = Scope { kind: "region".into(), region: Some(r.clone()), ..Default::default() };
            write_export(s, |m: pb::ExportRegionResponse| m.chunk.unwrap_or_default(), &scope, &args.out).await
        }
        (None, None) => anyhow::bail!("give --customer or --region"),
    }
}

async fn write_export<M>(mut stream: tonic::Streaming<M>, chunk_of: fn(M) -> pb::ExportChunk, scope: &Scope, out: &Path) -> anyhow::Result<()> {
    let mut file = ProofFileWriter::create(out, "export")?;
    let mut summary = None;
    while let Some(msg) = stream.message().await.map_err(|s| anyhow::anyhow!("export failed after {} events: {}", file.events, s.message()))? {
        let chunk = chunk_of(msg);
        if let Some(head) = chunk.tree_head {
            file.head(scope, head)?;
        }
        file.events(chunk.events)?;
        if chunk.summary.is_some() {
            summary = chunk.summary;
        }
    }
    let summary = summary.context("the export ended without its summary: it is incomplete")?;
    anyhow::ensure!(summary.events == file.events, "the server reported {} events but sent {}", summary.events, file.events);
    let (events, size, secs) = file.finish(Some(summary.customers), Some(summary.erased_events))?;
    eprintln!(
        "export: wrote {events} events of {} customer(s) ({} erased) with proofs against the signed head of size {size} to {} in {secs:.1} s ({:.0} events/s)",
        summary.customers,
        summary.erased_events,
        out.display(),
        events as f64 / secs.max(1e-9)
    );
    Ok(())
}

fn write_line(out: &mut impl Write, line: &Line) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proof::FileEvent;

    /// The plain mapping from the wire message; `write_event_line` is the fast path the writer
    /// uses, and this test holds the two equal.
    fn file_event_from_pb(p: pb::ProvenEvent) -> anyhow::Result<FileEvent> {
        let ev = p.event.context("a replayed event without its event")?;
        let state = match pb::PayloadState::try_from(ev.payload_state) {
            Ok(pb::PayloadState::Available) => "available",
            Ok(pb::PayloadState::Erased) => "erased",
            Ok(pb::PayloadState::RegionNotServed) => "region_not_served",
            _ => "unknown",
        };
        let available = state == "available";
        let (payload_text, payload) = match String::from_utf8(ev.payload) {
            Ok(text) if available => (Some(text), None),
            Err(e) if available => (None, Some(B64.encode(e.as_bytes()))),
            _ => (None, None),
        };
        Ok(FileEvent {
            position: ev.position,
            leaf_hash: hex::encode(&ev.leaf_hash),
            header: B64.encode(&p.header),
            ciphertext_sha256: hex::encode(&p.ciphertext_sha256),
            inclusion_proof: p.inclusion_proof.iter().map(|h| B64.encode(h)).collect(),
            customer_id: ev.customer_id,
            stream: ev.stream,
            stream_version: ev.stream_version,
            event_id: ev.event_id,
            event_type: ev.event_type,
            channel: pb::Channel::try_from(ev.channel).map_or("unknown", |c| c.as_str_name()).trim_start_matches("CHANNEL_").to_lowercase(),
            direction: pb::Direction::try_from(ev.direction).map_or("unknown", |d| d.as_str_name()).trim_start_matches("DIRECTION_").to_lowercase(),
            occurred_at: timestamp_text(ev.occurred_at.as_ref()),
            recorded_at: timestamp_text(ev.recorded_at.as_ref()),
            metadata: ev.metadata.into_iter().collect(),
            schema_version: ev.schema_version,
            payload_state: state.into(),
            payload_text,
            payload,
        })
    }

    fn proven(payload: &[u8], state: pb::PayloadState) -> pb::ProvenEvent {
        pb::ProvenEvent {
            event: Some(pb::RecordedEvent {
                position: 7,
                customer_id: "0f8e2a4c-5b7d-4e31-9a6c-2d1b3c4e5f60".into(),
                stream: "conv-1".into(),
                stream_version: 2,
                event_id: "5d2c1b0a-9e8f-4a7b-8c6d-1e2f3a4b5c6d".into(),
                event_type: "MessageReceived".into(),
                channel: pb::Channel::Whatsapp as i32,
                direction: pb::Direction::Inbound as i32,
                occurred_at: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 5_000_000 }),
                recorded_at: Some(prost_types::Timestamp { seconds: 1_700_000_001, nanos: 0 }),
                key_version: 1,
                schema_version: 3,
                metadata: [("k\"ey".to_owned(), "va\nl\u{e9}".to_owned())].into_iter().collect(),
                payload: payload.to_vec(),
                payload_state: state as i32,
                leaf_hash: vec![0xab; 32],
            }),
            header: vec![1, 2, 3, 250],
            ciphertext_sha256: vec![0xcd; 32],
            inclusion_proof: vec![vec![9; 32], vec![8; 32]],
        }
    }

    /// The fast writer and the serde reader agree, for text, binary and erased payloads.
    #[test]
    fn event_lines_written_fast_read_back_as_file_events() {
        for (payload, state) in [
            (&b"hola \"quoted\" \\ \n"[..], pb::PayloadState::Available),
            (&[0xff, 0, 7][..], pb::PayloadState::Available),
            (&b""[..], pb::PayloadState::Erased),
        ] {
            let p = proven(payload, state);
            let mut line = Vec::new();
            write_event_line(&mut line, &p).unwrap();
            let parsed = match serde_json::from_slice::<Line>(&line).unwrap() {
                Line::Event(e) => *e,
                other => panic!("not an event line: {other:?}"),
            };
            let expected = file_event_from_pb(p).unwrap();
            assert_eq!(serde_json::to_value(&parsed).unwrap(), serde_json::to_value(&expected).unwrap());
        }
    }
}
