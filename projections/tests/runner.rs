//! The runner's claims: rebuilding gives the rows incremental building gave, on random histories;
//! a crash in the middle of applying loses nothing and applies nothing twice.

use ledger::access::AccessRecord;
use ledger::types::{CustomerId, EventId, Metadata, Region};
use ledger::{Ledger, LedgerConfig, RecordedEvent};
use projections::{AuditView, ProjectionError, Runner, Tx, View, AUDIT_VIEW};
use proptest::prelude::*;

fn open() -> (Ledger, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, _) = Ledger::open(LedgerConfig::new(dir.path(), vec![Region::parse("eu", "r").unwrap()])).unwrap();
    (ledger, dir)
}

/// Not idempotent on purpose: every apply adds a row under a fresh key, so an event applied
/// twice shows as an extra row. The name tells two of them apart in one group.
struct Appends(&'static str);

impl View for Appends {
    fn name(&self) -> &'static str {
        self.0
    }
    fn apply(&self, tx: &mut Tx<'_>, event: &RecordedEvent) -> Result<(), ProjectionError> {
        tx.put(uuid::Uuid::new_v4().as_bytes().to_vec(), event.header.position.0.to_be_bytes().to_vec());
        Ok(())
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]
    /// Random access records and erasure events, with catch-ups at random points; then a rebuild
    /// in a second store: the rows are identical.
    #[test]
    fn rebuild_equals_incremental(steps in proptest::collection::vec((0u8..5, 0usize..4, any::<bool>()), 1..60)) {
        let rt = runtime();
        let (ledger, dir) = open();
        let customers: Vec<CustomerId> = (0..4).map(|_| CustomerId::new_random()).collect();
        let incremental = Runner::open_at(ledger.clone(), &dir.path().join("p1"), &[AUDIT_VIEW]).unwrap();
        for (kind, who, catch_up) in steps {
            rt.block_on(async {
                if kind == 4 {
                    let mut meta = Metadata::new();
                    meta.insert("customer".into(), customers[who].to_string());
                    let body = serde_json::json!({"requested_by": "dpo-1"}).to_string().into_bytes();
                    ledger.append_system("erasure.requests", "ErasureRequested", 1, EventId::new_random(), meta, body).await.unwrap();
                } else {
                    let mut rec = AccessRecord::granted("anonymous", ["ledger.v1.Ledger/ReadStream", "ledger.v1.Ledger/ReadAll", "ledger.v1.Audit/Replay", "ledger.v1.Privacy/ExportCustomer"][kind as usize], "127.0.0.1:1");
                    rec.customer = (kind != 1).then_some(customers[who]);
                    ledger.record_access(&rec).await.unwrap();
                }
            });
            if catch_up {
                incremental.catch_up(&AuditView).unwrap();
            }
        }
        incremental.catch_up(&AuditView).unwrap();
        let rebuilt = Runner::open_at(ledger.clone(), &dir.path().join("p2"), &[AUDIT_VIEW]).unwrap();
        rebuilt.rebuild(&[&AuditView]).unwrap();
        prop_assert_eq!(incremental.rows(AUDIT_VIEW).unwrap(), rebuilt.rows(AUDIT_VIEW).unwrap());
        prop_assert_eq!(incremental.lag(AUDIT_VIEW).unwrap(), 0);
        // And rebuilding in place changes nothing.
        let before = incremental.rows(AUDIT_VIEW).unwrap();
        incremental.rebuild(&[&AuditView]).unwrap();
        prop_assert_eq!(before, incremental.rows(AUDIT_VIEW).unwrap());
    }
}

