//! The gRPC edge of `ledger.v1.Audit`: signed tree heads, RFC 9162 proofs, audited replay and leaf
//! hashes for rebuilding roots.

use ledger::access::SYSTEM_CUSTOMER;
use ledger::types::{CustomerId, Position, StreamName, UnixMillis};
use ledger::{Ledger, NodeCache, ProvenEvent};
use proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::{blocking, blocking_outcome, millis_to_pb, record_access, recorded_to_pb, refuse, send_proven, status, Caller, STREAM_BUFFER_MESSAGES};

/// Leaf hashes per ListLeafHashes message (32 bytes each).
const LEAVES_PER_MESSAGE: usize = 4096;

/// The `ledger.v1.Audit` service.
#[derive(Clone)]
pub struct AuditService {
    ledger: Ledger,
    views: std::sync::Arc<projections::Runner>,
}

impl AuditService {
    /// A service over `ledger` and its views.
    pub fn new(ledger: Ledger, views: std::sync::Arc<projections::Runner>) -> Self {
        AuditService { ledger, views }
    }
}

pub(crate) fn signed_head(ledger: &Ledger) -> pb::SignedTreeHead {
    let (cp, note) = ledger.signed_tree_head();
    pb::SignedTreeHead {
        origin: cp.origin,
        tree_size: cp.size,
        root_hash: cp.root.to_vec(),
        timestamp: Some(millis_to_pb(UnixMillis(cp.timestamp_ms))),
        checkpoint: note,
    }
}

pub(crate) fn proven_to_pb(p: ProvenEvent) -> pb::ProvenEvent {
    pb::ProvenEvent {
        event: Some(recorded_to_pb(p.event)),
        header: p.header,
        ciphertext_sha256: p.sealed_hash.to_vec(),
        inclusion_proof: p.proof.iter().map(|h| h.to_vec()).collect(),
    }
}

