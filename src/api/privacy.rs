//! The gRPC edges of `ledger.v1.Privacy` (erasure, its status, exports) and `ledger.v1.Admin`
//! (KEK rotation and destruction).

use std::sync::Arc;

use erasure::{DeliveryState, ErasureError, ErasureStatus, Eraser};
use ledger::types::{CustomerId, Position, Region, UnixMillis};
use ledger::{Ledger, LedgerError, NodeCache, Payload};
use proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::audit::signed_head;
use crate::api::{blocking, blocking_outcome, coded_status, millis_to_pb, off_runtime, record_access, refuse, send_proven, status, Caller, STREAM_BUFFER_MESSAGES};

fn erasure_status(e: ErasureError) -> Status {
    match e {
        ErasureError::Ledger(e) => status(e),
        other => {
            if other.code() == ledger::ErrorCode::Internal {
                tracing::error!(error = %other, "erasure failed");
            }
            coded_status(other.code(), other.to_string())
        }
    }
}

fn ts(ms: Option<i64>) -> Option<prost_types::Timestamp> {
    ms.map(|m| millis_to_pb(UnixMillis(m)))
}

fn status_to_pb(s: ErasureStatus) -> pb::ErasureStatus {
    pb::ErasureStatus {
        request_id: s.request_id,
        customer_id: s.customer.to_string(),
        legal_basis: s.legal_basis,
        requested_by: s.requested_by,
        requested_at: ts(Some(s.requested_at_ms)),
        unreadable_at: ts(s.unreadable_at_ms),
        purged_at: ts(s.purged_at_ms),
        certificate: s.certificate.unwrap_or_default(),
        key_fingerprint: s.key_fingerprint.unwrap_or_default(),
        also_requested_as: s.also_requested_as,
        deliveries: s
            .deliveries
            .into_iter()
            .map(|d| pb::DownstreamDelivery {
                downstream: d.downstream,
                webhook_id: d.webhook_id,
                state: match d.state {
                    DeliveryState::Pending => pb::DeliveryState::Pending,
                    DeliveryState::Delivered => pb::DeliveryState::Delivered,
                    DeliveryState::DeadLetter => pb::DeliveryState::DeadLetter,
                } as i32,
                attempts: d.attempts,
                last_error: d.last_error.unwrap_or_default(),
                delivered_at: ts(d.delivered_at_ms),
                next_attempt_at: ts(d.next_attempt_ms),
            })
            .collect(),
    }
}

/// The `ledger.v1.Privacy` service.
#[derive(Clone)]
pub struct PrivacyService {
    ledger: Ledger,
    eraser: Arc<Eraser>,
}

impl PrivacyService {
    /// A service over `ledger` and its erasure workflow.
    pub fn new(ledger: Ledger, eraser: Arc<Eraser>) -> Self {
        PrivacyService { ledger, eraser }
    }
}

/// Streams the proven events of `customers`, each customer's in global order, against `size`,
/// into `tx` as export chunks; ends with the summary. Blocking.
fn stream_export(
    ledger: &Ledger,
    customers: &[CustomerId],
    size: u64,
    send: &mut dyn FnMut(pb::ExportChunk) -> bool,
) -> Result<(), LedgerError> {
    let mut nodes = NodeCache::default();
    let (mut events, mut erased) = (0u64, 0u64);
    {
        let mut count = |p: &ledger::ProvenEvent| {
            events += 1;
            erased += u64::from(p.event.payload == Payload::Erased);
        };
        let mut send_events = |events| send(pb::ExportChunk { tree_head: None, events, summary: None });
        for &customer in customers {
            let positions = ledger.customer_positions(customer, None, Position(0), Position(size))?;
            if !send_proven(ledger, &positions, size, &mut nodes, &mut count, &mut send_events)? {
                return Ok(());
            }
        }
    }
    let summary = pb::ExportSummary { events, customers: customers.len() as u64, erased_events: erased };
    send(pb::ExportChunk { tree_head: None, events: Vec::new(), summary: Some(summary) });
    Ok(())
}

