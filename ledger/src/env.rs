//! Time and randomness, injected into the engine so a simulation can fix both: a [`Clock`] for
//! the times the ledger records, an [`Rng`] for data keys, nonces and generated ids.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use rand::{RngCore, SeedableRng};

use crate::types::{CustomerId, EventId, UnixMillis};

/// Where the engine reads the time it records (event `recorded_at`, customer creation, signed
/// tree heads).
pub trait Clock: Send + Sync {
    /// Now, in unix milliseconds.
    fn now(&self) -> UnixMillis;
}

/// Where the engine draws data keys, nonces and generated ids from.
pub trait Rng: Send + Sync {
    /// Fills `out` with random bytes. In production they come from a CSPRNG seeded by the OS.
    fn fill(&self, out: &mut [u8]);
}

impl dyn Rng + '_ {
    /// A random customer id (UUID v4).
    pub fn customer_id(&self) -> CustomerId {
        CustomerId(self.uuid())
    }
    /// A random event id (UUID v4).
    pub fn event_id(&self) -> EventId {
        EventId(self.uuid())
    }
    fn uuid(&self) -> uuid::Uuid {
        let mut bytes = [0u8; 16];
        self.fill(&mut bytes);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        UnixMillis::now()
    }
}

/// The thread-local CSPRNG (ChaCha, seeded and periodically reseeded from the OS).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemRng;

impl Rng for SystemRng {
    fn fill(&self, out: &mut [u8]) {
        rand::thread_rng().fill_bytes(out);
    }
}

/// A clock that moves only when told to: the simulator's.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: UnixMillis) -> Self {
        ManualClock(AtomicI64::new(start.0))
    }
    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::AcqRel);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(self.0.load(Ordering::Acquire))
    }
}

/// A deterministic generator from a seed: the same seed gives the same bytes. Never for
/// production keys.
#[derive(Debug)]
pub struct SeededRng(Mutex<rand::rngs::StdRng>);

impl SeededRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        SeededRng(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)))
    }
}

impl Rng for SeededRng {
    fn fill(&self, out: &mut [u8]) {
        self.0.lock().expect("rng lock").fill_bytes(out);
    }
}
