//! Canonical byte encodings of the event header and the stored event record.
//!
//! The header is encoded in two parts. The *pre-commit* part holds every field known before the
//! writer runs and is the AES-GCM associated data, so a ciphertext cannot be moved to another event,
//! stream or customer. The writer appends the position and stream version to make the *committed*
//! header, which the Merkle leaf hash covers. All integers are big-endian; strings are u16
//! length-prefixed; metadata is sorted by key. The first byte is the format version: a new format
//! gets a new number and the old one stays readable.

use crate::error::LedgerError;
use crate::types::{Channel, CustomerId, Direction, EventId, Metadata, Position, StreamVersion, UnixMillis};

/// Format byte of the header encoding.
pub const HEADER_FORMAT_V1: u8 = 1;
/// Format byte of the stored event record.
pub const RECORD_FORMAT_V1: u8 = 1;
/// Bytes the writer appends to the pre-commit header: position and stream version.
pub const COMMIT_SUFFIX_BYTES: usize = 16;
/// Bytes of the AES-GCM nonce at the front of a sealed payload.
pub const NONCE_BYTES: usize = 12;

/// The header fields known before commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrecommitHeader<'a> {
    /// The customer.
    pub customer: CustomerId,
    /// The event id.
    pub event_id: EventId,
    /// The stream's name.
    pub stream: &'a str,
    /// The event type.
    pub event_type: &'a str,
    /// The channel.
    pub channel: Channel,
    /// The direction.
    pub direction: Direction,
    /// When it happened at the source.
    pub occurred_at: UnixMillis,
    /// When the ledger accepted it.
    pub recorded_at: UnixMillis,
    /// The customer's data-key version.
    pub key_version: u32,
    /// The payload's schema version.
    pub schema_version: u32,
    /// The metadata.
    pub metadata: &'a Metadata,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Lengths are bounded by the limits far below u16::MAX; the assertion keeps it so.
    let len = u16::try_from(s.len()).expect("field length fits in u16");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl PrecommitHeader<'_> {
    /// Appends the canonical encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(HEADER_FORMAT_V1);
        out.extend_from_slice(self.customer.as_bytes());
        out.extend_from_slice(self.event_id.as_bytes());
        put_str(out, self.stream);
        put_str(out, self.event_type);
        out.push(self.channel as u8);
        out.push(self.direction as u8);
        out.extend_from_slice(&self.occurred_at.0.to_be_bytes());
        out.extend_from_slice(&self.recorded_at.0.to_be_bytes());
        out.extend_from_slice(&self.key_version.to_be_bytes());
        out.extend_from_slice(&self.schema_version.to_be_bytes());
        let count = u16::try_from(self.metadata.len()).expect("metadata count fits in u16");
        out.extend_from_slice(&count.to_be_bytes());
        for (k, v) in self.metadata {
            put_str(out, k);
            put_str(out, v);
        }
    }
}

/// Appends the writer's part of the header (position, stream version) to a pre-commit header.
pub fn commit_suffix(out: &mut Vec<u8>, position: Position, version: StreamVersion) {
    out.extend_from_slice(&position.0.to_be_bytes());
    out.extend_from_slice(&version.0.to_be_bytes());
}

/// A decoded committed header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// The customer.
    pub customer: CustomerId,
    /// The event id.
    pub event_id: EventId,
    /// The stream's name.
    pub stream: String,
    /// The event type.
    pub event_type: String,
    /// The channel.
    pub channel: Channel,
    /// The direction.
    pub direction: Direction,
    /// When it happened at the source.
    pub occurred_at: UnixMillis,
    /// When the ledger accepted it.
    pub recorded_at: UnixMillis,
    /// The customer's data-key version.
    pub key_version: u32,
    /// The payload's schema version.
    pub schema_version: u32,
    /// The metadata.
    pub metadata: Metadata,
    /// The global position.
    pub position: Position,
    /// The stream version.
    pub stream_version: StreamVersion,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LedgerError> {
        if self.buf.len() < n {
            return Err(LedgerError::Corrupt("header is truncated".into()));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, LedgerError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, LedgerError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, LedgerError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, LedgerError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn uuid(&mut self) -> Result<uuid::Uuid, LedgerError> {
        Ok(uuid::Uuid::from_bytes(self.take(16)?.try_into().expect("16 bytes")))
    }
    fn string(&mut self) -> Result<String, LedgerError> {
        let len = usize::from(self.u16()?);
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| LedgerError::Corrupt("header string is not utf-8".into()))
    }
}

