//! The gRPC edges, one file per service: `ledger` (`ledger.v1.Ledger`), `audit`, `privacy`
//! (with `ledger.v1.Admin`), `messaging` and `views`. Shared here: the mapping of the engine's
//! error codes to `tonic::Code`, the blocking-call helpers and message sizing; in `convert`, the
//! prost types to the engine's domain types and back (written once); in `caller`, who is calling
//! and the access records every decrypting call writes first; in `streams`, server-streaming
//! responses a slow reader cannot hold open.

pub mod audit;
mod caller;
mod convert;
pub mod ledger;
pub mod messaging;
pub mod privacy;
pub mod streams;
pub mod views;

pub(crate) use caller::{record_access, refuse, Caller};
pub(crate) use convert::{millis_to_pb, recorded_to_pb};

use ::ledger::{ErrorCode, LedgerError};
use tonic::Status;

/// Messages buffered per read, replay or subscription stream before the server waits for the
/// client.
pub(crate) const STREAM_BUFFER_MESSAGES: usize = 4;

/// Maps an engine error to a gRPC status with the stable code in `ledger-error-code` metadata.
pub fn status(e: LedgerError) -> Status {
    let code = e.code();
    let mut s = coded_status(code, e.to_string());
    if let LedgerError::WrongExpectedVersion { actual_version, .. } = &e {
        let actual = actual_version.map_or_else(|| "none".to_owned(), |v| v.to_string());
        s.metadata_mut().insert("ledger-actual-version", actual.parse().expect("ascii digits"));
    }
    if code == ErrorCode::Internal {
        tracing::error!(error = %e, "internal error");
    }
    s
}

/// A status for a stable error code (mapped to `tonic::Code` by the registry), with the code in
/// `ledger-error-code` metadata. Used for the other crates' errors too.
pub(crate) fn coded_status(code: ErrorCode, message: String) -> Status {
    code.status(message)
}

pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, LedgerError> + Send + 'static) -> Result<T, Status> {
    blocking_outcome(f).await?.map_err(status)
}

/// Runs blocking work (a synced file or RocksDB write) on a blocking thread.
pub(crate) async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|_| ErrorCode::Internal.status("blocking task failed"))
}

/// Runs a blocking engine call; the outer error is a failed task, the inner one the engine's
/// (kept unmapped, so the caller can record a refused access with its code).
pub(crate) async fn blocking_outcome<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LedgerError> + Send + 'static,
) -> Result<Result<T, LedgerError>, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|_| ErrorCode::Internal.status("read task failed"))
}

/// Cuts `items` into messages of at most `max_items` items and about `max_bytes` bytes (`size`
/// of each; one item always fits) and hands each to `send`, in order. Returns false as soon as
/// `send` does (the receiver went away).
pub(crate) fn send_sized<T, U>(
    items: impl IntoIterator<Item = T>,
    max_items: usize,
    max_bytes: usize,
    mut size: impl FnMut(&T) -> usize,
    mut wire: impl FnMut(T) -> U,
    send: &mut dyn FnMut(Vec<U>) -> bool,
) -> bool {
    let mut message = Vec::new();
    let mut bytes = 0usize;
    for item in items {
        let len = size(&item);
        if !message.is_empty() && (message.len() >= max_items.max(1) || bytes + len > max_bytes) {
            if !send(std::mem::take(&mut message)) {
                return false;
            }
            bytes = 0;
        }
        bytes += len;
        message.push(wire(item));
    }
    message.is_empty() || send(message)
}

/// Sends the events at `positions`, each with its inclusion proof against tree `size`, as
/// messages sized by the configured read chunk (`seen` looks at each first). Blocking. Returns
/// `Ok(false)` when the receiver went away.
pub(crate) fn send_proven(
    ledger: &::ledger::Ledger,
    positions: &[::ledger::types::Position],
    size: u64,
    nodes: &mut ::ledger::NodeCache,
    seen: &mut dyn FnMut(&::ledger::ProvenEvent),
    send: &mut dyn FnMut(Vec<proto::v1::ProvenEvent>) -> bool,
) -> Result<bool, LedgerError> {
    let tuning = &ledger.config().tuning;
    for group in positions.chunks(tuning.read_chunk_events.max(1)) {
        let events = ledger.proven_events(group, size, nodes)?;
        let sized = |p: &::ledger::ProvenEvent| p.event.approx_bytes() + p.header.len() + 48 * (p.proof.len() + 1);
        let wire = |p: ::ledger::ProvenEvent| {
            seen(&p);
            audit::proven_to_pb(p)
        };
        if !send_sized(events, usize::MAX, tuning.read_chunk_bytes_max, sized, wire, send) {
            return Ok(false);
        }
    }
    Ok(true)
}
