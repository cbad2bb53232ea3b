//! The gRPC edge: `ledger.v1.Ledger`. Converts prost types to the engine's domain types and back
//! (written once, here), and maps the engine's error codes to `tonic::Code`.

use std::collections::BTreeMap;
use std::sync::Arc;

use ledger::types::{Channel, CustomerId, Direction, EventId, EventType, ExpectedVersion, Position, StreamName, StreamVersion, UnixMillis};
use crate::auth::Principal;
use ledger::access::AccessRecord;
use ledger::{AppendInput, ErrorCode, EventFilter, Ledger, LedgerError, NewEvent, Payload, RecordedEvent};
use proto::v1 as pb;
use tokio::sync::{broadcast, watch};
use tonic::{Request, Response, Status};

/// Maps an engine error to a gRPC status with the stable code in `ledger-error-code` metadata.
pub fn status(e: LedgerError) -> Status {
    let code = e.code();
    let mut s = coded_status(code, e.to_string());
    if let LedgerError::WrongExpectedVersion { actual_version, .. } = &e {
        let actual = actual_version.map_or_else(|| "none".to_owned(), |v| v.to_string());
        s.metadata_mut().insert("ledger-actual-version", actual.parse().expect("ascii digits"));
    }
    if code == ErrorCode::Internal {
        tracing::error!(error = %e, "internal error");
    }
    s
}

/// A status for a stable error code (mapped to `tonic::Code` by the registry), with the code in
/// `ledger-error-code` metadata. Used for the other crates' errors too.
pub(crate) fn coded_status(code: ErrorCode, message: String) -> Status {
    code.status(message)
}

fn channel_from_pb(value: i32, field: &'static str) -> Result<Channel, LedgerError> {
    let ch = match pb::Channel::try_from(value) {
        Ok(pb::Channel::Whatsapp) => Channel::Whatsapp,
        Ok(pb::Channel::Sms) => Channel::Sms,
        Ok(pb::Channel::Slack) => Channel::Slack,
        Ok(pb::Channel::Teams) => Channel::Teams,
        Ok(pb::Channel::Email) => Channel::Email,
        Ok(pb::Channel::Chat) => Channel::Chat,
        Ok(pb::Channel::Internal) => Channel::Internal,
        Ok(pb::Channel::Unspecified) | Err(_) => return Err(LedgerError::invalid(field, "must be a known channel")),
    };
    Ok(ch)
}

fn channel_to_pb(c: Channel) -> pb::Channel {
    match c {
        Channel::Whatsapp => pb::Channel::Whatsapp,
        Channel::Sms => pb::Channel::Sms,
        Channel::Slack => pb::Channel::Slack,
        Channel::Teams => pb::Channel::Teams,
        Channel::Email => pb::Channel::Email,
        Channel::Chat => pb::Channel::Chat,
        Channel::Internal => pb::Channel::Internal,
    }
}

fn direction_from_pb(value: i32) -> Result<Direction, LedgerError> {
    match pb::Direction::try_from(value) {
        Ok(pb::Direction::Inbound) => Ok(Direction::Inbound),
        Ok(pb::Direction::Outbound) => Ok(Direction::Outbound),
        Ok(pb::Direction::Internal) => Ok(Direction::Internal),
        Ok(pb::Direction::Unspecified) | Err(_) => Err(LedgerError::invalid("events.direction", "must be inbound, outbound or internal")),
    }
}

fn direction_to_pb(d: Direction) -> pb::Direction {
    match d {
        Direction::Inbound => pb::Direction::Inbound,
        Direction::Outbound => pb::Direction::Outbound,
        Direction::Internal => pb::Direction::Internal,
    }
}

fn millis_from_pb(ts: &prost_types::Timestamp) -> Result<UnixMillis, LedgerError> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(LedgerError::invalid("events.occurred_at", "nanos must be in 0..1e9"));
    }
    ts.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(ts.nanos / 1_000_000)))
        .map(UnixMillis)
        .ok_or_else(|| LedgerError::invalid("events.occurred_at", "is out of range"))
}

pub(crate) fn millis_to_pb(t: UnixMillis) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.0.div_euclid(1000), nanos: (t.0.rem_euclid(1000) * 1_000_000) as i32 }
}

