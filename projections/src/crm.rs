//! The CRM-sync view: per customer, the interactions across every channel in time order, the
//! outcome of each outbound message, where each channel's identity was last seen, and the
//! attributes the CRM sent back. Rows hold positions, ids, channels, times and outcomes, never
//! message text or identifiers: `GetCustomerContext` decrypts those from the log when asked, so
//! what the view stores carries no plaintext, and an erased customer's events no longer decrypt.
//!
//! Rows: `i`‖customer‖occurred‖position -> `Interaction`; `o`‖customer‖queued event id -> the
//! interaction's key (to attach outcomes); `d`‖customer‖channel -> `IdentityRef`;
//! `a`‖customer -> attributes; `x`‖customer marks an erased customer.

use std::collections::BTreeMap;

use ledger::types::{Channel, CustomerId, Direction};
use ledger::{Payload, RecordedEvent};
use rocksdb::{IteratorMode, DB};
use serde::{Deserialize, Serialize};

use crate::routing::erased_key;
use crate::{erasure_of, ProjectionError, Tx, View};

/// The CRM view's name.
pub const CRM_VIEW: &str = "crm";

/// The CRM's own events, appended by `/webhooks/crm`.
pub const CRM_EVENT: &str = "CrmEventReceived";

/// One interaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interaction {
    /// Log position.
    pub position: u64,
    /// Event id.
    pub event_id: String,
    /// Stream (conversation).
    pub stream: String,
    /// Channel (`crm` for the CRM's events).
    pub channel: String,
    /// `inbound`, `outbound` or `internal`.
    pub direction: String,
    /// Event type.
    pub event_type: String,
    /// When it happened, unix ms.
    pub occurred_ms: i64,
    /// For outbound messages: `queued`, `sent`, `delivered`, `read`, `failed`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// Where a channel identity was last seen: the inbound message that carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRef {
    /// The message's position.
    pub position: u64,
    /// When, unix ms.
    pub at_ms: i64,
}

/// The CRM view.
#[derive(Debug, Default)]
pub struct CrmView;

fn interaction_key(customer: CustomerId, occurred: i64, position: u64) -> Vec<u8> {
    [b"i".as_slice(), customer.as_bytes(), &occurred.max(0).to_be_bytes(), &position.to_be_bytes()].concat()
}

fn outcome_key(customer: CustomerId, queued_event_id: &str) -> Vec<u8> {
    [b"o".as_slice(), customer.as_bytes(), queued_event_id.as_bytes()].concat()
}

fn identity_key(customer: CustomerId, channel: Channel) -> Vec<u8> {
    [b"d".as_slice(), customer.as_bytes(), &[channel as u8]].concat()
}

fn attributes_key(customer: CustomerId) -> Vec<u8> {
    [b"a".as_slice(), customer.as_bytes()].concat()
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
        Direction::Internal => "internal",
    }
}

/// The attributes a CRM event sets (`data.attributes`, string values).
pub fn crm_attributes(payload: &serde_json::Value) -> BTreeMap<String, String> {
    payload["data"]["attributes"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned))).collect())
        .unwrap_or_default()
}

impl CrmView {
    fn set_outcome(tx: &mut Tx<'_>, customer: CustomerId, queued: &str, outcome: &str) -> Result<(), ProjectionError> {
        let Some(ikey) = tx.get(&outcome_key(customer, queued))? else { return Ok(()) };
        if let Some(mut i) = tx.get_json::<Interaction>(&ikey)? {
            // A late "delivered" never replaces "read"; "failed" always wins.
            let rank = |s: &str| match s {
                "queued" => 0,
                "sent" | "accepted" => 1,
                "delivered" => 2,
                "read" => 3,
                _ => 4,
            };
            if i.outcome.as_deref().is_none_or(|old| rank(outcome) >= rank(old)) {
                i.outcome = Some(outcome.to_owned());
                tx.put_json(ikey, &i);
            }
        }
        Ok(())
    }
}

