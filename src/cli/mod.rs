//! The command-line tools: one file per command group. They are gRPC clients of a running server
//! (`client`), except `sim`, which runs the engine in-process.

pub mod bench;
pub mod client;
pub mod erase;
pub mod keys;
pub mod proof_file;
pub mod projections;
pub mod sim;
pub mod tokens;
pub mod verify;

/// A refused call as the CLI reports it: the server's message and code.
fn fail(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

/// A timestamp as RFC 3339, or `-`.
fn when(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref().map_or_else(|| "-".into(), |t| ledger::time::rfc3339_millis(t.seconds * 1000 + i64::from(t.nanos / 1_000_000)))
}
