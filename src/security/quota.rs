//! Per-principal quotas: a token bucket of calls per second and a cap on calls open at once
//! (a streaming call stays open until its last message is sent or the client goes away).
//! A principal over either gets `RESOURCE_EXHAUSTED` at once, before its call reaches a
//! service, so its flood costs the others no writer time.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::serve::config::{QuotaLimits as Limits, Quotas as Config};

/// How often a principal's quota refusals are written to the access trail, at most.
const RECORD_EVERY: Duration = Duration::from_secs(1);

/// How long a quota refusal is held before it is answered. A client that retries at once
/// (measured: 64 tasks made ~12,000 refused calls a second, each still sending its body) is
/// slowed to a few hundred calls a second, and the CPU those calls cost everyone else goes with
/// them; the wait is a timer, no thread. A client that backs off loses nothing it would use.
pub const REFUSAL_DELAY: Duration = Duration::from_millis(100);

/// Every principal's account, and the coalescing of every refusal record (quota,
/// authentication, role) the server writes.
#[derive(Debug)]
pub struct Quotas {
    config: Config,
    accounts: Mutex<HashMap<String, Account>>,
    /// Refusal records, at most one a second per key.
    pub refusals: Coalesce,
}

#[derive(Debug)]
struct Account {
    limits: Limits,
    tokens: f64,
    event_tokens: f64,
    refilled_at: Instant,
    open: Arc<AtomicUsize>,
}