/// More than one apply batch of access records about `customer`.
fn fill(rt: &tokio::runtime::Runtime, ledger: &Ledger, customer: CustomerId) {
    let total = projections::APPLY_CHUNK_EVENTS + 500;
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let l = ledger.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..total / 8 {
                    let mut rec = AccessRecord::granted("anonymous", "ledger.v1.Ledger/ReadStream", "127.0.0.1:1");
                    rec.customer = Some(customer);
                    l.record_access(&rec).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

fn positions(runner: &Runner, view: &str) -> Vec<u64> {
    let mut positions: Vec<u64> = runner.rows(view).unwrap().iter().map(|(_, v)| u64::from_be_bytes(v[..].try_into().unwrap())).collect();
    positions.sort_unstable();
    positions
}

#[test]
fn a_crash_mid_apply_loses_nothing_and_applies_nothing_twice() {
    let rt = runtime();
    let (ledger, dir) = open();
    let customer = CustomerId::new_random();
    fill(&rt, &ledger, customer);
    let events = ledger.committed_size();
    let runner = Runner::open_at(ledger.clone(), &dir.path().join("p"), &["appends", AUDIT_VIEW]).unwrap();
    let mut commits = 0;
    let crashed = runner.catch_up_with(&Appends("appends"), &mut |_| {
        commits += 1;
        if commits == 2 { Err(ProjectionError::Apply { view: "appends", position: 0, reason: "simulated crash".into() }) } else { Ok(()) }
    });
    assert!(crashed.is_err());
    let after_crash = runner.checkpoint("appends").unwrap();
    assert_eq!(after_crash, projections::APPLY_CHUNK_EVENTS as u64, "the first batch committed, the second not at all");
    assert_eq!(runner.rows("appends").unwrap().len() as u64, after_crash, "rows and checkpoint moved together");
    runner.catch_up(&Appends("appends")).unwrap();
    assert_eq!(runner.checkpoint("appends").unwrap(), events);
    assert_eq!(positions(&runner, "appends"), (0..events).collect::<Vec<_>>(), "every event applied exactly once");
    // The audit view, crashed the same way, ends equal to a rebuild.
    let mut commits = 0;
    let _ = runner.catch_up_with(&AuditView, &mut |_| {
        commits += 1;
        if commits == 2 { Err(ProjectionError::Apply { view: AUDIT_VIEW, position: 0, reason: "simulated crash".into() }) } else { Ok(()) }
    });
    runner.catch_up(&AuditView).unwrap();
    let fresh = Runner::open_at(ledger.clone(), &dir.path().join("fresh"), &[AUDIT_VIEW]).unwrap();
    fresh.rebuild(&[&AuditView]).unwrap();
    assert_eq!(runner.rows(AUDIT_VIEW).unwrap(), fresh.rows(AUDIT_VIEW).unwrap());
    assert_eq!(AuditView::trail(runner.db(), customer).unwrap().len() as u64, events);
}

/// A group catch-up far behind reads ahead on a second thread and applies the views side by
/// side; with one view a batch ahead of the other and a crash between commits, each view still
/// ends with every event exactly once.
#[test]
fn a_group_with_views_at_different_positions_applies_each_event_once_to_each() {
    let rt = runtime();
    let (ledger, dir) = open();
    fill(&rt, &ledger, CustomerId::new_random());
    let events = ledger.committed_size();
    let runner = Runner::open_at(ledger.clone(), &dir.path().join("p"), &["appends", "appends-too"]).unwrap();
    // `appends` gets one batch ahead.
    let mut commits = 0;
    let _ = runner.catch_up_with(&Appends("appends"), &mut |_| {
        commits += 1;
        if commits == 2 { Err(ProjectionError::Apply { view: "appends", position: 0, reason: "simulated crash".into() }) } else { Ok(()) }
    });
    assert_eq!(runner.checkpoint("appends").unwrap(), projections::APPLY_CHUNK_EVENTS as u64);
    // The group crashes after its first commit, then finishes.
    let mut commits = 0;
    let crashed = runner.catch_up_group(&[&Appends("appends"), &Appends("appends-too")], &mut |_| {
        commits += 1;
        if commits == 2 { Err(ProjectionError::Apply { view: "appends", position: 0, reason: "simulated crash".into() }) } else { Ok(()) }
    });
    assert!(crashed.is_err());
    assert_eq!(runner.checkpoint("appends-too").unwrap(), projections::APPLY_CHUNK_EVENTS as u64);
    runner.catch_up_group(&[&Appends("appends"), &Appends("appends-too")], &mut |_| Ok(())).unwrap();
    for view in ["appends", "appends-too"] {
        assert_eq!(runner.checkpoint(view).unwrap(), events, "{view}");
        assert_eq!(positions(&runner, view), (0..events).collect::<Vec<_>>(), "{view}: every event applied exactly once");
    }
}