/// Parses an Append request into the engine's input.
pub fn append_input(req: pb::AppendRequest, ledger: &Ledger) -> Result<AppendInput, LedgerError> {
    let limits = &ledger.config().limits;
    let customer = CustomerId::parse(&req.customer_id, "customer_id")?;
    let region = if req.region.is_empty() { None } else { Some(ledger::types::Region::parse(&req.region, "region")?) };
    let stream = StreamName::parse(&req.stream, "stream", limits)?;
    let expected = match req.expected_version.and_then(|e| e.kind) {
        None | Some(pb::expected_version::Kind::Any(_)) => ExpectedVersion::Any,
        Some(pb::expected_version::Kind::NoStream(_)) => ExpectedVersion::NoStream,
        Some(pb::expected_version::Kind::Exact(v)) => ExpectedVersion::Exact(StreamVersion(v)),
    };
    if req.events.len() > limits.events_per_append_max {
        return Err(LedgerError::limit("events", &format!("events_per_append_max {}", limits.events_per_append_max)));
    }
    let mut events = Vec::with_capacity(req.events.len());
    for ev in req.events {
        events.push(NewEvent {
            event_id: EventId::parse(&ev.event_id, "events.event_id")?,
            event_type: EventType::parse(&ev.event_type, "events.event_type", limits)?,
            channel: channel_from_pb(ev.channel, "events.channel")?,
            direction: direction_from_pb(ev.direction)?,
            occurred_at: ev.occurred_at.as_ref().map(millis_from_pb).transpose()?,
            metadata: ev.metadata.into_iter().collect::<BTreeMap<_, _>>(),
            payload: ev.payload,
            schema_version: ev.schema_version,
        });
    }
    Ok(AppendInput { customer, region, stream, expected, events })
}

/// Converts a recorded event to its wire form.
pub fn recorded_to_pb(ev: RecordedEvent) -> pb::RecordedEvent {
    let h = ev.header;
    let (payload, state) = match ev.payload {
        Payload::Available(p) => (p, pb::PayloadState::Available),
        Payload::Erased => (Vec::new(), pb::PayloadState::Erased),
        Payload::RegionNotServed => (Vec::new(), pb::PayloadState::RegionNotServed),
    };
    pb::RecordedEvent {
        position: h.position.0,
        customer_id: h.customer.to_string(),
        stream: h.stream,
        stream_version: h.stream_version.0,
        event_id: h.event_id.to_string(),
        event_type: h.event_type,
        channel: channel_to_pb(h.channel) as i32,
        direction: direction_to_pb(h.direction) as i32,
        occurred_at: Some(millis_to_pb(h.occurred_at)),
        recorded_at: Some(millis_to_pb(h.recorded_at)),
        key_version: h.key_version,
        schema_version: h.schema_version,
        metadata: h.metadata.into_iter().collect(),
        payload,
        payload_state: state as i32,
        leaf_hash: ev.leaf.to_vec(),
    }
}

fn filter_from_pb(f: Option<pb::EventFilter>) -> Result<EventFilter, LedgerError> {
    let Some(f) = f else { return Ok(EventFilter::default()) };
    let customer = if f.customer_id.is_empty() { None } else { Some(CustomerId::parse(&f.customer_id, "filter.customer_id")?) };
    let channels = f.channels.into_iter().map(|c| channel_from_pb(c, "filter.channels")).collect::<Result<_, _>>()?;
    Ok(EventFilter { customer, event_types: f.event_types, channels })
}

/// Who is calling and from where, for access records and region scopes: the principal the
/// authentication layer put on the request, and the peer's socket address.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    principal: Option<Principal>,
    action: String,
    origin: String,
    quotas: Option<Arc<crate::quota::Quotas>>,
}

impl Caller {
    pub(crate) fn of<T>(request: &Request<T>) -> Self {
        Caller {
            principal: request.extensions().get::<Principal>().cloned(),
            action: request.extensions().get::<crate::auth::Method>().map_or_else(String::new, |m| m.0.clone()),
            origin: request.remote_addr().map_or_else(|| "unknown".into(), |a| a.to_string()),
            quotas: request.extensions().get::<Arc<crate::quota::Quotas>>().cloned(),
        }
    }