impl PrivacyService {
    /// Records the access, signs the head (which covers the record), and streams the export.
    async fn export<R: Send + 'static>(
        &self,
        access: ledger::access::AccessRecord,
        customers: Vec<CustomerId>,
        wrap: fn(pb::ExportChunk) -> R,
    ) -> Result<Response<crate::api::streams::Responses<R>>, Status> {
        record_access(&self.ledger, &access).await?;
        let head = signed_head(&self.ledger);
        let size = head.tree_size;
        let ledger = self.ledger.clone();
        let (tx, rx) = crate::api::streams::channel(STREAM_BUFFER_MESSAGES);
        tokio::task::spawn_blocking(move || {
            if !tx.blocking_send(Ok(wrap(pb::ExportChunk { tree_head: Some(head), events: Vec::new(), summary: None }))) {
                return;
            }
            let mut send = |c: pb::ExportChunk| tx.blocking_send(Ok(wrap(c)));
            if let Err(e) = stream_export(&ledger, &customers, size, &mut send) {
                let _ = tx.blocking_send(Err(status(e)));
            }
        });
        Ok(Response::new(rx))
    }
}

#[tonic::async_trait]
impl pb::privacy_server::Privacy for PrivacyService {
    async fn erase_customer(&self, request: Request<pb::EraseCustomerRequest>) -> Result<Response<pb::EraseCustomerResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let customer = CustomerId::parse(&req.customer_id, "customer_id").map_err(status)?;
        caller.may_customer(&self.ledger, customer).await?;
        let mut access = caller.access("ledger.v1.Privacy/EraseCustomer");
        access.customer = Some(customer);
        record_access(&self.ledger, &access).await?;
        let erase = erasure::EraseRequest {
            customer,
            request_id: req.request_id,
            legal_basis: req.legal_basis,
            requested_by: req.requested_by,
        };
        let certificate = self.eraser.erase(erase).await.map_err(erasure_status)?;
        let status = self.eraser.status(None, Some(customer)).await.map_err(erasure_status)?;
        Ok(Response::new(pb::EraseCustomerResponse { certificate, status: Some(status_to_pb(status)) }))
    }

    async fn get_erasure_status(
        &self,
        request: Request<pb::GetErasureStatusRequest>,
    ) -> Result<Response<pb::GetErasureStatusResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let named = if req.customer_id.is_empty() { None } else { Some(CustomerId::parse(&req.customer_id, "customer_id").map_err(status)?) };
        let request_id = (!req.request_id.is_empty()).then_some(req.request_id);
        // By request id, the scope is that of the customer the request erased: a DPO asks for
        // its own erasures by either id.
        let customer = match (&request_id, named) {
            (_, Some(c)) => Some(c),
            (Some(id), None) => Some(self.eraser.customer_of_request(id.clone()).await.map_err(erasure_status)?.ok_or_else(|| status(LedgerError::NotFound { what: "erasure request" }))?),
            (None, None) => None,
        };
        match customer {
            Some(c) => caller.may_customer(&self.ledger, c).await?,
            None => return Err(status(LedgerError::invalid("request_id", "or customer_id is required"))),
        }
        let s = self.eraser.status(request_id, customer).await.map_err(erasure_status)?;
        Ok(Response::new(pb::GetErasureStatusResponse { status: Some(status_to_pb(s)) }))
    }

    async fn retry_dead_letters(
        &self,
        request: Request<pb::RetryDeadLettersRequest>,
    ) -> Result<Response<pb::RetryDeadLettersResponse>, Status> {
        let caller = Caller::of(&request);
        // Dead letters of every region's erasures are requeued: a scoped admin may not.
        caller.may_all_regions(&self.ledger).await?;
        record_access(&self.ledger, &caller.access("ledger.v1.Privacy/RetryDeadLetters")).await?;
        let requeued = self.eraser.retry_dead_letters().await.map_err(erasure_status)?;
        Ok(Response::new(pb::RetryDeadLettersResponse { requeued }))
    }

    type ExportCustomerStream = crate::api::streams::Responses<pb::ExportCustomerResponse>;

    async fn export_customer(&self, request: Request<pb::ExportCustomerRequest>) -> Result<Response<Self::ExportCustomerStream>, Status> {
        let caller = Caller::of(&request);
        let customer = CustomerId::parse(&request.into_inner().customer_id, "customer_id").map_err(status)?;
        caller.may_customer(&self.ledger, customer).await?;
        let mut access = caller.access("ledger.v1.Privacy/ExportCustomer");
        access.customer = Some(customer);
        let l = self.ledger.clone();
        if let Err(e) = blocking_outcome(move || l.check_customer_readable(customer)).await? {
            return Err(refuse(&self.ledger, access, e).await);
        }
        if ledger::access::is_system_customer(customer) {
            return Err(status(LedgerError::invalid("customer_id", "is a system customer of the ledger; use Audit.Replay")));
        }
        self.export(access, vec![customer], |chunk| pb::ExportCustomerResponse { chunk: Some(chunk) }).await
    }

    type ExportRegionStream = crate::api::streams::Responses<pb::ExportRegionResponse>;

    async fn export_region(&self, request: Request<pb::ExportRegionRequest>) -> Result<Response<Self::ExportRegionStream>, Status> {
        let caller = Caller::of(&request);
        let region = Region::parse(&request.into_inner().region, "region").map_err(status)?;
        caller.may_region(&self.ledger, region.as_str()).await?;
        let access = caller.access("ledger.v1.Privacy/ExportRegion").param("region", region.as_str());
        let (l, r) = (self.ledger.clone(), region.clone());
        let customers = match blocking_outcome(move || l.customers_in_region(&r)).await? {
            Ok(c) => c,
            Err(e) => return Err(refuse(&self.ledger, access, e).await),
        };
        let access = access.param("customers", customers.len());
        self.export(access, customers, |chunk| pb::ExportRegionResponse { chunk: Some(chunk) }).await
    }
}

