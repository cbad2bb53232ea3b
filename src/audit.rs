//! The gRPC edge of `ledger.v1.Audit`: signed tree heads and RFC 9162 proofs.

use ledger::types::Position;
use ledger::Ledger;
use proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::grpc::{blocking, millis_to_pb};

/// The `ledger.v1.Audit` service.
#[derive(Clone)]
pub struct AuditService {
    ledger: Ledger,
}

impl AuditService {
    /// A service over `ledger`.
    pub fn new(ledger: Ledger) -> Self {
        AuditService { ledger }
    }
}

fn current_or(size: u64, ledger: &Ledger) -> u64 {
    if size == 0 { ledger.committed_size() } else { size }
}

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditService {
    async fn get_tree_head(&self, _: Request<pb::GetTreeHeadRequest>) -> Result<Response<pb::GetTreeHeadResponse>, Status> {
        let (cp, note) = self.ledger.signed_tree_head();
        Ok(Response::new(pb::GetTreeHeadResponse {
            tree_head: Some(pb::SignedTreeHead {
                origin: cp.origin,
                tree_size: cp.size,
                root_hash: cp.root.to_vec(),
                timestamp: Some(millis_to_pb(ledger::types::UnixMillis(cp.timestamp_ms))),
                checkpoint: note,
            }),
        }))
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
}
