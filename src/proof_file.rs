//! Proof files: a replay (or, later, an export) written as JSON Lines that an auditor can verify
//! offline with nothing but the ledger's verifier key.
//!
//! ```text
//! {"type":"head","format":"ledgerd-proof/1","request":{...},"checkpoint":"<C2SP signed note>"}
//! {"type":"event","position":7,"header":"<base64>","ciphertext_sha256":"<hex>","inclusion_proof":["<base64>",...],
//!  "customer_id":"...","stream":"...","stream_version":0,"event_id":"...","event_type":"...", ...,
//!  "payload_state":"available","payload":"<base64>"}
//! {"type":"end","events":1}
//! ```
//!
//! The verifier recomputes each leaf as SHA-256(0x00 || header || ciphertext_sha256) from the
//! canonical header bytes, checks its inclusion proof against the signed head, checks that the
//! readable fields match the signed header, and checks order, scope and stream-version continuity.
//! A payload's plaintext cannot be checked without the customer's key: the proof covers the
//! ciphertext, which is why verification still works after the key is destroyed.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use clap::Args;
use ledger::checkpoint::{verify_checkpoint, Checkpoint};
use ledger::codec::EventHeader;
use ledger::merkle::{leaf_hash, verify_inclusion, Hash};
use proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// The format line of files this version writes.
pub const FORMAT: &str = "ledgerd-proof/1";

/// What was asked for: the verifier checks every event against it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Scope {
    /// `replay` (Audit.Replay), `customer` (a customer export) or `region` (a region export).
    pub kind: String,
    /// The customer, for a replay or a customer export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// The region, for a region export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// One stream, or every stream of the customer when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The first position asked for.
    pub from_position: u64,
    /// The position asked to stop before (0: the head's size).
    pub to_position: u64,
}

/// One line of a proof file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Line {
    /// First line: the signed tree head every proof is against.
    Head {
        /// [`FORMAT`].
        format: String,
        /// What the file claims to hold.
        request: Scope,
        /// The C2SP signed note.
        checkpoint: String,
    },
    /// One event.
    Event(Box<FileEvent>),
    /// Last line: how many events the file holds, so truncation is detected.
    End {
        /// Number of event lines.
        events: u64,
        /// Number of customers (exports).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        customers: Option<u64>,
        /// Events whose payload is gone because the customer was erased.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        erased_events: Option<u64>,
    },
}

/// An event line: the verifiable part (position, header, ciphertext hash, proof), then readable
/// fields that must agree with the signed header, then the payload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileEvent {
    /// Global position (leaf index).
    pub position: u64,
    /// The leaf hash, hex: SHA-256(0x00 || header || ciphertext hash).
    pub leaf_hash: String,
    /// Canonical committed header, base64.
    pub header: String,
    /// SHA-256 of nonce, ciphertext and tag, hex.
    pub ciphertext_sha256: String,
    /// Inclusion proof, leaf to root, base64 hashes.
    pub inclusion_proof: Vec<String>,
    /// Readable copy of the header's customer.
    pub customer_id: String,
    /// Readable copy of the header's stream.
    pub stream: String,
    /// Readable copy of the header's stream version.
    pub stream_version: u64,
    /// Readable copy of the header's event id.
    pub event_id: String,
    /// Readable copy of the header's event type.
    pub event_type: String,
    /// Readable copy of the header's channel (`whatsapp`, `sms`, ...).
    pub channel: String,
    /// Readable copy of the header's direction (`inbound`, `outbound`, `internal`).
    pub direction: String,
    /// Readable copy of when it happened at its source (RFC 3339).
    pub occurred_at: String,
    /// Readable copy of when the ledger recorded it (RFC 3339).
    pub recorded_at: String,
    /// Readable copy of the header's metadata.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Readable copy of the header's payload schema version.
    pub schema_version: u32,
    /// `available`, `erased` or `region_not_served`.
    pub payload_state: String,
    /// The decrypted payload as text, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_text: Option<String>,
    /// The decrypted payload, base64, when it is available but not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
}

impl FileEvent {
    /// The plain mapping from the wire message; `write_event_line` is the fast path the writer
    /// uses, and a test holds the two equal.
    #[cfg(test)]
    fn from_pb(p: pb::ProvenEvent) -> anyhow::Result<Self> {
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
}

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
    out: std::io::BufWriter<std::fs::File>,
    /// One event line, reused.
    line: Vec<u8>,
    tmp: PathBuf,
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
        let tmp = path.with_extension("partial");
        let out = std::io::BufWriter::with_capacity(1 << 20, create_private(&tmp)?);
        let now = Instant::now();
        Ok(ProofFileWriter { out, line: Vec::with_capacity(4096), tmp, path: path.to_owned(), label, events: 0, head_size: None, started: now, last_report: now })
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
        file.sync_all().context("syncing the proof file")?;
        std::fs::rename(&self.tmp, &self.path).with_context(|| format!("renaming to {}", self.path.display()))?;
        Ok((self.events, size, self.started.elapsed().as_secs_f64()))
    }
}