/// The `ledger.v1.Admin` service.
#[derive(Clone)]
pub struct AdminService {
    ledger: Ledger,
    views: Arc<projections::Runner>,
    tokens: Arc<crate::security::TokenStore>,
}

impl AdminService {
    /// A service over `ledger`, its views and the token store.
    pub fn new(ledger: Ledger, views: Arc<projections::Runner>, tokens: Arc<crate::security::TokenStore>) -> Self {
        AdminService { ledger, views, tokens }
    }
}

fn token_to_pb(e: crate::security::TokenEntry) -> pb::TokenInfo {
    pb::TokenInfo {
        id: e.id,
        principal: e.principal.name,
        roles: e.principal.roles.iter().map(|r| r.as_str().to_owned()).collect(),
        regions: e.principal.regions.unwrap_or_default(),
        created_unix_ms: e.created_ms,
        expires_unix_ms: e.expires_ms.unwrap_or(0),
        revoked_unix_ms: e.revoked_ms.unwrap_or(0),
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn rotate_region_key(&self, request: Request<pb::RotateRegionKeyRequest>) -> Result<Response<pb::RotateRegionKeyResponse>, Status> {
        let caller = Caller::of(&request);
        let region = Region::parse(&request.into_inner().region, "region").map_err(status)?;
        caller.may_region(&self.ledger, region.as_str()).await?;
        record_access(&self.ledger, &caller.access("ledger.v1.Admin/RotateRegionKey").param("region", region.as_str())).await?;
        let r = self.ledger.rotate_kek(&region).await.map_err(status)?;
        Ok(Response::new(pb::RotateRegionKeyResponse { version: r.version, rewrapped: r.rewrapped }))
    }

    async fn destroy_region_key(&self, request: Request<pb::DestroyRegionKeyRequest>) -> Result<Response<pb::DestroyRegionKeyResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let region = Region::parse(&req.region, "region").map_err(status)?;
        caller.may_region(&self.ledger, region.as_str()).await?;
        record_access(&self.ledger, &caller.access("ledger.v1.Admin/DestroyRegionKey").param("region", region.as_str()).param("version", req.version)).await?;
        let l = self.ledger.clone();
        blocking(move || l.destroy_kek(&region, req.version)).await?;
        Ok(Response::new(pb::DestroyRegionKeyResponse {}))
    }

    async fn list_region_keys(&self, request: Request<pb::ListRegionKeysRequest>) -> Result<Response<pb::ListRegionKeysResponse>, Status> {
        let caller = Caller::of(&request);
        let region = Region::parse(&request.into_inner().region, "region").map_err(status)?;
        caller.may_region(&self.ledger, region.as_str()).await?;
        let l = self.ledger.clone();
        let r = region.clone();
        let counts = blocking(move || l.deks_by_kek_version(&r)).await?;
        let versions = self.ledger.kek_versions(&region);
        let current = versions.last().copied();
        Ok(Response::new(pb::ListRegionKeysResponse {
            versions: versions
                .into_iter()
                .map(|v| pb::RegionKeyVersion { version: v, current: Some(v) == current, data_keys: counts.get(&v).copied().unwrap_or(0) })
                .collect(),
        }))
    }

    async fn get_projection_status(
        &self,
        _: Request<pb::GetProjectionStatusRequest>,
    ) -> Result<Response<pb::GetProjectionStatusResponse>, Status> {
        let views = self.views.clone();
        let out = blocking(move || {
            let mut out = Vec::new();
            for name in projections::FOLLOWERS {
                let err = crate::api::views::view_error;
                let lag_seconds = views.lag_seconds(name).map_err(err)?;
                metrics::gauge!("ledger_projection_lag_seconds", "view" => name).set(lag_seconds);
                out.push(pb::ProjectionStatus { name: name.into(), checkpoint: views.checkpoint(name).map_err(err)?, lag_positions: views.lag(name).map_err(err)?, lag_seconds });
            }
            Ok(out)
        })
        .await?;
        Ok(Response::new(pb::GetProjectionStatusResponse { projections: out }))
    }

    async fn create_token(&self, request: Request<pb::CreateTokenRequest>) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let roles = req.roles.iter().map(|r| crate::security::Role::parse(r)).collect::<Result<Vec<_>, _>>().map_err(|e| status(LedgerError::invalid("roles", &e)))?;
        let mut regions = Vec::new();
        for r in &req.regions {
            let region = Region::parse(r, "regions").map_err(status)?;
            // Only within the creator's own scope: a scoped admin cannot mint a wider token.
            caller.may_region(&self.ledger, region.as_str()).await?;
            regions.push(region.as_str().to_owned());
        }
        if regions.is_empty() {
            caller.may_all_regions(&self.ledger).await?;
        }
        let principal = crate::security::Principal { name: req.principal, roles, regions: (!regions.is_empty()).then_some(regions) };
        let ttl_ms = (req.ttl_seconds > 0).then(|| i64::try_from(req.ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX));
        let record = caller.access("ledger.v1.Admin/CreateToken").param("for", &principal.name).param("roles", req.roles.join(","));
        record_access(&self.ledger, &record).await?;
        // The store is a synced file rewrite: off the runtime.
        let tokens = self.tokens.clone();
        let (entry, token) = off_runtime(move || tokens.create(principal, ttl_ms)).await?.map_err(|e| status(LedgerError::invalid("principal", &e.to_string())))?;
        Ok(Response::new(pb::CreateTokenResponse { token: token.expose().to_owned(), info: Some(token_to_pb(entry)) }))
    }

    async fn revoke_token(&self, request: Request<pb::RevokeTokenRequest>) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let caller = Caller::of(&request);
        let id = request.into_inner().id;
        // A scoped admin may revoke only tokens whose scope lies inside its own; to it, any other
        // token does not exist (the same answer as an unknown id, so it learns nothing).
        let target = self.tokens.list().into_iter().find(|e| e.id == id);
        let visible = target.as_ref().is_some_and(|e| caller.covers(&e.principal));
        if target.is_some() && !visible {
            return Err(caller.refuse_scope(&self.ledger, "token_id", &id).await);
        }
        record_access(&self.ledger, &caller.access("ledger.v1.Admin/RevokeToken").param("token_id", &id)).await?;
        let tokens = self.tokens.clone();
        match off_runtime(move || tokens.revoke(&id)).await? {
            Ok(true) => Ok(Response::new(pb::RevokeTokenResponse {})),
            Ok(false) => Err(status(LedgerError::NotFound { what: "token with that id" })),
            Err(e) => Err(ledger::ErrorCode::Internal.status(format!("the token store could not be written: {e}"))),
        }
    }

    async fn list_tokens(&self, request: Request<pb::ListTokensRequest>) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = Caller::of(&request);
        // A scoped admin sees only the tokens whose scope lies inside its own.
        let tokens = self.tokens.list().into_iter().filter(|e| caller.covers(&e.principal)).map(token_to_pb).collect();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn rebuild_projection(&self, request: Request<pb::RebuildProjectionRequest>) -> Result<Response<pb::RebuildProjectionResponse>, Status> {
        let caller = Caller::of(&request);
        let name = request.into_inner().name;
        // A rebuild rewrites every region's view rows: a scoped admin may not.
        caller.may_all_regions(&self.ledger).await?;
        record_access(&self.ledger, &caller.access("ledger.v1.Admin/RebuildProjection").param("view", &name)).await?;
        let Some(view) = projections::view_named(&name) else {
            return Err(status(LedgerError::invalid("name", &format!("must be one of {}", projections::VIEWS.join(", ")))));
        };
        let views = self.views.clone();
        let applied = blocking(move || views.rebuild(&[view.as_ref()]).map_err(crate::api::views::view_error)).await?;
        Ok(Response::new(pb::RebuildProjectionResponse { events_applied: applied }))
    }
}