    /// Charges `events` appended events to the caller's event quota; over it, the call is
    /// refused with `RESOURCE_EXHAUSTED` (recorded at most once a second, counting).
    pub(crate) async fn spend_events(&self, ledger: &Ledger, events: usize) -> Result<(), Status> {
        let (Some(quotas), Some(p)) = (&self.quotas, &self.principal) else { return Ok(()) };
        if quotas.admit_events(&p.name, events) {
            return Ok(());
        }
        Err(crate::auth::over_quota(ledger, quotas, self.access(&self.action), "event rate").await)
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
        crate::auth::record_refusal(ledger, record, ErrorCode::PermissionDenied, None).await;
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

fn filter_params(mut record: AccessRecord, f: &EventFilter) -> AccessRecord {
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

/// Normalizes an API identifier (the connectors' rules), naming the field at fault.
fn identifiers_from_pb(id: Option<pb::Identifier>, default_phone_region: &str) -> Result<Vec<ledger::identity::Identifier>, Status> {
    use ledger::identity::IdentifierKind as K;
    let id = id.ok_or_else(|| status(LedgerError::invalid("identifier", "is required")))?;
    let kind = match pb::IdentifierKind::try_from(id.kind) {
        Ok(pb::IdentifierKind::Phone) => K::Phone,
        Ok(pb::IdentifierKind::Email) => K::Email,
        Ok(pb::IdentifierKind::Whatsapp) => K::WhatsApp,
        Ok(pb::IdentifierKind::Slack) => K::Slack,
        Ok(pb::IdentifierKind::Teams) => K::Teams,
        Ok(pb::IdentifierKind::External) => K::External,
        Ok(pb::IdentifierKind::Unspecified) | Err(_) => return Err(status(LedgerError::invalid("identifier.kind", "must be a known kind"))),
    };
    let phone_region = if default_phone_region.is_empty() { "US" } else { default_phone_region };
    connectors::identity::parse(kind, &id.value, phone_region).map_err(|e| coded_status(ErrorCode::InvalidArgument, e.to_string()))
}

/// Messages buffered per read or subscription stream before the server waits for the client.
const STREAM_BUFFER_MESSAGES: usize = 4;

/// Splits events into messages of at most `max_events` events and about `max_bytes` bytes (one
/// event always fits: payloads are far below the message limit).
fn chunked(events: Vec<RecordedEvent>, max_events: usize, max_bytes: usize) -> Vec<Vec<pb::RecordedEvent>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0usize;
    for ev in events {
        let size = ev.approx_bytes();
        if !current.is_empty() && (current.len() >= max_events.max(1) || bytes + size > max_bytes) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(recorded_to_pb(ev));
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The `ledger.v1.Ledger` service.
#[derive(Clone)]
pub struct LedgerService {
    ledger: Ledger,
    shutdown: watch::Receiver<bool>,
}

impl LedgerService {
    /// A service over `ledger`; subscriptions end when `shutdown` turns true.
    pub fn new(ledger: Ledger, shutdown: watch::Receiver<bool>) -> Self {
        LedgerService { ledger, shutdown }
    }
}

pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, LedgerError> + Send + 'static) -> Result<T, Status> {
    blocking_outcome(f).await?.map_err(status)
}

/// Runs blocking work (a synced file or RocksDB write) on a blocking thread.
pub(crate) async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|_| ErrorCode::Internal.status("blocking task failed"))
}

/// Runs a blocking engine call; the outer error is a failed task, the inner one the engine's
/// (kept unmapped, so the caller can record a refused access with its code).
pub(crate) async fn blocking_outcome<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LedgerError> + Send + 'static,
) -> Result<Result<T, LedgerError>, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|_| ErrorCode::Internal.status("read task failed"))
}

#[tonic::async_trait]
impl pb::ledger_server::Ledger for LedgerService {
    async fn append(&self, request: Request<pb::AppendRequest>) -> Result<Response<pb::AppendResponse>, Status> {
        let caller = Caller::of(&request);
        caller.spend_events(&self.ledger, request.get_ref().events.len()).await?;
        let input = append_input(request.into_inner(), &self.ledger).map_err(status)?;
        match &input.region {
            Some(region) => caller.may_region(&self.ledger, region.as_str()).await?,
            None => caller.may_customer(&self.ledger, input.customer).await?,
        }
        let out = self.ledger.append(input).await.map_err(status)?;
        Ok(Response::new(pb::AppendResponse {
            first_position: out.first_position.0,
            next_stream_version: out.next_stream_version.0,
            tree_size: out.tree_size,
            root_hash: out.root.to_vec(),
            idempotent_replay: out.idempotent_replay,
        }))
    }

