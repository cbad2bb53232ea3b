//! The crate's error enum and its mapping to HTTP and API codes.

use ledger::{ErrorCode, LedgerError};

/// Why a webhook or an identity request failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The signature is missing or wrong: 401, nothing written.
    #[error("signature {0}")]
    Unauthorized(&'static str),
    /// The body is malformed: 400 naming the field, nothing written.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it (never the value).
        reason: String,
    },
    /// No channel account is configured for the request.
    #[error("no {0} account is configured for this request")]
    UnknownAccount(&'static str),
    /// From the ledger; an append failure becomes a 5xx so the provider retries.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// WhatsApp's customer-service window is closed: only a template may be sent.
    #[error("outside WhatsApp's 24-hour customer service window: free-form text is not allowed, send an approved template")]
    WindowClosed,
    /// The connectors' own store failed.
    #[error("connectors store: {0}")]
    Storage(String),
    /// The body is larger than `body_bytes_max`: 413, nothing read past the limit.
    #[error("body exceeds body_bytes_max ({limit} bytes)")]
    TooLarge {
        /// The configured limit.
        limit: usize,
    },
}

impl ConnectorError {
    /// The stable API error code (for the gRPC edge).
    pub fn code(&self) -> ErrorCode {
        match self {
            ConnectorError::Ledger(e) => e.code(),
            ConnectorError::Invalid { .. } => ErrorCode::InvalidArgument,
            ConnectorError::Unauthorized(_) => ErrorCode::Unauthenticated,
            ConnectorError::UnknownAccount(_) => ErrorCode::NotFound,
            ConnectorError::WindowClosed => ErrorCode::WhatsAppWindowClosed,
            ConnectorError::Storage(_) => ErrorCode::Internal,
            ConnectorError::TooLarge { .. } => ErrorCode::LimitExceeded,
        }
    }

    /// The HTTP status of this error: its code's, from the registry (the one HTTP mapping),
    /// except that an engine refusal of what the connector itself built (a region not served,
    /// say) is our configuration's fault, not the provider's: 500, so the provider redelivers
    /// once it is fixed rather than dropping the customer's message.
    pub fn http_status(&self) -> u16 {
        let status = self.code().http_status();
        match self {
            ConnectorError::Ledger(e) if status < 500 && !matches!(e.code(), ErrorCode::InvalidArgument | ErrorCode::LimitExceeded) => 500,
            _ => status,
        }
    }

    /// Why a webhook was refused, as a metric label and log field: a small closed set.
    pub fn refusal_reason(&self) -> &'static str {
        match self {
            ConnectorError::Unauthorized(why) if why.contains("timestamp") => "stale_timestamp",
            ConnectorError::Unauthorized(why) if why.contains("missing") || why.contains("required") => "signature_missing",
            ConnectorError::Unauthorized(_) => "signature",
            ConnectorError::Invalid { .. } => "malformed",
            ConnectorError::UnknownAccount(_) => "unknown_account",
            ConnectorError::TooLarge { .. } => "too_large",
            ConnectorError::WindowClosed => "window_closed",
            ConnectorError::Ledger(_) => "rejected",
            ConnectorError::Storage(_) => "storage",
        }
    }
}

impl From<rocksdb::Error> for ConnectorError {
    fn from(e: rocksdb::Error) -> Self {
        ConnectorError::Storage(e.to_string())
    }
}
