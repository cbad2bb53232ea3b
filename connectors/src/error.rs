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
}

impl ConnectorError {
    /// The stable API error code (for the gRPC edge).
    pub fn code(&self) -> ErrorCode {
        match self {
            ConnectorError::Ledger(e) => e.code(),
            ConnectorError::Invalid { .. } | ConnectorError::Unauthorized(_) => ErrorCode::InvalidArgument,
            ConnectorError::UnknownAccount(_) => ErrorCode::NotFound,
            ConnectorError::WindowClosed => ErrorCode::WhatsAppWindowClosed,
            ConnectorError::Storage(_) => ErrorCode::Internal,
        }
    }

    /// The HTTP status of this error.
    pub fn http_status(&self) -> u16 {
        match self {
            ConnectorError::Unauthorized(_) => 401,
            ConnectorError::Invalid { .. } => 400,
            ConnectorError::UnknownAccount(_) => 404,
            ConnectorError::Ledger(e) => match e.code() {
                // The provider must retry: never a 4xx for a failure on our side.
                ErrorCode::InvalidArgument | ErrorCode::LimitExceeded => 400,
                ErrorCode::StorePoisoned | ErrorCode::Unavailable => 503,
                _ => 500,
            },
            ConnectorError::WindowClosed => 412,
            ConnectorError::Storage(_) => 500,
        }
    }
}

impl From<rocksdb::Error> for ConnectorError {
    fn from(e: rocksdb::Error) -> Self {
        ConnectorError::Storage(e.to_string())
    }
}
