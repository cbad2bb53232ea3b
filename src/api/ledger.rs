//! `ledger.v1.Ledger`: append, resolve, read, subscribe.

use std::sync::Arc;

use ledger::types::{CustomerId, Position, StreamName, StreamVersion};
use ledger::{ErrorCode, EventFilter, Ledger, LedgerError, RecordedEvent};
use proto::v1 as pb;
use tokio::sync::{broadcast, watch};
use tonic::{Request, Response, Status};

use super::caller::filter_params;
use super::convert::{append_input, filter_from_pb, identifiers_from_pb};
use super::{blocking, blocking_outcome, record_access, recorded_to_pb, refuse, send_sized, status, Caller, STREAM_BUFFER_MESSAGES};

/// Splits events into messages of at most `max_events` events and about `max_bytes` bytes (one
/// event always fits: payloads are far below the message limit).
fn chunked(events: Vec<RecordedEvent>, max_events: usize, max_bytes: usize) -> Vec<Vec<pb::RecordedEvent>> {
    let mut out = Vec::new();
    send_sized(events, max_events, max_bytes, |e| e.approx_bytes(), recorded_to_pb, &mut |m| {
        out.push(m);
        true
    });
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

    type ReadStreamStream = crate::api::streams::Responses<pb::ReadStreamResponse>;

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
        let (tx, rx) = crate::api::streams::channel(STREAM_BUFFER_MESSAGES);
        tokio::spawn(async move {
            for part in parts {
                if !tx.send(Ok(pb::ReadStreamResponse { events: part })).await {
                    break;
                }
            }
        });
        Ok(Response::new(rx))
    }

    type ReadAllStream = crate::api::streams::Responses<pb::ReadAllResponse>;

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
        let (tx, rx) = crate::api::streams::channel(STREAM_BUFFER_MESSAGES);
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

    type SubscribeStream = crate::api::streams::Responses<pb::SubscribeResponse>;

    async fn subscribe(&self, request: Request<pb::SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let filter = Arc::new(filter_from_pb(req.filter).map_err(status)?);
        caller.may_filter(&self.ledger, &filter).await?;
        // A subscription's extent is unknown in advance: one record grants it from its start
        // position before anything is sent, and a closing record says how far it got.
        let access = filter_params(caller.access("ledger.v1.Ledger/Subscribe"), &filter).param("from_position", req.from_position);
        record_access(&self.ledger, &access).await?;
        let (tx, rx) = crate::api::streams::channel(STREAM_BUFFER_MESSAGES);
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
    tx: crate::api::streams::Sender<pb::SubscribeResponse>,
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

