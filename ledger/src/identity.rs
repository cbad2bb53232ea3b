//! Identity resolution through the blind index: an identifier (a phone number in E.164, a
//! lowercased email, a WhatsApp `wa_id`, a Slack user, ...) is stored only as HMAC-SHA256 under its
//! region's index key, in `identity` (and reversed in `identity_by_customer`, so erasure deletes
//! them). Normalizing raw input is the caller's job (`connectors`); this module takes canonical
//! values.

use tokio::sync::oneshot;

use crate::engine::Ledger;
use crate::error::LedgerError;
use crate::keys::generate_dek_with;
use crate::store::{self, CustomerRecord, CustomerState};
use crate::types::{CustomerId, EventId, Region};
use crate::writer::{Control, NewCustomer, WriterMsg};

/// What kind of identifier a value is. The tag is part of what is blinded, so the same digits as
/// a phone number and as a `wa_id` are different identifiers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdentifierKind {
    /// A phone number in E.164 (`+5511912345678`).
    Phone,
    /// An email address, lowercased.
    Email,
    /// A WhatsApp `wa_id`, exactly as the provider sent it.
    WhatsApp,
    /// A Slack user: `team:user`.
    Slack,
    /// A Microsoft Teams (Azure AD) user id.
    Teams,
    /// An id in a business system (CRM contact id, app user id).
    External,
}

impl IdentifierKind {
    fn tag(self) -> &'static str {
        match self {
            IdentifierKind::Phone => "phone",
            IdentifierKind::Email => "email",
            IdentifierKind::WhatsApp => "whatsapp",
            IdentifierKind::Slack => "slack",
            IdentifierKind::Teams => "teams",
            IdentifierKind::External => "external",
        }
    }
}

/// A normalized identifier. Personal data: its `Debug` shows the kind only.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identifier {
    /// The kind.
    pub kind: IdentifierKind,
    /// The canonical value.
    pub value: String,
}

impl std::fmt::Debug for Identifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identifier({:?}, <redacted>)", self.kind)
    }
}

impl Ledger {
    fn identity_keys(&self, region: &Region, ids: &[Identifier]) -> Result<Vec<Vec<u8>>, LedgerError> {
        let keyring = self.inner.keyring.read().expect("keyring lock");
        ids.iter()
            .map(|id| {
                let mut data = Vec::with_capacity(id.value.len() + 16);
                data.extend_from_slice(b"identity:");
                data.extend_from_slice(id.kind.tag().as_bytes());
                data.push(0);
                data.extend_from_slice(id.value.as_bytes());
                Ok(store::identity_key(region, &keyring.blind(region, &data)?))
            })
            .collect()
    }

    /// The customer any of `ids` belongs to in `region`, linking the others to it. With `create`
    /// and no match, a new customer of `region` is created with all of them. Returns the customer
    /// and whether it was created, or `None` when nothing matched and `create` is false.
    pub async fn resolve_customer(&self, ids: &[Identifier], region: &Region, create: bool) -> Result<Option<(CustomerId, bool)>, LedgerError> {
        if ids.is_empty() {
            return Err(LedgerError::invalid("identifiers", "must contain at least one identifier"));
        }
        self.check_served(region)?;
        let keys = self.identity_keys(region, ids)?;
        let create = if create {
            let rng = &*self.inner.rng;
            let customer = rng.customer_id();
            let dek = generate_dek_with(rng);
            let (kek_version, wrapped_dek) = self.inner.keyring.read().expect("keyring lock").wrap_with(rng, region, customer, &dek)?;
            let record =
                CustomerRecord { region: region.clone(), state: CustomerState::Active, key_version: 1, created_unix_ms: self.inner.clock.now().0 };
            Some((customer, NewCustomer { record, kek_version, wrapped_dek }))
        } else {
            None
        };
        let (reply, answer) = oneshot::channel();
        self.inner.tx.send(WriterMsg::Control(Control::Identify { keys, create, reply })).await.map_err(|_| LedgerError::ShuttingDown)?;
        answer.await.map_err(|_| LedgerError::ShuttingDown)?
    }

    /// Attaches `ids` to an existing customer (in the customer's region). Refused if one of them
    /// already belongs to another customer.
    pub async fn link_identifiers(&self, customer: CustomerId, ids: &[Identifier]) -> Result<(), LedgerError> {
        let rec = self.load_customer(customer)?.ok_or(LedgerError::NotFound { what: "customer" })?;
        self.check_served(&rec.region)?;
        let keys = self.identity_keys(&rec.region, ids)?;
        let (reply, answer) = oneshot::channel();
        self.inner.tx.send(WriterMsg::Control(Control::Link { customer, keys, reply })).await.map_err(|_| LedgerError::ShuttingDown)?;
        answer.await.map_err(|_| LedgerError::ShuttingDown)?
    }

    /// An event id derived from a provider's message or event id with the region's index key, so
    /// a redelivery maps to the same event, and the id reveals nothing about the provider's id
    /// (WhatsApp message ids embed the phone number).
    pub fn keyed_event_id(&self, region: &Region, channel: &str, provider_id: &str) -> Result<EventId, LedgerError> {
        let mut data = Vec::with_capacity(channel.len() + provider_id.len() + 16);
        data.extend_from_slice(b"event-id:");
        data.extend_from_slice(channel.as_bytes());
        data.push(0);
        data.extend_from_slice(provider_id.as_bytes());
        let blind = self.inner.keyring.read().expect("keyring lock").blind(region, &data)?;
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&blind[..16]);
        Ok(EventId(uuid::Builder::from_random_bytes(bytes).into_uuid()))
    }

    /// Whether an event with this id was appended.
    pub fn event_exists(&self, event_id: EventId) -> Result<bool, LedgerError> {
        self.inner.log.contains(crate::storage::Space::EventIds, event_id.as_bytes())
    }

    /// The region of an existing customer.
    pub fn customer_region(&self, customer: CustomerId) -> Result<Region, LedgerError> {
        Ok(self.load_customer(customer)?.ok_or(LedgerError::NotFound { what: "customer" })?.region)
    }
}