impl EventHeader {
    /// Decodes a committed header.
    pub fn decode(bytes: &[u8]) -> Result<Self, LedgerError> {
        let mut r = Reader { buf: bytes };
        let format = r.u8()?;
        if format != HEADER_FORMAT_V1 {
            return Err(LedgerError::Corrupt(format!("unknown header format {format}")));
        }
        let customer = CustomerId(r.uuid()?);
        let event_id = EventId(r.uuid()?);
        let stream = r.string()?;
        let event_type = r.string()?;
        let channel = Channel::from_u8(r.u8()?).ok_or_else(|| LedgerError::Corrupt("unknown channel".into()))?;
        let direction = Direction::from_u8(r.u8()?).ok_or_else(|| LedgerError::Corrupt("unknown direction".into()))?;
        let occurred_at = UnixMillis(r.u64()? as i64);
        let recorded_at = UnixMillis(r.u64()? as i64);
        let key_version = r.u32()?;
        let schema_version = r.u32()?;
        let count = r.u16()?;
        let mut metadata = Metadata::new();
        for _ in 0..count {
            let k = r.string()?;
            let v = r.string()?;
            metadata.insert(k, v);
        }
        let position = Position(r.u64()?);
        let stream_version = StreamVersion(r.u64()?);
        if !r.buf.is_empty() {
            return Err(LedgerError::Corrupt("header has trailing bytes".into()));
        }
        Ok(EventHeader {
            customer,
            event_id,
            stream,
            event_type,
            channel,
            direction,
            occurred_at,
            recorded_at,
            key_version,
            schema_version,
            metadata,
            position,
            stream_version,
        })
    }
}

/// A stored event record, borrowed from the bytes RocksDB returned.
#[derive(Debug)]
pub struct RecordRef<'a> {
    /// The committed header.
    pub header: &'a [u8],
    /// Nonce, ciphertext and tag.
    pub sealed: &'a [u8],
    /// The leaf hash the writer computed.
    pub leaf: [u8; 32],
}

impl<'a> RecordRef<'a> {
    /// The pre-commit part of the header: the AES-GCM associated data.
    pub fn aad(&self) -> &'a [u8] {
        &self.header[..self.header.len().saturating_sub(COMMIT_SUFFIX_BYTES)]
    }

    /// Decodes a stored record.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, LedgerError> {
        let mut r = Reader { buf: bytes };
        let format = r.u8()?;
        if format != RECORD_FORMAT_V1 {
            return Err(LedgerError::Corrupt(format!("unknown record format {format}")));
        }
        let header_len = r.u32()? as usize;
        let header = r.take(header_len)?;
        let sealed_len = r.u32()? as usize;
        let sealed = r.take(sealed_len)?;
        let leaf: [u8; 32] = r.take(32)?.try_into().expect("32 bytes");
        if !r.buf.is_empty() || header.len() < COMMIT_SUFFIX_BYTES || sealed.len() < NONCE_BYTES {
            return Err(LedgerError::Corrupt("record has a bad layout".into()));
        }
        Ok(RecordRef { header, sealed, leaf })
    }
}

/// Encodes a stored record: format, header, sealed payload, leaf hash.
pub fn encode_record(header: &[u8], sealed: &[u8], leaf: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 4 + header.len() + 4 + sealed.len() + 32);
    out.push(RECORD_FORMAT_V1);
    out.extend_from_slice(&u32::try_from(header.len()).expect("header fits u32").to_be_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(&u32::try_from(sealed.len()).expect("payload fits u32").to_be_bytes());
    out.extend_from_slice(sealed);
    out.extend_from_slice(leaf);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_is_canonical() {
        let mut metadata = Metadata::new();
        metadata.insert("z".into(), "1".into());
        metadata.insert("a".into(), "2".into());
        let pre = PrecommitHeader {
            customer: CustomerId::new_random(),
            event_id: EventId::new_random(),
            stream: "conv-1",
            event_type: "MessageReceived",
            channel: Channel::Whatsapp,
            direction: Direction::Inbound,
            occurred_at: UnixMillis(1_700_000_000_000),
            recorded_at: UnixMillis(1_700_000_000_123),
            key_version: 1,
            schema_version: 3,
            metadata: &metadata,
        };
        let mut a = Vec::new();
        pre.encode_into(&mut a);
        let mut b = Vec::new();
        pre.encode_into(&mut b);
        assert_eq!(a, b);
        commit_suffix(&mut a, Position(42), StreamVersion(7));
        let decoded = EventHeader::decode(&a).unwrap();
        assert_eq!(decoded.customer, pre.customer);
        assert_eq!(decoded.stream, "conv-1");
        assert_eq!(decoded.metadata.keys().collect::<Vec<_>>(), vec!["a", "z"]);
        assert_eq!(decoded.position, Position(42));
        assert_eq!(decoded.stream_version, StreamVersion(7));
        let mut truncated = a.clone();
        truncated.pop();
        assert!(EventHeader::decode(&truncated).is_err());
    }

    #[test]
    fn record_round_trips() {
        let header = vec![7u8; 40];
        let sealed = vec![9u8; 60];
        let leaf = [3u8; 32];
        let rec = encode_record(&header, &sealed, &leaf);
        let r = RecordRef::decode(&rec).unwrap();
        assert_eq!(r.header, &header[..]);
        assert_eq!(r.sealed, &sealed[..]);
        assert_eq!(r.leaf, leaf);
        assert_eq!(r.aad().len(), 24);
        assert!(RecordRef::decode(&rec[..rec.len() - 1]).is_err());
    }
}
