//! Every bound the engine enforces, named, with its default. Exceeding one is an
//! `INVALID_ARGUMENT` that names the limit.

use serde::{Deserialize, Serialize};

/// Request-size limits and the bounds of the engine's queues, batches and caches.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest payload of one event, in bytes.
    pub payload_bytes_max: usize,
    /// Most events in one Append.
    pub events_per_append_max: usize,
    /// Most metadata entries on one event.
    pub metadata_entries_max: usize,
    /// Longest metadata key, in bytes.
    pub metadata_key_bytes_max: usize,
    /// Longest metadata value, in bytes.
    pub metadata_value_bytes_max: usize,
    /// Longest stream name, in bytes.
    pub stream_name_bytes_max: usize,
    /// Longest event type, in bytes.
    pub event_type_bytes_max: usize,
    /// Events returned by a ReadStream page when the caller does not say.
    pub page_size_default: usize,
    /// Most events a ReadStream page may ask for.
    pub page_size_max: usize,
    /// Largest gRPC request the server decodes, in bytes.
    pub request_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            payload_bytes_max: 1024 * 1024,
            events_per_append_max: 1000,
            metadata_entries_max: 16,
            metadata_key_bytes_max: 64,
            metadata_value_bytes_max: 256,
            stream_name_bytes_max: 128,
            event_type_bytes_max: 128,
            page_size_default: 100,
            page_size_max: 1000,
            request_bytes_max: 16 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// Checks the limits against what the stored formats can hold: strings and counts in the
    /// canonical header are u16-length-prefixed, payloads u32. A limit beyond those would let a
    /// request reach an encoder that cannot represent it, so such a configuration is refused at
    /// start, naming the limit.
    pub fn validate(&self) -> Result<(), String> {
        let u16_max = usize::from(u16::MAX);
        for (name, value) in [
            ("stream_name_bytes_max", self.stream_name_bytes_max),
            ("event_type_bytes_max", self.event_type_bytes_max),
            ("metadata_entries_max", self.metadata_entries_max),
            ("metadata_key_bytes_max", self.metadata_key_bytes_max),
            ("metadata_value_bytes_max", self.metadata_value_bytes_max),
        ] {
            if value > u16_max {
                return Err(format!("invalid limits.{name}: {value} is above {u16_max}, the most the stored header format can hold"));
            }
            if value == 0 {
                return Err(format!("invalid limits.{name}: must be at least 1"));
            }
        }
        // The sealed payload adds a nonce and a tag; the record's lengths are u32.
        let payload_max = u32::MAX as usize - 1024;
        if self.payload_bytes_max > payload_max || self.payload_bytes_max == 0 {
            return Err(format!("invalid limits.payload_bytes_max: must be 1 to {payload_max}"));
        }
        for (name, value) in [
            ("events_per_append_max", self.events_per_append_max),
            ("page_size_default", self.page_size_default),
            ("page_size_max", self.page_size_max),
            ("request_bytes_max", self.request_bytes_max),
        ] {
            if value == 0 {
                return Err(format!("invalid limits.{name}: must be at least 1"));
            }
        }
        if self.page_size_default > self.page_size_max {
            return Err("invalid limits.page_size_default: must not exceed page_size_max".into());
        }
        Ok(())
    }
}

/// Bounds of the write path and the caches.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineTuning {
    /// Appends that may wait for the writer before callers are held back.
    pub write_queue_appends_max: usize,
    /// Most events the writer commits in one synced batch.
    pub batch_events_max: usize,
    /// How long the writer waits for more appends after the first of a batch, in microseconds.
    /// 0 relies on natural batching: appends that arrive during a sync form the next batch.
    pub batch_wait_us: u64,
    /// Most unwrapped customer data keys held in memory.
    pub key_cache_entries_max: usize,
    /// How long an unwrapped data key stays cached, in seconds.
    pub key_cache_ttl_secs: u64,
    /// Most stream heads the writer keeps in memory (cleared when full; misses read RocksDB).
    pub stream_cache_entries_max: usize,
    /// Committed batches buffered for live subscribers; one that falls further behind continues
    /// from storage.
    pub subscription_buffer_batches: usize,
    /// Most events sent per message on read and subscription streams.
    pub read_chunk_events: usize,
    /// Approximate bytes after which a read or subscription message is closed (one event always
    /// fits). Keeps messages under gRPC clients' default 4 MiB decode limit.
    pub read_chunk_bytes_max: usize,
    /// How many of the newest events the quick startup check re-hashes.
    pub quick_check_events: u64,
}

impl Default for EngineTuning {
    fn default() -> Self {
        EngineTuning {
            write_queue_appends_max: 4096,
            batch_events_max: 8192,
            batch_wait_us: 0,
            key_cache_entries_max: 100_000,
            key_cache_ttl_secs: 600,
            stream_cache_entries_max: 1_000_000,
            subscription_buffer_batches: 1024,
            read_chunk_events: 256,
            read_chunk_bytes_max: 1024 * 1024,
            quick_check_events: 10_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_beyond_the_header_format_are_refused() {
        assert!(Limits::default().validate().is_ok());
        for set in [
            |l: &mut Limits| l.stream_name_bytes_max = 65_536,
            |l: &mut Limits| l.event_type_bytes_max = 70_000,
            |l: &mut Limits| l.metadata_entries_max = 100_000,
            |l: &mut Limits| l.metadata_key_bytes_max = 65_536,
            |l: &mut Limits| l.metadata_value_bytes_max = 1 << 20,
        ] {
            let mut limits = Limits::default();
            set(&mut limits);
            let e = limits.validate().unwrap_err();
            assert!(e.contains("65535"), "{e}");
        }
        let mut at_the_edge = Limits::default();
        at_the_edge.stream_name_bytes_max = 65_535;
        assert!(at_the_edge.validate().is_ok());
    }
}
