//! The audit view: per customer, who read, exported or erased what and when, from the access
//! records in `audit.access` and the erasure requests and certificates. It holds no personal data
//! (principals, actions, times, origins, ids), and it outlives an erasure on purpose: the trail of
//! who touched an erased customer's data is what an auditor asks for afterwards.
//!
//! Rows: customer ‖ position -> `AuditEntry`. Reads of ranges not narrowed to one customer
//! (`ReadAll`, `Subscribe` without a customer filter) are stored under the nil customer and belong
//! to every customer's trail, since they could have returned anyone's events.

use ledger::access::{AccessRecord, ACCESS_STREAM, SYSTEM_CUSTOMER};
use ledger::types::CustomerId;
use ledger::{Payload, RecordedEvent};
use rocksdb::DB;
use serde::{Deserialize, Serialize};

use crate::{ProjectionError, Tx, View};

/// The audit view's name.
pub const AUDIT_VIEW: &str = "audit";

/// One entry of a customer's audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The log position of the record.
    pub position: u64,
    /// When, unix ms.
    pub at_unix_ms: i64,
    /// Who (a principal, or the DPO's identifier for an erasure).
    pub principal: String,
    /// What: the method, or `erasure.requested` / `erasure.certified`.
    pub action: String,
    /// The outcome.
    pub outcome: String,
    /// From where.
    pub origin: String,
    /// The stream read, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Whether this read a range of the whole log rather than this customer alone.
    #[serde(default)]
    pub whole_log: bool,
}

/// The audit view.
#[derive(Debug, Default)]
pub struct AuditView;

fn key(customer: CustomerId, position: u64) -> Vec<u8> {
    let mut k = customer.as_bytes().to_vec();
    k.extend_from_slice(&position.to_be_bytes());
    k
}

impl View for AuditView {
    fn name(&self) -> &'static str {
        AUDIT_VIEW
    }

    fn apply(&self, tx: &mut Tx<'_>, event: &RecordedEvent) -> Result<(), ProjectionError> {
        let h = &event.header;
        if !ledger::access::is_system_customer(h.customer) {
            return Ok(());
        }
        let Payload::Available(payload) = &event.payload else { return Ok(()) };
        let position = h.position.0;
        let entry = match (h.stream.as_str(), h.event_type.as_str()) {
            (ACCESS_STREAM, _) => {
                let rec: AccessRecord = serde_json::from_slice(payload).map_err(|e| ProjectionError::Apply { view: AUDIT_VIEW, position, reason: e.to_string() })?;
                // A read across customers is in every customer's trail; other records without a
                // customer (key operations, token changes, refusals) are the system's own.
                let whole_log = rec.customer.is_none() && WHOLE_LOG_READS.contains(&rec.action.as_str()) && matches!(rec.outcome.as_str(), "granted" | "ended");
                let customer = rec.customer.unwrap_or(SYSTEM_CUSTOMER);
                (customer, AuditEntry {
                    position,
                    at_unix_ms: rec.at_unix_ms,
                    principal: rec.principal,
                    action: rec.action,
                    outcome: rec.outcome,
                    origin: rec.origin,
                    stream: rec.stream,
                    whole_log,
                })
            }
            ("erasure.requests" | "erasure.certificates", kind) => {
                let Some(customer) = h.metadata.get("customer").and_then(|c| CustomerId::parse(c, "customer").ok()) else { return Ok(()) };
                let requested_by = if kind == "ErasureRequested" {
                    serde_json::from_slice::<serde_json::Value>(payload).ok().and_then(|v| v["requested_by"].as_str().map(str::to_owned)).unwrap_or_default()
                } else {
                    "ledger".into()
                };
                (customer, AuditEntry {
                    position,
                    at_unix_ms: h.recorded_at.0,
                    principal: requested_by,
                    action: if kind == "ErasureRequested" { "erasure.requested" } else { "erasure.certified" }.into(),
                    outcome: "ok".into(),
                    origin: "ledger".into(),
                    stream: None,
                    whole_log: false,
                })
            }
            _ => return Ok(()),
        };
        tx.put_json(key(entry.0, position), &entry.1);
        Ok(())
    }
}

/// Reads that can return any customer's events.
const WHOLE_LOG_READS: [&str; 3] = ["ledger.v1.Ledger/ReadAll", "ledger.v1.Ledger/Subscribe", "ledger.v1.Privacy/ExportRegion"];

impl AuditView {
    /// A customer's trail in log order: their own entries and every whole-log read.
    pub fn trail(db: &DB, customer: CustomerId) -> Result<Vec<AuditEntry>, ProjectionError> {
        let cf = db.cf_handle(AUDIT_VIEW).expect("audit column family");
        let mut out = Vec::new();
        let prefixes = if customer == SYSTEM_CUSTOMER { vec![customer] } else { vec![customer, SYSTEM_CUSTOMER] };
        for prefix in prefixes {
            for item in db.prefix_iterator_cf(cf, prefix.as_bytes()) {
                let (k, v) = item?;
                if !k.starts_with(prefix.as_bytes()) {
                    break;
                }
                let entry = serde_json::from_slice::<AuditEntry>(&v).map_err(|e| ProjectionError::Apply { view: AUDIT_VIEW, position: 0, reason: e.to_string() })?;
                if prefix == customer || entry.whole_log {
                    out.push(entry);
                }
            }
        }
        out.sort_by_key(|e| e.position);
        Ok(out)
    }
}
