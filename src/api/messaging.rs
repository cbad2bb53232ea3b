//! The gRPC edge of `ledger.v1.Messaging`: outbound messages through the connectors' outbox.

use std::sync::Arc;

use connectors::outbound::{Content, Outbound, SendRequest};
use connectors::ConnectorError;
use ledger::types::CustomerId;
use proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::{coded_status, status};

/// Maps a connectors error to a gRPC status through the shared code mapping.
pub fn connector_status(e: ConnectorError) -> Status {
    match e {
        ConnectorError::Ledger(inner) => status(inner),
        other => coded_status(other.code(), other.to_string()),
    }
}

/// The `ledger.v1.Messaging` service.
#[derive(Clone)]
pub struct MessagingService {
    ledger: ledger::Ledger,
    outbound: Arc<Outbound>,
}

impl MessagingService {
    /// A service over the outbound sender.
    pub fn new(ledger: ledger::Ledger, outbound: Arc<Outbound>) -> Self {
        MessagingService { ledger, outbound }
    }
}

#[tonic::async_trait]
impl pb::messaging_server::Messaging for MessagingService {
    async fn send_message(&self, request: Request<pb::SendMessageRequest>) -> Result<Response<pb::SendMessageResponse>, Status> {
        let caller = crate::api::Caller::of(&request);
        let req = request.into_inner();
        let customer = CustomerId::parse(&req.customer_id, "customer_id").map_err(status)?;
        caller.may_customer(&self.ledger, customer).await?;
        let content = match req.content {
            Some(pb::send_message_request::Content::Text(body)) => Content::Text { body },
            Some(pb::send_message_request::Content::Template(t)) => Content::Template { name: t.name, language: t.language, parameters: t.parameters },
            None => return Err(status(ledger::LedgerError::invalid("content", "text or template is required"))),
        };
        if req.request_id.is_empty() || req.request_id.len() > 128 {
            return Err(status(ledger::LedgerError::invalid("request_id", "must be 1 to 128 bytes")));
        }
        let (event_id, position) = self
            .outbound
            .send(SendRequest {
                customer,
                account: req.account,
                to: req.to,
                content,
                request_id: req.request_id,
                thread: (!req.thread.is_empty()).then_some(req.thread),
                from: None,
                reply_to: None,
            })
            .await
            .map_err(connector_status)?;
        Ok(Response::new(pb::SendMessageResponse { event_id: event_id.to_string(), position: position.0 }))
    }
}