    async fn resolve_customer(&self, request: Request<pb::ResolveCustomerRequest>) -> Result<Response<pb::ResolveCustomerResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let region = ledger::types::Region::parse(&req.region, "region").map_err(status)?;
        caller.may_region(&self.ledger, region.as_str()).await?;
        let ids = identifiers_from_pb(req.identifier, &req.default_phone_region)?;
        match self.ledger.resolve_customer(&ids, &region, req.create).await.map_err(status)? {
            Some((customer, created)) => Ok(Response::new(pb::ResolveCustomerResponse { customer_id: customer.to_string(), created })),
            None => Err(status(LedgerError::NotFound { what: "customer with that identifier" })),
        }
    }

    async fn link_identifier(&self, request: Request<pb::LinkIdentifierRequest>) -> Result<Response<pb::LinkIdentifierResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let customer = CustomerId::parse(&req.customer_id, "customer_id").map_err(status)?;
        caller.may_customer(&self.ledger, customer).await?;
        let ids = identifiers_from_pb(req.identifier, &req.default_phone_region)?;
        self.ledger.link_identifiers(customer, &ids).await.map_err(status)?;
        Ok(Response::new(pb::LinkIdentifierResponse {}))
    }

    type ReadStreamStream = crate::streams::Responses<pb::ReadStreamResponse>;

    async fn read_stream(&self, request: Request<pb::ReadStreamRequest>) -> Result<Response<Self::ReadStreamStream>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let limits = &self.ledger.config().limits;
        let customer = CustomerId::parse(&req.customer_id, "customer_id").map_err(status)?;
        caller.may_customer(&self.ledger, customer).await?;
        let stream = StreamName::parse(&req.stream, "stream", limits).map_err(status)?;
        let backward = req.direction == pb::ReadDirection::Backward as i32;
        let mut access = caller.access("ledger.v1.Ledger/ReadStream");
        access.customer = Some(customer);
        access.stream = Some(stream.as_str().to_owned());
        access = access.param("direction", if backward { "backward" } else { "forward" }).param("max_count", req.max_count);
        if let Some(v) = req.from_version {
            access = access.param("from_version", v);
        }
        let ledger = self.ledger.clone();
        let read = blocking_outcome(move || {
            ledger.read_stream(customer, &stream, req.from_version.map(StreamVersion), backward, req.max_count as usize)
        })
        .await?;
        let events = match read {
            Ok(events) => events,
            Err(e) => return Err(refuse(&self.ledger, access, e).await),
        };
        // The record names exactly what is sent: the count and the positions.
        access = access.param("events", events.len());
        if let (Some(first), Some(last)) = (events.first(), events.last()) {
            access = access.param("positions", format!("{}..={}", first.header.position.0, last.header.position.0));
        }
        record_access(&self.ledger, &access).await?;
        let tuning = &self.ledger.config().tuning;
        let parts = chunked(events, tuning.read_chunk_events, tuning.read_chunk_bytes_max);
        let (tx, rx) = crate::streams::channel(STREAM_BUFFER_MESSAGES);
        tokio::spawn(async move {
            for part in parts {
                if !tx.send(Ok(pb::ReadStreamResponse { events: part })).await {
                    break;
                }
            }
        });
        Ok(Response::new(rx))
    }

    type ReadAllStream = crate::streams::Responses<pb::ReadAllResponse>;

    async fn read_all(&self, request: Request<pb::ReadAllRequest>) -> Result<Response<Self::ReadAllStream>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let filter = filter_from_pb(req.filter).map_err(status)?;
        caller.may_filter(&self.ledger, &filter).await?;
        let ledger = self.ledger.clone();
        let end = Position(ledger.committed_size());
        // Written before the first event is read: the log is immutable, so the range, count and
        // filter determine exactly which events this call can return.
        let access = filter_params(caller.access("ledger.v1.Ledger/ReadAll"), &filter)
            .param("from_position", req.from_position)
            .param("to_position", end.0)
            .param("max_count", req.max_count);
        record_access(&ledger, &access).await?;
        let mut remaining = if req.max_count == 0 { u64::MAX } else { req.max_count };
        let chunk = ledger.config().tuning.read_chunk_events.max(1);
        let bytes_max = ledger.config().tuning.read_chunk_bytes_max;
        let (tx, rx) = crate::streams::channel(STREAM_BUFFER_MESSAGES);
        tokio::task::spawn_blocking(move || {
            let mut next = Position(req.from_position);
            while next < end && remaining > 0 {
                match ledger.read_range(next, end, chunk, bytes_max, &filter) {
                    Ok((mut events, after)) => {
                        next = after;
                        if events.len() as u64 > remaining {
                            events.truncate(remaining as usize);
                            next = Position(events.last().expect("non-empty").header.position.0 + 1);
                        }
                        remaining -= events.len() as u64;
                        if events.is_empty() {
                            continue;
                        }
                        let msg = pb::ReadAllResponse { events: events.into_iter().map(recorded_to_pb).collect(), next_position: next.0 };
                        if !tx.blocking_send(Ok(msg)) {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(status(e)));
                        return;
                    }
                }
            }
        });
        Ok(Response::new(rx))
    }

    type SubscribeStream = crate::streams::Responses<pb::SubscribeResponse>;

    async fn subscribe(&self, request: Request<pb::SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let filter = Arc::new(filter_from_pb(req.filter).map_err(status)?);
        caller.may_filter(&self.ledger, &filter).await?;
        // A subscription's extent is unknown in advance: one record grants it from its start
        // position before anything is sent, and a closing record says how far it got.
        let access = filter_params(caller.access("ledger.v1.Ledger/Subscribe"), &filter).param("from_position", req.from_position);
        record_access(&self.ledger, &access).await?;
        let (tx, rx) = crate::streams::channel(STREAM_BUFFER_MESSAGES);
        let ledger = self.ledger.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut progress = Progress { next: Position(req.from_position), events: 0 };
            let result = tokio::select! {
                r = follow(ledger.clone(), filter, &mut progress, tx.clone()) => r,
                _ = tx.closed() => Ok(()),
                _ = shutdown.wait_for(|s| *s) => Err(ErrorCode::Unavailable.status("server shutting down; resubscribe from the last next_position")),
            };
            let mut end = access.param("delivered_through_position", progress.next.0).param("events", progress.events);
            end.outcome = "ended".into();
            end.at_unix_ms = ledger::types::UnixMillis::now().0;
            if let Err(e) = ledger.record_access(&end).await {
                // The opening record already covers everything from the start position.
                tracing::warn!(error = %e, "closing access record of a subscription could not be written");
            }
            if let Err(s) = result {
                let _ = tx.send(Err(s)).await;
            }
        });
        Ok(Response::new(rx))
    }
}

