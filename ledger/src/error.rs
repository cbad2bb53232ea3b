//! The engine's one error enum, and the closed set of API error codes it maps to. Messages are
//! lowercase, name the field or limit at fault, and never carry personal data or secrets.

use std::fmt;

/// The closed set of error codes the API edge maps to gRPC and HTTP status codes. The string forms
/// are stable and namespaced; clients may match on them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ErrorCode {
    /// A request field is malformed.
    InvalidArgument,
    /// A named limit was exceeded.
    LimitExceeded,
    /// The stream is not at the expected version.
    WrongExpectedVersion,
    /// An event id was already used for different content.
    DuplicateEventId,
    /// The customer, or the thing asked for, does not exist.
    NotFound,
    /// A position or tree size is beyond the log.
    OutOfRange,
    /// The customer's region is not served by this node.
    RegionNotServed,
    /// The customer's region does not match the one given.
    RegionMismatch,
    /// The customer was erased; their id cannot be used again.
    CustomerErased,
    /// WhatsApp's 24-hour customer-service window is closed: only a template may be sent.
    WhatsAppWindowClosed,
    /// Stored data failed an integrity check.
    IntegrityViolation,
    /// The store refuses writes after a failed write or sync, until restart.
    StorePoisoned,
    /// The ledger is shutting down or overloaded; retry.
    Unavailable,
    /// Anything else; the log has the details.
    Internal,
}

impl ErrorCode {
    /// The stable string form, e.g. `ledger.wrong_expected_version`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "ledger.invalid_argument",
            ErrorCode::LimitExceeded => "ledger.limit_exceeded",
            ErrorCode::WrongExpectedVersion => "ledger.wrong_expected_version",
            ErrorCode::DuplicateEventId => "ledger.duplicate_event_id",
            ErrorCode::NotFound => "ledger.not_found",
            ErrorCode::OutOfRange => "ledger.out_of_range",
            ErrorCode::RegionNotServed => "ledger.region_not_served",
            ErrorCode::RegionMismatch => "ledger.region_mismatch",
            ErrorCode::CustomerErased => "ledger.customer_erased",
            ErrorCode::WhatsAppWindowClosed => "ledger.whatsapp_window_closed",
            ErrorCode::IntegrityViolation => "ledger.integrity_violation",
            ErrorCode::StorePoisoned => "ledger.store_poisoned",
            ErrorCode::Unavailable => "ledger.unavailable",
            ErrorCode::Internal => "ledger.internal",
        }
    }

    /// The HTTP status this code maps to.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::LimitExceeded => 413,
            ErrorCode::WrongExpectedVersion | ErrorCode::RegionMismatch | ErrorCode::WhatsAppWindowClosed => 412,
            ErrorCode::DuplicateEventId => 409,
            ErrorCode::NotFound => 404,
            ErrorCode::OutOfRange => 416,
            ErrorCode::RegionNotServed => 421,
            ErrorCode::CustomerErased => 410,
            ErrorCode::IntegrityViolation | ErrorCode::Internal => 500,
            ErrorCode::StorePoisoned | ErrorCode::Unavailable => 503,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
            LedgerError::Storage(_) | LedgerError::Io { .. } | LedgerError::Crypto(_) => ErrorCode::Internal,
        }
    }
}