impl View for CrmView {
    fn name(&self) -> &'static str {
        CRM_VIEW
    }

    fn apply(&self, tx: &mut Tx<'_>, event: &RecordedEvent) -> Result<(), ProjectionError> {
        let h = &event.header;
        if let Some(customer) = erasure_of(event) {
            for prefix in [b"i", b"o", b"d", b"a"] {
                tx.delete_prefix(&[prefix.as_slice(), customer.as_bytes()].concat())?;
            }
            tx.put(erased_key(customer), Vec::new());
            return Ok(());
        }
        let Payload::Available(payload) = &event.payload else { return Ok(()) };
        if ledger::access::is_system_customer(h.customer) || tx.get(&erased_key(h.customer))?.is_some() {
            return Ok(());
        }
        let position = h.position.0;
        let decode = || crate::json::<serde_json::Value>(CRM_VIEW, payload);
        let interaction = |outcome: Option<&str>, channel: &str| Interaction {
            position,
            event_id: h.event_id.to_string(),
            stream: h.stream.clone(),
            channel: channel.to_owned(),
            direction: direction_name(h.direction).to_owned(),
            event_type: h.event_type.clone(),
            occurred_ms: h.occurred_at.0,
            outcome: outcome.map(str::to_owned),
        };
        match h.event_type.as_str() {
            "MessageReceived" => {
                if !crate::is_message(CRM_VIEW, payload) {
                    return Ok(());
                }
                tx.put_json(interaction_key(h.customer, h.occurred_at.0, position), &interaction(None, h.channel.name()));
                let key = identity_key(h.customer, h.channel);
                if tx.get_json::<IdentityRef>(&key)?.is_none_or(|r| r.at_ms <= h.occurred_at.0) {
                    tx.put_json(key, &IdentityRef { position, at_ms: h.occurred_at.0 });
                }
            }
            "MessageQueued" => {
                let key = interaction_key(h.customer, h.occurred_at.0, position);
                tx.put_json(key.clone(), &interaction(Some("queued"), h.channel.name()));
                tx.put(outcome_key(h.customer, &h.event_id.to_string()), key);
            }
            "MessageSent" | "MessageFailed" => {
                let Some(p) = decode() else { return Ok(()) };
                let queued = p["queued_event_id"].as_str().unwrap_or_default();
                Self::set_outcome(tx, h.customer, queued, if h.event_type == "MessageSent" { "sent" } else { "failed" })?;
            }
            "MessageStatusUpdated" => {
                let Some(p) = decode() else { return Ok(()) };
                if let (Some(linked), Some(status)) = (p["linked_event_id"].as_str(), p["status"]["status"].as_str()) {
                    Self::set_outcome(tx, h.customer, linked, status)?;
                }
            }
            CRM_EVENT => {
                let Some(p) = decode() else { return Ok(()) };
                tx.put_json(interaction_key(h.customer, h.occurred_at.0, position), &interaction(None, "crm"));
                let set = crm_attributes(&p);
                if !set.is_empty() {
                    let key = attributes_key(h.customer);
                    let mut attrs: BTreeMap<String, String> = tx.get_json(&key)?.unwrap_or_default();
                    attrs.extend(set);
                    tx.put_json(key, &attrs);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// What the CRM view holds for one customer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CustomerRows {
    /// The newest interactions, newest first.
    pub interactions: Vec<Interaction>,
    /// Per channel, where its identity was last seen.
    pub identities: Vec<(String, IdentityRef)>,
    /// Attributes from the CRM.
    pub attributes: BTreeMap<String, String>,
}

impl CrmView {
    /// A customer's rows: the newest `max_interactions` interactions, identities, attributes.
    /// `None` if the view has seen the customer erased.
    pub fn customer(db: &DB, customer: CustomerId, max_interactions: usize) -> Result<Option<CustomerRows>, ProjectionError> {
        let cf = db.cf_handle(CRM_VIEW).expect("crm column family");
        let tx = Tx::new(db, cf, CRM_VIEW);
        if tx.get(&erased_key(customer))?.is_some() {
            return Ok(None);
        }
        let mut rows = CustomerRows::default();
        let prefix = [b"i".as_slice(), customer.as_bytes()].concat();
        let mut end = prefix.clone();
        end.extend_from_slice(&[0xff; 17]);
        for item in db.iterator_cf(cf, IteratorMode::From(&end, rocksdb::Direction::Reverse)) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) || rows.interactions.len() >= max_interactions {
                break;
            }
            rows.interactions.push(serde_json::from_slice(&v).map_err(|e| tx.corrupt(&e.to_string()))?);
        }
        for key in tx.keys_with_prefix(&[b"d".as_slice(), customer.as_bytes()].concat())? {
            let channel = Channel::from_u8(key[17]).map_or("unknown", Channel::name);
            rows.identities.extend(tx.get_json::<IdentityRef>(&key)?.map(|r| (channel.to_owned(), r)));
        }
        rows.attributes = tx.get_json(&attributes_key(customer))?.unwrap_or_default();
        Ok(Some(rows))
    }

    /// A customer's CRM attributes.
    pub fn attributes(db: &DB, customer: CustomerId) -> Result<BTreeMap<String, String>, ProjectionError> {
        let cf = db.cf_handle(CRM_VIEW).expect("crm column family");
        Ok(Tx::new(db, cf, CRM_VIEW).get_json(&attributes_key(customer))?.unwrap_or_default())
    }
}