/// Catch-up from storage, then live from committed batches. The batch receiver is created before
/// the committed size is read, so every batch committed after that read is in the receiver: no
/// gap. Events below `next` are skipped: no duplicate. A subscriber that lags behind the bounded
/// batch buffer goes back to storage; writers never wait for it.
/// How far a subscription got: the next position to deliver and the events sent so far.
struct Progress {
    next: Position,
    events: u64,
}

async fn follow(
    ledger: Ledger,
    filter: Arc<EventFilter>,
    progress: &mut Progress,
    tx: crate::streams::Sender<pb::SubscribeResponse>,
) -> Result<(), Status> {
    let mut next = progress.next;
    let chunk = ledger.config().tuning.read_chunk_events.max(1);
    let bytes_max = ledger.config().tuning.read_chunk_bytes_max;
    let mut batches = ledger.subscribe_batches();
    let mut live = false;
    loop {
        let committed = Position(ledger.committed_size());
        if next < committed {
            let (l, f) = (ledger.clone(), filter.clone());
            let (events, after) = blocking(move || l.read_range(next, committed, chunk, bytes_max, &f)).await?;
            next = after;
            live = false;
            let sent = events.len() as u64;
            let msg = pb::SubscribeResponse { events: events.into_iter().map(recorded_to_pb).collect(), next_position: next.0, live };
            if !tx.send(Ok(msg)).await {
                return Ok(());
            }
            *progress = Progress { next, events: progress.events + sent };
            continue;
        }
        if !live {
            live = true;
            let msg = pb::SubscribeResponse { events: Vec::new(), next_position: next.0, live };
            if !tx.send(Ok(msg)).await {
                return Ok(());
            }
        }
        match batches.recv().await {
            Ok(batch) => {
                let end = Position(batch.first_position.0 + batch.records.len() as u64);
                if end <= next {
                    continue;
                }
                if batch.first_position > next {
                    // Something between was missed: read it from storage.
                    continue;
                }
                let (l, f) = (ledger.clone(), filter.clone());
                let events = blocking(move || l.decode_batch(&batch, next, &f)).await?;
                let parts = chunked(events, chunk, bytes_max);
                let count = parts.len();
                for (i, part) in parts.into_iter().enumerate() {
                    // Only the last message of a batch may claim the whole batch as examined.
                    let next_position = if i + 1 == count { end.0 } else { part.last().map_or(next.0, |e| e.position + 1) };
                    let sent = part.len() as u64;
                    let msg = pb::SubscribeResponse { events: part, next_position, live };
                    if !tx.send(Ok(msg)).await {
                        return Ok(());
                    }
                    *progress = Progress { next: Position(next_position), events: progress.events + sent };
                }
                next = end;
            }
            Err(broadcast::error::RecvError::Lagged(skipped)) => {
                tracing::debug!(skipped, next = next.0, "subscriber lagged; continuing from storage");
                metrics::counter!("ledger_subscription_lags_total").increment(1);
            }
            Err(broadcast::error::RecvError::Closed) => return Err(ErrorCode::Unavailable.status("ledger closed; resubscribe from the last next_position")),
        }
    }
}
