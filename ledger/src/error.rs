//! The engine's one error enum, and its mapping into the API's closed set of error codes.
//! Messages are lowercase, name the field or limit at fault, and never carry personal data or
//! secrets.

/// The API's closed registry of error codes (it lives with the API, in `proto::codes`); the
/// engine maps each of its errors to one.
pub use proto::codes::ErrorCode;

/// Everything the engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A request field is malformed.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A named limit was exceeded.
    #[error("{field} exceeds a limit: {limit}")]
    LimitExceeded {
        /// The field at fault.
        field: &'static str,
        /// The limit, with its value.
        limit: String,
    },
    /// The stream is not at the expected version; nothing was written.
    #[error("wrong expected version: expected {expected}, stream is at {actual}")]
    WrongExpectedVersion {
        /// What the request expected, in words.
        expected: String,
        /// The stream's actual last version, or `none` if it has no events.
        actual: String,
        /// The actual last version, when there is one.
        actual_version: Option<u64>,
    },
    /// An event id was already appended with different content, or in another append.
    #[error("event id {event_id} was already appended with different content")]
    DuplicateEventId {
        /// The offending id.
        event_id: String,
    },
    /// Something asked for does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was not found.
        what: &'static str,
    },
    /// A position or tree size is beyond the log.
    #[error("{what} is out of range: {reason}")]
    OutOfRange {
        /// The argument at fault.
        what: &'static str,
        /// Why, with the bound.
        reason: String,
    },
    /// The customer's region is not served by this node.
    #[error("region {region} is not served by this node (it serves: {served})")]
    RegionNotServed {
        /// The region asked for.
        region: String,
        /// The regions this node serves.
        served: String,
    },
    /// The region given does not match the customer's pinned region.
    #[error("region does not match the customer's region {actual}")]
    RegionMismatch {
        /// The customer's actual region.
        actual: String,
    },
    /// The customer was erased.
    #[error("customer {customer} was erased; use a new customer id")]
    CustomerErased {
        /// The erased customer's id.
        customer: String,
    },
    /// Stored data failed an integrity check.
    #[error("integrity violation: {0}")]
    Integrity(String),
    /// The store refuses writes after a failed write or sync.
    #[error("store is poisoned after a failed write and refuses writes until restart")]
    Poisoned,
    /// The ledger is shutting down.
    #[error("ledger is shutting down")]
    ShuttingDown,
    /// RocksDB failed.
    #[cfg(feature = "engine")]
    #[error("storage error: {0}")]
    Storage(#[from] rocksdb::Error),
    /// File I/O failed (keyring, signing key).
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Cryptography failed (unwrap or decrypt).
    #[error("crypto error: {0}")]
    Crypto(&'static str),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A fault on our side outside the log (a view's store, a task that died); the log has the
    /// details.
    #[error("internal error: {0}")]
    Internal(String),
}

impl LedgerError {
    /// A malformed field.
    pub fn invalid(field: &'static str, reason: &str) -> Self {
        LedgerError::InvalidArgument { field, reason: reason.to_owned() }
    }
    /// An exceeded limit.
    pub fn limit(field: &'static str, limit: &str) -> Self {
        LedgerError::LimitExceeded { field, limit: limit.to_owned() }
    }
    /// The API error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            LedgerError::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            LedgerError::LimitExceeded { .. } => ErrorCode::LimitExceeded,
            LedgerError::WrongExpectedVersion { .. } => ErrorCode::WrongExpectedVersion,
            LedgerError::DuplicateEventId { .. } => ErrorCode::DuplicateEventId,
            LedgerError::NotFound { .. } => ErrorCode::NotFound,
            LedgerError::OutOfRange { .. } => ErrorCode::OutOfRange,
            LedgerError::RegionNotServed { .. } => ErrorCode::RegionNotServed,
            LedgerError::RegionMismatch { .. } => ErrorCode::RegionMismatch,
            LedgerError::CustomerErased { .. } => ErrorCode::CustomerErased,
            LedgerError::Integrity(_) | LedgerError::Corrupt(_) => ErrorCode::IntegrityViolation,
            LedgerError::Poisoned => ErrorCode::StorePoisoned,
            LedgerError::ShuttingDown => ErrorCode::Unavailable,
            #[cfg(feature = "engine")]
            LedgerError::Storage(_) => ErrorCode::Internal,
            LedgerError::Io { .. } | LedgerError::Crypto(_) | LedgerError::Internal(_) => ErrorCode::Internal,
        }
    }
}