/// The verdict on one call.
pub enum Admit {
    /// Go ahead; the call is open while this lives.
    Go(OpenCall),
    /// Over this quota: `call rate` or `concurrent calls`.
    Refused(&'static str),
}

/// One open call of a principal; closes on drop.
pub struct OpenCall(Arc<AtomicUsize>);

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Quotas {
    /// Quotas of `config` for every principal.
    pub fn new(config: Config) -> Self {
        Quotas { config, accounts: Mutex::new(HashMap::new()), refusals: Coalesce::default() }
    }

    /// Admits or refuses a call of `principal` now.
    pub fn admit(&self, principal: &str) -> Admit {
        self.admit_at(principal, Instant::now())
    }

    /// Admits `events` appended events of `principal` now (its call was admitted); false over
    /// its event rate.
    pub fn admit_events(&self, principal: &str, events: usize) -> bool {
        self.admit_events_at(principal, events, Instant::now())
    }

    fn with_account<R>(&self, principal: &str, now: Instant, f: impl FnOnce(&mut Account) -> R) -> R {
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        if !accounts.contains_key(principal) {
            let limits = self.config.for_principal(principal);
            let fresh = Account {
                limits,
                tokens: limits.burst,
                event_tokens: limits.event_burst,
                refilled_at: now,
                open: Arc::default(),
            };
            accounts.insert(principal.to_owned(), fresh);
        }
        let a = accounts.get_mut(principal).expect("inserted above");
        let elapsed = now.saturating_duration_since(a.refilled_at).as_secs_f64();
        a.tokens = (a.tokens + elapsed * a.limits.calls_per_second).min(a.limits.burst);
        a.event_tokens = (a.event_tokens + elapsed * a.limits.events_per_second).min(a.limits.event_burst);
        a.refilled_at = now;
        f(a)
    }

    fn admit_at(&self, principal: &str, now: Instant) -> Admit {
        self.with_account(principal, now, |a| {
            let quota = if a.open.load(Ordering::Acquire) >= a.limits.concurrent_calls {
                "concurrent calls"
            } else if a.tokens < 1.0 {
                "call rate"
            } else {
                a.tokens -= 1.0;
                a.open.fetch_add(1, Ordering::AcqRel);
                return Admit::Go(OpenCall(a.open.clone()));
            };
            Admit::Refused(quota)
        })
    }

    fn admit_events_at(&self, principal: &str, events: usize, now: Instant) -> bool {
        self.with_account(principal, now, |a| {
            // An append larger than the whole burst could never pass: it is held to the burst.
            let cost = (events as f64).min(a.limits.event_burst);
            let admitted = a.event_tokens >= cost;
            if admitted {
                a.event_tokens -= cost;
            }
            admitted
        })
    }
}

/// At most one record a second per key, each counting the events it stands for.
#[derive(Default, Debug)]
pub struct Coalesce {
    keys: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Coalesce {
    /// Counts an event for `key`; `Some(n)` when it is due a record standing for `n` events.
    pub fn due(&self, key: &str) -> Option<u64> {
        self.due_at(key, Instant::now())
    }

    fn due_at(&self, key: &str, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        // Forget quiet keys, so the table stays as small as the set of active offenders.
        if keys.len() > 10_000 {
            keys.retain(|_, (at, _)| now.saturating_duration_since(*at) < RECORD_EVERY);
        }
        match keys.get_mut(key) {
            None => {
                keys.insert(key.to_owned(), (now, 0));
                Some(1)
            }
            Some((at, unrecorded)) => {
                *unrecorded += 1;
                (now.saturating_duration_since(*at) >= RECORD_EVERY).then(|| {
                    *at = now;
                    std::mem::take(unrecorded)
                })
            }
        }
    }
}

/// A response body that holds its call open until it ends or is dropped.
pub struct Counted<B> {
    body: B,
    _open: OpenCall,
}

impl<B> Counted<B> {
    /// `body`, holding `open`.
    pub fn new(body: B, open: OpenCall) -> Self {
        Counted { body, _open: open }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(rate: f64, burst: f64, concurrent: usize) -> Quotas {
        Quotas::new(Config { calls_per_second: rate, burst, concurrent_calls: concurrent, ..Config::default() })
    }

    #[test]
    fn events_are_metered_by_count_and_a_named_principal_has_its_own_figures() {
        let mut config = Config { events_per_second: 100.0, event_burst: 300.0, ..Config::default() };
        config.principal.push(crate::serve::config::PrincipalQuota {
            name: "import".into(),
            calls_per_second: None,
            burst: None,
            concurrent_calls: None,
            events_per_second: Some(1e6),
            event_burst: Some(1e6),
        });
        let q = Quotas::new(config);
        let t = Instant::now();
        assert!(q.admit_events_at("svc", 200, t));
        assert!(!q.admit_events_at("svc", 200, t));
        // One second refills 100.
        assert!(q.admit_events_at("svc", 200, t + Duration::from_secs(1)));
        for _ in 0..10 {
            assert!(q.admit_events_at("import", 1000, t));
        }
    }

    #[test]
    fn a_principal_over_its_rate_is_refused_and_others_are_not() {
        let q = quotas(10.0, 1.0, 100);
        let t0 = Instant::now();
        assert!(matches!(q.admit_at("flood", t0), Admit::Go(_)));
        assert!(matches!(q.admit_at("flood", t0), Admit::Refused("call rate")));
        assert!(matches!(q.admit_at("quiet", t0), Admit::Go(_)));
        // 100 ms at 10 calls a second refills one call.
        assert!(matches!(q.admit_at("flood", t0 + Duration::from_millis(100)), Admit::Go(_)));
    }

    #[test]
    fn refusals_are_recorded_once_a_second_with_their_count() {
        let c = Coalesce::default();
        let t0 = Instant::now();
        assert_eq!(c.due_at("flood", t0), Some(1));
        assert_eq!(c.due_at("flood", t0 + Duration::from_millis(10)), None);
        assert_eq!(c.due_at("flood", t0 + Duration::from_millis(20)), None);
        assert_eq!(c.due_at("quiet", t0 + Duration::from_millis(20)), Some(1));
        assert_eq!(c.due_at("flood", t0 + RECORD_EVERY), Some(3));
    }

    #[test]
    fn open_calls_are_capped_until_they_close() {
        let q = quotas(1e9, 1e9, 2);
        let t = Instant::now();
        let (Admit::Go(a), Admit::Go(_b)) = (q.admit_at("s", t), q.admit_at("s", t)) else { panic!() };
        assert!(matches!(q.admit_at("s", t), Admit::Refused("concurrent calls")));
        drop(a);
        assert!(matches!(q.admit_at("s", t), Admit::Go(_)));
    }
}
