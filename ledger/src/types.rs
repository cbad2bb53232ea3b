//! Newtypes for everything that crosses a module boundary with a meaning: ids, positions, versions,
//! regions and the small enums of the event header. Each parser names the field at fault and never
//! echoes the rejected value, which could be personal data.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::LedgerError;
use crate::limits::Limits;

/// A customer's opaque id (a UUID). Never a phone number, email or channel handle.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CustomerId(pub uuid::Uuid);

impl CustomerId {
    /// Parses the textual form; `field` names the request field for the error.
    pub fn parse(text: &str, field: &'static str) -> Result<Self, LedgerError> {
        uuid::Uuid::parse_str(text)
            .map(CustomerId)
            .map_err(|_| LedgerError::invalid(field, "must be a UUID"))
    }
    /// A fresh random id.
    pub fn new_random() -> Self {
        CustomerId(uuid::Uuid::new_v4())
    }
    /// The 16 bytes used in storage keys.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CustomerId({})", self.0.hyphenated())
    }
}

/// An event's unique id (a UUID), which is also its idempotency key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub uuid::Uuid);

impl EventId {
    /// Parses the textual form; `field` names the request field for the error.
    pub fn parse(text: &str, field: &'static str) -> Result<Self, LedgerError> {
        uuid::Uuid::parse_str(text)
            .map(EventId)
            .map_err(|_| LedgerError::invalid(field, "must be a UUID"))
    }
    /// A fresh random id.
    pub fn new_random() -> Self {
        EventId(uuid::Uuid::new_v4())
    }
    /// The 16 bytes used in storage keys.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0.hyphenated())
    }
}

/// Checks that `text` is 1..=`max` bytes of `[A-Za-z0-9._-]` plus `extra` characters.
fn check_identifier(text: &str, field: &'static str, max: usize, extra: &[u8]) -> Result<(), LedgerError> {
    if text.is_empty() {
        return Err(LedgerError::invalid(field, "must not be empty"));
    }
    if text.len() > max {
        return Err(LedgerError::limit(field, &format!("at most {max} bytes")));
    }
    let ok = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' || extra.contains(&b));
    if !ok {
        let allowed: String = extra.iter().map(|&b| b as char).collect();
        return Err(LedgerError::invalid(
            field,
            &format!("may contain only letters, digits, '.', '_', '-'{}", if allowed.is_empty() { String::new() } else { format!(" and '{allowed}'") }),
        ));
    }
    Ok(())
}

/// A stream's name within a customer, e.g. a conversation id. An opaque identifier chosen by the
/// caller: the character set leaves out `@`, `+` and spaces so that emails and phone numbers cannot
/// be used as names by accident.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct StreamName(String);

impl StreamName {
    /// Validates and wraps a stream name.
    pub fn parse(text: &str, field: &'static str, limits: &Limits) -> Result<Self, LedgerError> {
        check_identifier(text, field, limits.stream_name_bytes_max, b":")?;
        Ok(StreamName(text.to_owned()))
    }
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An event's type, e.g. `MessageReceived`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct EventType(String);

impl EventType {
    /// Validates and wraps an event type.
    pub fn parse(text: &str, field: &'static str, limits: &Limits) -> Result<Self, LedgerError> {
        check_identifier(text, field, limits.event_type_bytes_max, b"")?;
        Ok(EventType(text.to_owned()))
    }
    /// The type as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A residency region, e.g. `eu`: 1..=16 bytes of lowercase letters, digits and `-`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Region(String);

impl Region {
    /// Bytes a region name may have.
    pub const BYTES_MAX: usize = 16;

    /// Validates and wraps a region name.
    pub fn parse(text: &str, field: &'static str) -> Result<Self, LedgerError> {
        if text.is_empty() || text.len() > Self::BYTES_MAX {
            return Err(LedgerError::invalid(field, "must be 1 to 16 characters"));
        }
        if !text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(LedgerError::invalid(field, "may contain only lowercase letters, digits and '-'"));
        }
        Ok(Region(text.to_owned()))
    }
    /// The region as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A global position in the log: the event's index, and its leaf index in the Merkle tree.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Position(pub u64);

/// An event's version within its stream, starting at 0.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct StreamVersion(pub u64);

/// The channel a message travelled on. The discriminants are the stored byte and never change.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum Channel {
    /// WhatsApp Business.
    Whatsapp = 1,
    /// SMS or MMS.
    Sms = 2,
    /// Slack.
    Slack = 3,
    /// Microsoft Teams.
    Teams = 4,
    /// Email.
    Email = 5,
    /// In-app or web chat.
    Chat = 6,
    /// Not a channel message.
    Internal = 7,
}

impl Channel {
    /// The channel's name as the connectors, the API and proof files write it.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Whatsapp => "whatsapp",
            Channel::Sms => "sms",
            Channel::Slack => "slack",
            Channel::Teams => "teams",
            Channel::Email => "email",
            Channel::Chat => "chat",
            Channel::Internal => "internal",
        }
    }

    /// The message channel called `name` ([`Channel::name`]'s inverse for message channels;
    /// any other name is in-app chat).
    pub fn from_name(name: &str) -> Channel {
        match name {
            "whatsapp" => Channel::Whatsapp,
            "sms" => Channel::Sms,
            "slack" => Channel::Slack,
            "teams" => Channel::Teams,
            "email" => Channel::Email,
            _ => Channel::Chat,
        }
    }

    /// The channel stored as `byte`, if any.
    pub fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Channel::Whatsapp,
            2 => Channel::Sms,
            3 => Channel::Slack,
            4 => Channel::Teams,
            5 => Channel::Email,
            6 => Channel::Chat,
            7 => Channel::Internal,
            _ => return None,
        })
    }
}

/// Which way a message travelled. The discriminants are the stored byte and never change.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum Direction {
    /// From the customer.
    Inbound = 1,
    /// To the customer.
    Outbound = 2,
    /// Neither.
    Internal = 3,
}

impl Direction {
    /// The direction stored as `byte`, if any.
    pub fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Direction::Inbound,
            2 => Direction::Outbound,
            3 => Direction::Internal,
            _ => return None,
        })
    }
}

/// Unix time in milliseconds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        UnixMillis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// The version an append expects its stream to be at.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ExpectedVersion {
    /// Whatever the stream's version is.
    Any,
    /// The stream must have no events.
    NoStream,
    /// The stream's last event must have exactly this version.
    Exact(StreamVersion),
}

/// Small opaque string metadata, sorted by key so its encoding is canonical.
pub type Metadata = BTreeMap<String, String>;

/// Checks metadata against the limits.
pub fn check_metadata(metadata: &Metadata, field: &'static str, limits: &Limits) -> Result<(), LedgerError> {
    if metadata.len() > limits.metadata_entries_max {
        return Err(LedgerError::limit(field, &format!("at most {} entries", limits.metadata_entries_max)));
    }
    for (key, value) in metadata {
        check_identifier(key, field, limits.metadata_key_bytes_max, b":")?;
        if value.len() > limits.metadata_value_bytes_max {
            return Err(LedgerError::limit(field, &format!("values of at most {} bytes", limits.metadata_value_bytes_max)));
        }
    }
    Ok(())
}
