//! The ledger's own system streams and the access records written to them.
//!
//! System streams belong to reserved customers. [`SYSTEM_CUSTOMER`] (the nil UUID, its data key in
//! the first served region) holds what spans regions: erasure requests and certificates, and
//! access records that name no customer (whole-log reads, refusals before a customer is known).
//! Each region has its own system customer ([`system_customer_of`], its data key under that
//! region's KEK) holding the access records of that region's customers, so a principal scoped to
//! a region reads its region's trail and no other's, and the records stay in their residency
//! region. System streams hold no personal data, are never erased, and are part of the Merkle
//! log like every other event, so an auditor can prove that the trail was not edited. Clients
//! cannot append to them: every customer id whose first 8 bytes are zero is reserved.
//!
//! An access record says who read what, when, from where, and with what outcome. It names the
//! request (customer, stream, positions, filter), never a payload, an identifier or a secret.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::{CustomerId, UnixMillis};

/// The customer the ledger's system streams belong to: the nil UUID, which clients may not use.
pub const SYSTEM_CUSTOMER: CustomerId = CustomerId(uuid::Uuid::nil());
/// The system customer holding the access records of `region`'s customers: the first 8 bytes
/// zero (the reserved range), the last 8 the start of SHA-256("ledger.v1/system-customer/" ‖
/// region), so every node derives the same id.
pub fn system_customer_of(region: &crate::types::Region) -> CustomerId {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(format!("ledger.v1/system-customer/{}", region.as_str()).as_bytes());
    let mut bytes = [0u8; 16];
    bytes[8..].copy_from_slice(&hash[..8]);
    CustomerId(uuid::Uuid::from_bytes(bytes))
}

/// Whether `customer` is one of the ledger's system customers (the reserved range: the first 8
/// bytes zero). A random (v4) id is never in it: its version nibble is in byte 6.
pub fn is_system_customer(customer: CustomerId) -> bool {
    customer.0.as_bytes()[..8] == [0u8; 8]
}

/// The system stream of access records.
pub const ACCESS_STREAM: &str = "audit.access";
/// The event type of an access record.
pub const ACCESS_EVENT_TYPE: &str = "AccessRecorded";
/// The access record's payload schema version.
pub const ACCESS_SCHEMA_VERSION: u32 = 1;

/// Who asked, what for, from where and with what result. Serialized as the payload of an
/// `AccessRecorded` event in [`ACCESS_STREAM`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRecord {
    /// The authenticated principal (`anonymous` or `unauthenticated` for refused calls without
    /// valid credentials).
    pub principal: String,
    /// The method, e.g. `ledger.v1.Ledger/ReadStream`.
    pub action: String,
    /// The caller's network address, if known.
    pub origin: String,
    /// When the access was granted or refused.
    pub at_unix_ms: i64,
    /// `granted` when data is about to be sent (the record is written first); `ended` for the
    /// closing record of a subscription; otherwise the stable error code of the refusal.
    pub outcome: String,
    /// The customer whose data was read, if the request named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<CustomerId>,
    /// The stream, if the request named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The request's other parameters (positions, versions, filter), as text. Only opaque ids and
    /// numbers: never payloads, identifiers or secrets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
}

impl AccessRecord {
    /// A record of `action` by `principal` from `origin`, stamped now, outcome `granted`.
    pub fn granted(principal: &str, action: &str, origin: &str) -> Self {
        AccessRecord {
            principal: principal.to_owned(),
            action: action.to_owned(),
            origin: origin.to_owned(),
            at_unix_ms: UnixMillis::now().0,
            outcome: "granted".into(),
            customer: None,
            stream: None,
            params: BTreeMap::new(),
        }
    }

    /// Adds a request parameter.
    pub fn param(mut self, name: &str, value: impl ToString) -> Self {
        self.params.insert(name.to_owned(), value.to_string());
        self
    }
}

impl Serialize for CustomerId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CustomerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        uuid::Uuid::parse_str(&text).map(CustomerId).map_err(|_| serde::de::Error::custom("customer id must be a UUID"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_through_json() {
        let mut rec = AccessRecord::granted("anonymous", "ledger.v1.Ledger/ReadStream", "127.0.0.1:5000").param("from_version", 3);
        rec.customer = Some(CustomerId::new_random());
        rec.stream = Some("conv-1".into());
        let json = serde_json::to_vec(&rec).unwrap();
        assert_eq!(serde_json::from_slice::<AccessRecord>(&json).unwrap(), rec);
        assert_eq!(SYSTEM_CUSTOMER.to_string(), "00000000-0000-0000-0000-000000000000");
        let eu = crate::types::Region::parse("eu", "r").unwrap();
        let us = crate::types::Region::parse("us", "r").unwrap();
        assert_ne!(system_customer_of(&eu), system_customer_of(&us));
        assert_eq!(system_customer_of(&eu), system_customer_of(&eu));
        assert!(is_system_customer(SYSTEM_CUSTOMER) && is_system_customer(system_customer_of(&eu)));
        for _ in 0..1000 {
            assert!(!is_system_customer(CustomerId::new_random()));
        }
    }
}
