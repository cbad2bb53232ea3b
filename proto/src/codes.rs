//! The API's one closed registry of error codes: every refusal the ledger answers, on gRPC and on
//! HTTP, carries one of these stable, namespaced strings (in `ledger-error-code` metadata on gRPC,
//! in the JSON body on HTTP), and access records use the same strings as their `outcome`. Each
//! code is mapped exactly once to a gRPC status code ([`ErrorCode::grpc_code`]) and once to an
//! HTTP status ([`ErrorCode::http_status`]). It lives with the API definition, not in the engine:
//! the engine maps its errors into it, and channel rules (WhatsApp's window) are API facts here,
//! not engine concepts.

use std::fmt;

/// A stable error code. Clients may match on the string form; it never changes meaning.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ErrorCode {
    /// A request field is malformed.
    InvalidArgument,
    /// The request body is not a valid protobuf message of the method (or not a valid webhook
    /// body of the provider).
    MalformedRequest,
    /// A named limit was exceeded.
    LimitExceeded,
    /// No valid credentials: no token or certificate, or an unknown, expired or revoked one.
    Unauthenticated,
    /// Authenticated, but the principal's roles or region scope do not allow this.
    PermissionDenied,
    /// The principal is over one of its quotas; retry with backoff.
    QuotaExceeded,
    /// A streaming response was ended because the client stopped reading.
    StreamStalled,
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
    /// The store refuses writes after a failed write or sync, or a dead writer, until restart.
    StorePoisoned,
    /// The ledger is shutting down or overloaded; retry.
    Unavailable,
    /// The method does not exist on this server.
    UnknownMethod,
    /// Anything else, on our side; the log has the details.
    Internal,
}

impl ErrorCode {
    /// Every code, for tests and documentation.
    pub const ALL: [ErrorCode; 20] = [
        ErrorCode::InvalidArgument,
        ErrorCode::MalformedRequest,
        ErrorCode::LimitExceeded,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::QuotaExceeded,
        ErrorCode::StreamStalled,
        ErrorCode::WrongExpectedVersion,
        ErrorCode::DuplicateEventId,
        ErrorCode::NotFound,
        ErrorCode::OutOfRange,
        ErrorCode::RegionNotServed,
        ErrorCode::RegionMismatch,
        ErrorCode::CustomerErased,
        ErrorCode::WhatsAppWindowClosed,
        ErrorCode::IntegrityViolation,
        ErrorCode::StorePoisoned,
        ErrorCode::Unavailable,
        ErrorCode::UnknownMethod,
        ErrorCode::Internal,
    ];

