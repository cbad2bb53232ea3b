//! The crate's error enum and its mapping to the API's error codes.

use ledger::{ErrorCode, LedgerError};

/// Why an erasure operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    /// From the ledger (not found, region not served, shutting down, ...).
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A request field is malformed.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing is known under that request id or customer.
    #[error("no erasure found for that {0}")]
    NotFound(&'static str),
    /// The erasure store failed.
    #[error("erasure store: {0}")]
    Storage(#[from] rocksdb::Error),
    /// A stored record did not decode.
    #[error("erasure store: corrupt record: {0}")]
    Corrupt(String),
}

impl ErasureError {
    /// The stable API error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ErasureError::Ledger(e) => e.code(),
            ErasureError::Invalid { .. } => ErrorCode::InvalidArgument,
            ErasureError::NotFound(_) => ErrorCode::NotFound,
            ErasureError::Storage(_) | ErasureError::Corrupt(_) => ErrorCode::Internal,
        }
    }
}
