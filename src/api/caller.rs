//! Who is calling and from where, and the access records every decrypting call writes before it
//! reads.

use std::sync::Arc;

use ledger::access::AccessRecord;
use ledger::types::CustomerId;
use ledger::{ErrorCode, EventFilter, Ledger, LedgerError};
use tonic::{Request, Status};

use super::status;
use crate::security::Principal;

/// Who is calling and from where, for access records and region scopes: the principal the
/// authentication layer put on the request, and the peer's socket address.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    principal: Option<Principal>,
    action: String,
    origin: String,
    quotas: Option<Arc<crate::security::quota::Quotas>>,
}

impl Caller {
    pub(crate) fn of<T>(request: &Request<T>) -> Self {
        Caller {
            principal: request.extensions().get::<Principal>().cloned(),
            action: request.extensions().get::<crate::security::Method>().map_or_else(String::new, |m| m.0.clone()),
            origin: request.remote_addr().map_or_else(|| "unknown".into(), |a| a.to_string()),
            quotas: request.extensions().get::<Arc<crate::security::quota::Quotas>>().cloned(),
        }
    }

    /// Charges `events` appended events to the caller's event quota; over it, the call is
    /// refused with `RESOURCE_EXHAUSTED` (recorded at most once a second, counting).
    pub(crate) async fn spend_events(&self, ledger: &Ledger, events: usize) -> Result<(), Status> {
        let (Some(quotas), Some(p)) = (&self.quotas, &self.principal) else { return Ok(()) };
        if quotas.admit_events(&p.name, events) {
            return Ok(());
        }
        Err(crate::security::over_quota(ledger, quotas, self.access(&self.action), "event rate").await)
    }

    fn name(&self) -> &str {
        self.principal.as_ref().map_or("anonymous", |p| p.name.as_str())
    }

    /// An access record of `action` by this caller, outcome `granted`.
    pub(crate) fn access(&self, action: &str) -> AccessRecord {
        AccessRecord::granted(self.name(), action, &self.origin)
    }

    /// Refuses (and records) a caller not scoped to `region`. A request with no principal
    /// never got past authentication, so it is refused too (fail closed).
    pub(crate) async fn may_region(&self, ledger: &Ledger, region: &str) -> Result<(), Status> {
        if self.principal.as_ref().is_some_and(|p| p.may(region)) {
            return Ok(());
        }
        Err(self.out_of_scope(ledger, "region", region, None).await)
    }

    /// Refuses (and records) a caller scoped to some regions only: for calls that reach every
    /// region (a region-wide listing, minting an unscoped token).
    pub(crate) async fn may_all_regions(&self, ledger: &Ledger) -> Result<(), Status> {
        if self.principal.as_ref().is_some_and(|p| !p.scoped()) {
            return Ok(());
        }
        Err(self.out_of_scope(ledger, "region", "every region", None).await)
    }

    /// Whether `other`'s scope lies inside this caller's: an unscoped caller covers everyone, a
    /// scoped one only principals scoped to some of its own regions (never an unscoped one).
    pub(crate) fn covers(&self, other: &Principal) -> bool {
        match (&self.principal, &other.regions) {
            (Some(p), _) if !p.scoped() => true,
            (Some(p), Some(regions)) => regions.iter().all(|r| p.may(r)),
            _ => false,
        }
    }

    /// Refuses (and records) a call on something outside the caller's scope, named by `param`.
    pub(crate) async fn refuse_scope(&self, ledger: &Ledger, param: &str, value: &str) -> Status {
        self.out_of_scope(ledger, param, value, None).await
    }

    /// Refuses (and records) a caller not scoped to `customer`'s region. An unknown customer
    /// passes here and is the handler's NOT_FOUND.
    pub(crate) async fn may_customer(&self, ledger: &Ledger, customer: CustomerId) -> Result<(), Status> {
        if self.principal.as_ref().is_some_and(|p| !p.scoped()) {
            return Ok(());
        }
        // The global system customer's streams (erasure requests and certificates, records of
        // whole-log reads) name customers of every region: unscoped principals only.
        if customer == ledger::access::SYSTEM_CUSTOMER {
            return self.may_all_regions(ledger).await;
        }
        match ledger.customer_region(customer) {
            Ok(region) if self.principal.as_ref().is_some_and(|p| p.may(region.as_str())) => Ok(()),
            // The refusal names the customer (an id, not personal data), so its trail shows it.
            Ok(region) => Err(self.out_of_scope(ledger, "region", region.as_str(), Some(customer)).await),
            Err(LedgerError::NotFound { .. }) if self.principal.is_some() => Ok(()),
            Err(LedgerError::NotFound { .. }) => Err(self.out_of_scope(ledger, "region", "unknown", None).await),
            Err(e) => Err(status(e)),
        }
    }

    /// Whether a listing may show `customer` to this caller (no record: nothing is refused).
    pub(crate) fn sees(&self, ledger: &Ledger, customer: CustomerId) -> bool {
        match &self.principal {
            Some(p) if !p.scoped() => true,
            Some(p) => ledger.customer_region(customer).is_ok_and(|r| p.may(r.as_str())),
            None => false,
        }
    }

    /// For calls across customers (ReadAll, Subscribe): a region-scoped caller must name one
    /// customer of its regions.
    pub(crate) async fn may_filter(&self, ledger: &Ledger, filter: &EventFilter) -> Result<(), Status> {
        match filter.customer {
            Some(customer) => self.may_customer(ledger, customer).await,
            None => self.may_all_regions(ledger).await,
        }
    }

    async fn out_of_scope(&self, ledger: &Ledger, param: &str, needed: &str, customer: Option<CustomerId>) -> Status {
        let mut record = self.access(&self.action).param(param, needed);
        record.customer = customer;
        crate::security::record_refusal(ledger, record, ErrorCode::PermissionDenied, None).await;
        ErrorCode::PermissionDenied.status(format!("{} is not scoped to {needed}", self.name()))
    }
}

/// Writes an access record before any decrypted data is sent. If it cannot be written, the read
/// does not happen: the caller gets UNAVAILABLE.
pub(crate) async fn record_access(ledger: &Ledger, record: &AccessRecord) -> Result<(), Status> {
    ledger.record_access(record).await.map(|_| ()).map_err(|e| {
        tracing::warn!(action = %record.action, error = %e, "access record could not be written; read refused");
        ErrorCode::Unavailable.status(format!("the access record could not be written, so nothing was read: {e}"))
    })
}

/// Records a refused access (the read failed before any data was sent) and returns the error.
pub(crate) async fn refuse(ledger: &Ledger, mut record: AccessRecord, error: LedgerError) -> Status {
    record.outcome = error.code().as_str().to_owned();
    if let Err(e) = ledger.record_access(&record).await {
        tracing::warn!(action = %record.action, error = %e, "access record of a refused read could not be written");
    }
    status(error)
}

pub(crate) fn filter_params(mut record: AccessRecord, f: &EventFilter) -> AccessRecord {
    if let Some(c) = f.customer {
        record.customer = Some(c);
    }
    if !f.event_types.is_empty() {
        record = record.param("filter.event_types", f.event_types.join(","));
    }
    if !f.channels.is_empty() {
        record = record.param("filter.channels", f.channels.iter().map(|c| format!("{c:?}").to_lowercase()).collect::<Vec<_>>().join(","));
    }
    record
}