    /// The stable string form, e.g. `ledger.wrong_expected_version`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "ledger.invalid_argument",
            ErrorCode::MalformedRequest => "ledger.malformed_request",
            ErrorCode::LimitExceeded => "ledger.limit_exceeded",
            ErrorCode::Unauthenticated => "ledger.unauthenticated",
            ErrorCode::PermissionDenied => "ledger.permission_denied",
            ErrorCode::QuotaExceeded => "ledger.quota_exceeded",
            ErrorCode::StreamStalled => "ledger.stream_stalled",
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
            ErrorCode::UnknownMethod => "ledger.unknown_method",
            ErrorCode::Internal => "ledger.internal",
        }
    }

    /// The code of a string form, if it is one.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The HTTP status this code maps to (the only such mapping). Failures on our side are 5xx,
    /// so a webhook provider retries them; the caller's mistakes are 4xx.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument | ErrorCode::MalformedRequest => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::NotFound | ErrorCode::UnknownMethod => 404,
            ErrorCode::DuplicateEventId => 409,
            ErrorCode::CustomerErased => 410,
            ErrorCode::WrongExpectedVersion | ErrorCode::RegionMismatch | ErrorCode::WhatsAppWindowClosed => 412,
            ErrorCode::LimitExceeded => 413,
            ErrorCode::OutOfRange => 416,
            ErrorCode::RegionNotServed => 421,
            ErrorCode::QuotaExceeded | ErrorCode::StreamStalled => 429,
            ErrorCode::IntegrityViolation | ErrorCode::Internal => 500,
            ErrorCode::StorePoisoned | ErrorCode::Unavailable => 503,
        }
    }

    /// The gRPC status code this code maps to (the only such mapping).
    pub fn grpc_code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            ErrorCode::InvalidArgument | ErrorCode::MalformedRequest | ErrorCode::LimitExceeded => Code::InvalidArgument,
            ErrorCode::Unauthenticated => Code::Unauthenticated,
            ErrorCode::PermissionDenied => Code::PermissionDenied,
            ErrorCode::QuotaExceeded | ErrorCode::StreamStalled => Code::ResourceExhausted,
            ErrorCode::WrongExpectedVersion
            | ErrorCode::RegionNotServed
            | ErrorCode::RegionMismatch
            | ErrorCode::CustomerErased
            | ErrorCode::WhatsAppWindowClosed => Code::FailedPrecondition,
            ErrorCode::DuplicateEventId => Code::AlreadyExists,
            ErrorCode::NotFound => Code::NotFound,
            ErrorCode::OutOfRange => Code::OutOfRange,
            ErrorCode::IntegrityViolation => Code::DataLoss,
            ErrorCode::StorePoisoned | ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::UnknownMethod => Code::Unimplemented,
            ErrorCode::Internal => Code::Internal,
        }
    }

    /// The code for a gRPC status that something other than our handlers produced (tonic's own
    /// refusals: a body over the size limit, a timeout, an unknown method), so that it too
    /// carries a registry code.
    pub fn for_grpc_code(code: tonic::Code) -> ErrorCode {
        use tonic::Code;
        match code {
            Code::InvalidArgument => ErrorCode::InvalidArgument,
            Code::OutOfRange => ErrorCode::LimitExceeded,
            Code::Unauthenticated => ErrorCode::Unauthenticated,
            Code::PermissionDenied => ErrorCode::PermissionDenied,
            Code::ResourceExhausted => ErrorCode::QuotaExceeded,
            Code::NotFound => ErrorCode::NotFound,
            Code::Unimplemented => ErrorCode::UnknownMethod,
            Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Aborted => ErrorCode::Unavailable,
            Code::DataLoss => ErrorCode::IntegrityViolation,
            Code::FailedPrecondition => ErrorCode::InvalidArgument,
            Code::AlreadyExists => ErrorCode::DuplicateEventId,
            _ => ErrorCode::Internal,
        }
    }

    /// A gRPC status with this code: the gRPC code, the message, and the string form in
    /// `ledger-error-code` metadata.
    pub fn status(self, message: impl Into<String>) -> tonic::Status {
        let mut s = tonic::Status::new(self.grpc_code(), message);
        s.metadata_mut().insert(METADATA_KEY, tonic::metadata::MetadataValue::from_static(self.as_str()));
        s
    }
}

/// The gRPC metadata key that carries the code.
pub const METADATA_KEY: &str = "ledger-error-code";

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_distinct_namespaced_and_round_trips() {
        let mut names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        for c in ErrorCode::ALL {
            assert!(c.as_str().starts_with("ledger.") && c.as_str().bytes().all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_'));
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
            assert!((400..600).contains(&c.http_status()));
            assert_ne!(c.grpc_code(), tonic::Code::Ok);
            assert_eq!(c.status("x").metadata().get(METADATA_KEY).unwrap(), c.as_str());
        }
    }

    #[test]
    fn our_failures_are_5xx_and_callers_mistakes_4xx() {
        for c in [ErrorCode::Internal, ErrorCode::IntegrityViolation, ErrorCode::StorePoisoned, ErrorCode::Unavailable] {
            assert!(c.http_status() >= 500, "{c}");
        }
        for c in [ErrorCode::InvalidArgument, ErrorCode::MalformedRequest, ErrorCode::Unauthenticated, ErrorCode::PermissionDenied, ErrorCode::LimitExceeded] {
            assert!((400..500).contains(&c.http_status()), "{c}");
        }
    }
}