/// Runs an audited Replay and writes it to a proof file. Prints progress and a summary to stderr,
/// never a payload.
pub async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let mut audit = pb::audit_client::AuditClient::new(crate::client::connect(&args.target).await?).max_decoding_message_size(64 * 1024 * 1024);
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
    let mut privacy = pb::privacy_client::PrivacyClient::new(crate::client::connect(&args.target).await?).max_decoding_message_size(64 * 1024 * 1024);
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

fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

fn write_line(out: &mut impl Write, line: &Line) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// The outcome of verifying a proof file.
#[derive(Debug)]
pub struct FileReport {
    /// The signed head the file's proofs are against, if it verified.
    pub head: Option<Checkpoint>,
    /// Event lines checked.
    pub events: u64,
    /// Failures, in file order (the first few are listed in full).
    pub failures: Vec<String>,
    /// Failures beyond those listed.
    pub more_failures: u64,
    /// Seconds spent.
    pub seconds: f64,
}

const FAILURES_LISTED: usize = 20;

fn fail(report: &mut FileReport, why: String) {
    if report.failures.len() < FAILURES_LISTED {
        report.failures.push(why);
    } else {
        report.more_failures += 1;
    }
}

/// What the per-event check yields for the ordering checks that follow.
struct Checked {
    line: u64,
    position: u64,
    leaf_matches: bool,
    customer: String,
    stream: String,
    version: u64,
    error: Option<String>,
}

/// Checks one event line against the head: the leaf from the header and ciphertext hash, the
/// inclusion proof, and the readable fields against the signed header.
fn check_event(line_no: u64, text: &str, head: &Checkpoint) -> Checked {
    let mut c =
        Checked { line: line_no, position: u64::MAX, leaf_matches: true, customer: String::new(), stream: String::new(), version: 0, error: None };
    let ev = match serde_json::from_str::<Line>(text) {
        Ok(Line::Event(ev)) => ev,
        Ok(Line::Head { .. }) => {
            c.error = Some(format!("line {line_no}: a second tree head"));
            return c;
        }
        Ok(Line::End { .. }) => {
            c.error = Some(format!("line {line_no}: an end line before the last line"));
            return c;
        }
        Err(e) => {
            c.error = Some(format!("line {line_no}: not a proof-file line: {e}"));
            return c;
        }
    };
    c.position = ev.position;
    let fail = |why: String| Some(format!("event at position {} (line {line_no}): {why}", ev.position));
    let header = match B64.decode(&ev.header) {
        Ok(h) => h,
        Err(_) => {
            c.error = fail("header is not base64".into());
            return c;
        }
    };
    let sealed_hash: Option<Hash> = hex::decode(&ev.ciphertext_sha256).ok().and_then(|h| h.try_into().ok());
    let Some(sealed_hash) = sealed_hash else {
        c.error = fail("ciphertext_sha256 is not 32 bytes of hex".into());
        return c;
    };
    let mut proof = Vec::with_capacity(ev.inclusion_proof.len());
    for h in &ev.inclusion_proof {
        match B64.decode(h).ok().and_then(|h| <Hash>::try_from(h.as_slice()).ok()) {
            Some(h) => proof.push(h),
            None => {
                c.error = fail("an inclusion proof hash is not 32 bytes of base64".into());
                return c;
            }
        }
    }
    let leaf = leaf_hash(&header, &sealed_hash);
    c.leaf_matches = hex::encode(leaf) == ev.leaf_hash;
    if !verify_inclusion(ev.position, head.size, &leaf, &proof, &head.root) {
        c.error = fail(format!(
            "its leaf (recomputed from header and ciphertext hash) is not proven in the signed tree of size {}",
            head.size
        ));
        return c;
    }
    let decoded = match EventHeader::decode(&header) {
        Ok(h) => h,
        Err(e) => {
            c.error = fail(format!("the signed header does not decode: {e}"));
            return c;
        }
    };
    let mismatched = [
        ("position", decoded.position.0 != ev.position),
        ("customer_id", decoded.customer.to_string() != ev.customer_id),
        ("stream", decoded.stream != ev.stream),
        ("stream_version", decoded.stream_version.0 != ev.stream_version),
        ("event_id", decoded.event_id.to_string() != ev.event_id),
        ("event_type", decoded.event_type != ev.event_type),
        ("schema_version", decoded.schema_version != ev.schema_version),
        ("channel", format!("{:?}", decoded.channel).to_lowercase() != ev.channel),
        ("direction", format!("{:?}", decoded.direction).to_lowercase() != ev.direction),
        ("occurred_at", erasure::rfc3339_millis(decoded.occurred_at.0) != ev.occurred_at),
        ("recorded_at", erasure::rfc3339_millis(decoded.recorded_at.0) != ev.recorded_at),
        ("metadata", decoded.metadata != ev.metadata),
        ("leaf_hash", !c.leaf_matches),
    ];
    if let Some((field, _)) = mismatched.iter().find(|(_, bad)| *bad) {
        c.error = fail(format!("the readable {field} does not match the signed header"));
        return c;
    }
    c.customer = ev.customer_id;
    c.stream = ev.stream;
    c.version = ev.stream_version;
    c
}

