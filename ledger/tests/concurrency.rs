//! Concurrent optimistic appends to one stream: many tasks read the head and append with an exact
//! expected version, retrying on conflict. Every success must have gotten exactly the version it
//! expected, the stream must hold each success once with versions contiguous from 0, and no
//! refused append may leave a trace. Many of these appends land in the same writer batch, so this
//! exercises the writer's in-batch view of stream heads.

mod common;
use std::collections::HashSet;
use std::sync::Arc;

use common::*;
use ledger::types::*;
use ledger::{AppendInput, ErrorCode, Payload};

#[test]
fn optimistic_concurrency_is_linearizable() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(open(dir.path()));
    let customer = CustomerId::new_random();
    let stream = StreamName::parse("shared", "s", &Default::default()).unwrap();
    let rt = rt();
    let (tasks, per_task) = (8usize, 20usize);
    let results = rt.block_on(async {
        let mut handles = Vec::new();
        for t in 0..tasks {
            let (ledger, stream) = (ledger.clone(), stream.clone());
            handles.push(tokio::spawn(async move {
                let mut done = Vec::new();
                let mut conflicts = 0u32;
                while done.len() < per_task {
                    let l = ledger.clone();
                    let s = stream.clone();
                    let head = tokio::task::spawn_blocking(move || l.read_stream(customer, &s, None, true, 1))
                        .await
                        .unwrap()
                        .unwrap()
                        .first()
                        .map(|e| e.header.stream_version);
                    let expected = head.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                    let payload = format!("task {t} item {}", done.len()).into_bytes();
                    let input = AppendInput { customer, region: Some(eu()), stream: stream.clone(), expected, events: vec![event(&payload)] };
                    match ledger.append(input).await {
                        Ok(out) => {
                            let want = head.map_or(1, |v| v.0 + 2);
                            assert_eq!(out.next_stream_version.0, want, "a success got another version than it expected");
                            done.push(payload);
                        }
                        Err(e) => {
                            assert_eq!(e.code(), ErrorCode::WrongExpectedVersion, "{e}");
                            conflicts += 1;
                        }
                    }
                }
                (done, conflicts)
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.push(h.await.unwrap());
        }
        all
    });
    let conflicts: u32 = results.iter().map(|(_, c)| c).sum();
    let events = ledger.read_stream(customer, &stream, None, false, 1000).unwrap();
    assert_eq!(events.len(), tasks * per_task, "exactly the successful appends are stored");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.header.stream_version.0, i as u64, "versions contiguous from 0");
    }
    let stored: HashSet<Vec<u8>> = events
        .into_iter()
        .map(|e| match e.payload {
            Payload::Available(p) => p,
            other => panic!("{other:?}"),
        })
        .collect();
    let succeeded: HashSet<Vec<u8>> = results.into_iter().flat_map(|(d, _)| d).collect();
    assert_eq!(stored, succeeded);
    eprintln!("{} appends succeeded after {conflicts} conflicts", tasks * per_task);
    assert!(conflicts > 0, "the tasks never collided, so this test did not exercise conflicts");
}
