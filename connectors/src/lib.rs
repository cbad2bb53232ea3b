//! How real traffic reaches the ledger: webhook receivers for WhatsApp, Slack and Twilio that
//! verify the provider's signature over the raw bytes, normalize into one message schema, resolve
//! the customer through the blind index, and append before they acknowledge.
//!
//! **Architecture invariant:** nothing here stores a plaintext identifier or message: identities
//! go to the ledger's blind index, messages into encrypted payloads; the connectors' own store
//! holds conversation ids, times and statuses under keyed ids.

pub mod config;
mod error;
pub mod http;
pub mod identity;
mod ingest;
pub mod normalize;
pub mod outbound;
pub mod signatures;
mod time;
mod teams;

pub use config::{ConnectorsConfig, Secret};
pub use error::ConnectorError;
pub use ingest::{Ingestor, Outcome};
