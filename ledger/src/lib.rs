//! The ledger engine: an encrypted, tamper-evident, append-only event log behind two storage
//! seams (`storage`): a commit log and a key store, on RocksDB in production.
//!
//! Architecture invariant: this crate never sees prost or tonic types; the gRPC edge converts.
//! See `ARCHITECTURE.md` at the repository root for the write path and the recovery rule.

pub mod access;
pub mod checkpoint;
pub mod codec;
mod engine;
pub mod env;
mod lifecycle;
pub mod error;
pub mod identity;
pub mod keys;
pub mod limits;
pub mod merkle;
mod plan;
pub mod secret;
pub mod sim;
pub mod storage;
pub mod store;
pub mod types;
mod writer;

#[doc(hidden)]
pub use engine::{HookPoint, Hooks};
pub use engine::{
    default_origin, AppendInput, Backends, EventFilter, Ledger, LedgerConfig, NewEvent, NodeCache, OpenReport, Payload, ProvenEvent, RecordedEvent,
    StartupCheck,
};
pub use error::{ErrorCode, LedgerError};
pub use limits::{EngineTuning, Limits};
pub use lifecycle::Rotation;
#[doc(hidden)]
pub use plan::PlannerMutation;
pub use writer::{AppendOutcome, CommittedBatch, ErasedKey};
