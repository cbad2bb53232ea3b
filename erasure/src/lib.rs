//! Erasure by crypto-shredding, and what surrounds it: erasure certificates signed by the ledger,
//! a durable outbox that notifies downstream systems (Standard Webhooks signatures, retries with
//! backoff, dead letters), the physical purge of destroyed keys, and exports.
//!
//! **Architecture invariant:** this crate changes keys only through `ledger::Ledger`'s methods
//! (which go through the ledger's single writer), and keeps its own state (requests, certificates,
//! the outbox) in a RocksDB of its own under `<data_dir>/erasure`. It holds no personal data:
//! customer ids, request ids and fingerprints only.

mod certificate;
mod config;
mod eraser;
mod error;
mod store;

pub mod webhook;

pub use certificate::{Certificate, CERTIFICATE_STREAM, REQUEST_STREAM};
pub use config::{Downstream, ErasureConfig, Secret};
pub use eraser::{Delivery, DeliveryState, EraseRequest, ErasureStatus, Eraser};
pub use error::ErasureError;
pub use ledger::time::rfc3339_millis;
