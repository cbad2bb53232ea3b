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
//!
//! This crate is the format and its offline verifier, with no server in it: it depends on the
//! ledger's formats only (`ledger` without its `engine` feature: no RocksDB), so an auditor's own
//! program can read and check proof files. `ledgerd audit replay`, `ledgerd export` write them;
//! `ledgerd verify --file` runs [`verify_file`].

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ledger::checkpoint::{verify_checkpoint, Checkpoint};
use ledger::codec::EventHeader;
use ledger::merkle::{leaf_hash, verify_inclusion, Hash};
use ledger::time::rfc3339_millis;
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
        ("channel", decoded.channel.name() != ev.channel),
        ("direction", format!("{:?}", decoded.direction).to_lowercase() != ev.direction),
        ("occurred_at", rfc3339_millis(decoded.occurred_at.0) != ev.occurred_at),
        ("recorded_at", rfc3339_millis(decoded.recorded_at.0) != ev.recorded_at),
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
