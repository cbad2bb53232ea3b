//! prost types to the engine's domain types and back, written once.

use std::collections::BTreeMap;

use ledger::types::{Channel, CustomerId, Direction, EventId, EventType, ExpectedVersion, StreamName, StreamVersion, UnixMillis};
use ledger::{AppendInput, ErrorCode, EventFilter, Ledger, LedgerError, NewEvent, Payload, RecordedEvent};
use proto::v1 as pb;
use tonic::Status;

use super::{coded_status, status};

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

pub(crate) fn filter_from_pb(f: Option<pb::EventFilter>) -> Result<EventFilter, LedgerError> {
    let Some(f) = f else { return Ok(EventFilter::default()) };
    let customer = if f.customer_id.is_empty() { None } else { Some(CustomerId::parse(&f.customer_id, "filter.customer_id")?) };
    let channels = f.channels.into_iter().map(|c| channel_from_pb(c, "filter.channels")).collect::<Result<_, _>>()?;
    Ok(EventFilter { customer, event_types: f.event_types, channels })
}

/// Normalizes an API identifier (the connectors' rules), naming the field at fault.
pub(crate) fn identifiers_from_pb(id: Option<pb::Identifier>, default_phone_region: &str) -> Result<Vec<ledger::identity::Identifier>, Status> {
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