fn current_or(size: u64, ledger: &Ledger) -> u64 {
    if size == 0 { ledger.committed_size() } else { size }
}

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditService {
    async fn get_tree_head(&self, _: Request<pb::GetTreeHeadRequest>) -> Result<Response<pb::GetTreeHeadResponse>, Status> {
        Ok(Response::new(pb::GetTreeHeadResponse { tree_head: Some(signed_head(&self.ledger)) }))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::GetInclusionProofResponse>, Status> {
        let req = request.into_inner();
        let l = self.ledger.clone();
        let (size, leaf, hashes) = blocking(move || {
                let size = current_or(req.tree_size, &l);
                let hashes = l.inclusion_proof(Position(req.position), size)?;
                Ok((size, l.leaf_at(Position(req.position))?, hashes))
            })
            .await?;
        Ok(Response::new(pb::GetInclusionProofResponse {
            position: req.position,
            tree_size: size,
            leaf_hash: leaf.to_vec(),
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::GetConsistencyProofResponse>, Status> {
        let req = request.into_inner();
        let l = self.ledger.clone();
        let (second, hashes) = blocking(move || {
                let second = current_or(req.second_size, &l);
                Ok((second, l.consistency_proof(req.first_size, second)?))
            })
            .await?;
        Ok(Response::new(pb::GetConsistencyProofResponse {
            first_size: req.first_size,
            second_size: second,
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    type ReplayStream = crate::api::streams::Responses<pb::ReplayResponse>;

    async fn replay(&self, request: Request<pb::ReplayRequest>) -> Result<Response<Self::ReplayStream>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let limits = &self.ledger.config().limits;
        let customer = CustomerId::parse(&req.customer_id, "customer_id").map_err(status)?;
        caller.may_customer(&self.ledger, customer).await?;
        let stream = if req.stream.is_empty() { None } else { Some(StreamName::parse(&req.stream, "stream", limits).map_err(status)?) };
        if req.to_position != 0 && req.to_position <= req.from_position {
            return Err(status(ledger::LedgerError::invalid("to_position", "must be 0 or above from_position")));
        }
        let mut access = caller.access("ledger.v1.Audit/Replay");
        access.customer = Some(customer);
        access.stream = stream.as_ref().map(|s| s.as_str().to_owned());
        access = access.param("from_position", req.from_position);
        if req.to_position != 0 {
            access = access.param("to_position", req.to_position);
        }
        if customer != SYSTEM_CUSTOMER {
            let l = self.ledger.clone();
            if let Err(e) = blocking_outcome(move || l.check_customer_readable(customer)).await? {
                return Err(refuse(&self.ledger, access, e).await);
            }
        }
        // The record is written first, so the head below (and every proof) covers it.
        record_access(&self.ledger, &access).await?;
        let head = signed_head(&self.ledger);
        let size = head.tree_size;
        let to = if req.to_position == 0 { size } else { req.to_position.min(size) };
        let ledger = self.ledger.clone();
        let (tx, rx) = crate::api::streams::channel(STREAM_BUFFER_MESSAGES);
        tokio::task::spawn_blocking(move || {
            if !tx.blocking_send(Ok(pb::ReplayResponse { tree_head: Some(head), events: Vec::new() })) {
                return;
            }
            let positions = match ledger.customer_positions(customer, stream.as_ref(), Position(req.from_position), Position(to)) {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.blocking_send(Err(status(e)));
                    return;
                }
            };
            let mut send = |events| tx.blocking_send(Ok(pb::ReplayResponse { tree_head: None, events }));
            if let Err(e) = send_proven(&ledger, &positions, size, &mut NodeCache::default(), &mut |_| {}, &mut send) {
                let _ = tx.blocking_send(Err(status(e)));
            }
        });
        Ok(Response::new(rx))
    }

    type ListLeafHashesStream = crate::api::streams::Responses<pb::ListLeafHashesResponse>;

    async fn list_leaf_hashes(
        &self,
        request: Request<pb::ListLeafHashesRequest>,
    ) -> Result<Response<Self::ListLeafHashesStream>, Status> {
        let req = request.into_inner();
        let committed = self.ledger.committed_size();
        let to = current_or(req.to_position, &self.ledger);
        if to > committed {
            return Err(status(ledger::LedgerError::OutOfRange { what: "to_position", reason: format!("must be at most {committed}") }));
        }
        if req.from_position > to {
            return Err(status(ledger::LedgerError::OutOfRange { what: "from_position", reason: format!("must be at most {to}") }));
        }
        let ledger = self.ledger.clone();
        let (tx, rx) = crate::api::streams::channel(STREAM_BUFFER_MESSAGES);
        tokio::task::spawn_blocking(move || {
            let mut from = req.from_position;
            while from < to {
                let end = to.min(from + LEAVES_PER_MESSAGE as u64);
                let msg = ledger.leaf_hashes(Position(from), Position(end)).map(|leaves| pb::ListLeafHashesResponse {
                    first_position: from,
                    leaf_hashes: leaves.iter().map(|h| h.to_vec()).collect(),
                });
                let failed = msg.is_err();
                if !tx.blocking_send(msg.map_err(status)) || failed {
                    return;
                }
                from = end;
            }
        });
        Ok(Response::new(rx))
    }

    async fn get_customer_audit_trail(
        &self,
        request: Request<pb::GetCustomerAuditTrailRequest>,
    ) -> Result<Response<pb::GetCustomerAuditTrailResponse>, Status> {
        let caller = Caller::of(&request);
        let customer = CustomerId::parse(&request.into_inner().customer_id, "customer_id").map_err(status)?;
        caller.may_customer(&self.ledger, customer).await?;
        let views = self.views.clone();
        let entries = blocking(move || {
            // Bring the view up to date first, so the trail includes every committed record.
            views.catch_up(&projections::AuditView).map_err(crate::api::views::view_error)?;
            projections::AuditView::trail(views.db(), customer).map_err(crate::api::views::view_error)
        })
        .await?;
        Ok(Response::new(pb::GetCustomerAuditTrailResponse {
            entries: entries
                .into_iter()
                .map(|e| pb::AuditTrailEntry {
                    position: e.position,
                    at: Some(millis_to_pb(UnixMillis(e.at_unix_ms))),
                    principal: e.principal,
                    action: e.action,
                    outcome: e.outcome,
                    origin: e.origin,
                    stream: e.stream.unwrap_or_default(),
                    whole_log: e.whole_log,
                })
                .collect(),
        }))
    }
}
