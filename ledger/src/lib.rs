//! The ledger engine: an encrypted, tamper-evident, append-only event log behind two storage
//! seams (`storage`): a commit log and a key store, on RocksDB in production.
//!
//! Without the default feature `engine`, only the formats are built (the record and header
//! codec, the Merkle tree and its proofs, signed checkpoints, ids and types, private files): what
//! an auditor's program needs to check what the ledger wrote, with no RocksDB.
//!
//! Architecture invariant: this crate never sees prost or tonic types; the gRPC edge converts.
//! See `ARCHITECTURE.md` at the repository root for the write path and the recovery rule.

pub mod access;
pub mod checkpoint;
pub mod codec;
#[cfg(feature = "engine")]
mod engine;
pub mod env;
pub mod error;
pub mod files;
#[cfg(feature = "engine")]
pub mod identity;
#[cfg(feature = "engine")]
pub mod keys;
#[cfg(feature = "engine")]
mod lifecycle;
pub mod limits;
pub mod merkle;
#[cfg(feature = "engine")]
mod plan;
pub mod secret;
#[cfg(feature = "engine")]
pub mod sim;
#[cfg(feature = "engine")]
pub mod storage;
#[cfg(feature = "engine")]
pub mod store;
pub mod time;
pub mod types;
#[cfg(feature = "engine")]
mod writer;

#[cfg(feature = "engine")]
#[doc(hidden)]
pub use engine::{HookPoint, Hooks};
#[cfg(feature = "engine")]
pub use engine::{
    default_origin, AppendInput, Backends, EventFilter, Ledger, LedgerConfig, NewEvent, NodeCache, OpenReport, Payload, ProvenEvent, RecordedEvent,
    StartupCheck,
};
pub use error::{ErrorCode, LedgerError};
#[cfg(feature = "engine")]
pub use lifecycle::Rotation;
pub use limits::{EngineTuning, Limits};
#[cfg(feature = "engine")]
#[doc(hidden)]
pub use plan::PlannerMutation;
#[cfg(feature = "engine")]
pub use writer::{AppendOutcome, CommittedBatch, ErasedKey};