/// Verifies a proof file with the verifier key alone. Uses every core for the per-event hashing.
pub fn verify_file(path: &Path, verifier_key: &str) -> anyhow::Result<FileReport> {
    let started = Instant::now();
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut lines = std::io::BufReader::with_capacity(1 << 20, file).lines();
    let mut report = FileReport { head: None, events: 0, failures: Vec::new(), more_failures: 0, seconds: 0.0 };
    let first = lines.next().transpose()?.context("the file is empty")?;
    let (scope, head) = match serde_json::from_str::<Line>(&first) {
        Ok(Line::Head { format, request, checkpoint }) => {
            anyhow::ensure!(format == FORMAT, "unsupported proof-file format {format:?} (this verifier reads {FORMAT})");
            match verify_checkpoint(&checkpoint, verifier_key) {
                Ok(cp) => (request, cp),
                Err(e) => {
                    fail(&mut report, format!("the tree head's signature does not verify with the verifier key: {e}"));
                    report.seconds = started.elapsed().as_secs_f64();
                    return Ok(report);
                }
            }
        }
        _ => anyhow::bail!("the first line is not a tree head"),
    };
    let to = if scope.to_position == 0 { head.size } else { scope.to_position.min(head.size) };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Per (customer, stream): the last version seen. Customers must come in one run each.
    let mut versions: HashMap<(String, String), u64> = HashMap::new();
    let mut finished_customers: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut current_customer: Option<String> = None;
    let mut last_position: Option<u64> = None;
    let mut end_count: Option<u64> = None;
    let mut line_no = 1u64;
    let mut batch: Vec<(u64, String)> = Vec::with_capacity(8192);
    let mut done = false;
    while !done {
        batch.clear();
        while batch.len() < 8192 {
            let Some(text) = lines.next().transpose()? else {
                done = true;
                break;
            };
            line_no += 1;
            if end_count.is_some() {
                fail(&mut report, format!("line {line_no}: content after the end line"));
                continue;
            }
            if text.starts_with("{\"type\":\"end\"") {
                match serde_json::from_str::<Line>(&text) {
                    Ok(Line::End { events, .. }) => end_count = Some(events),
                    _ => fail(&mut report, format!("line {line_no}: a malformed end line")),
                }
                continue;
            }
            batch.push((line_no, text));
        }
        // Hash and prove in parallel; the order checks below are sequential and cheap.
        let per = batch.len().div_ceil(workers).max(1);
        let checked: Vec<Checked> = std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .chunks(per)
                .map(|part| s.spawn(|| part.iter().map(|(n, t)| check_event(*n, t, &head)).collect::<Vec<_>>()))
                .collect();
            handles.into_iter().flat_map(|h| h.join().expect("verifier thread")).collect()
        });
        for c in checked {
            report.events += 1;
            if let Some(e) = c.error {
                fail(&mut report, e);
                continue;
            }
            let at = format!("event at position {} (line {})", c.position, c.line);
            if current_customer.as_deref() != Some(c.customer.as_str()) {
                if let Some(done) = current_customer.take() {
                    finished_customers.insert(done);
                }
                if finished_customers.contains(&c.customer) {
                    fail(&mut report, format!("{at}: its customer's events are not in one run"));
                }
                current_customer = Some(c.customer.clone());
                last_position = None;
            }
            if last_position.is_some_and(|p| c.position <= p) {
                fail(&mut report, format!("{at}: out of order (positions must increase)"));
            }
            last_position = Some(c.position);
            if c.position < scope.from_position || c.position >= to {
                fail(&mut report, format!("{at}: outside the requested positions {}..{to}", scope.from_position));
            }
            if scope.customer_id.as_ref().is_some_and(|id| *id != c.customer) || scope.stream.as_ref().is_some_and(|s| *s != c.stream) {
                fail(&mut report, format!("{at}: belongs to another customer or stream than the file claims"));
            }
            let key = (c.customer, c.stream);
            match versions.get(&key) {
                Some(&v) if c.version != v + 1 => {
                    fail(&mut report, format!("{at}: stream {} jumps from version {v} to {}: events are missing", key.1, c.version))
                }
                None if scope.from_position == 0 && c.version != 0 => {
                    fail(&mut report, format!("{at}: stream {} starts at version {}: its first events are missing", key.1, c.version))
                }
                _ => {}
            }
            versions.insert(key, c.version);
        }
    }
    match end_count {
        None => fail(&mut report, "the end line is missing: the file is truncated".into()),
        Some(n) if n != report.events => {
            let why = format!("the end line says {n} events but the file holds {}", report.events);
            fail(&mut report, why);
        }
        Some(_) => {}
    }
    report.head = Some(head);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let expected = FileEvent::from_pb(p).unwrap();
            assert_eq!(serde_json::to_value(&parsed).unwrap(), serde_json::to_value(&expected).unwrap());
        }
    }
}
