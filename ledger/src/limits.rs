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
