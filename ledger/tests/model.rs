//! Property test: the ledger against a simple in-memory model. Random sequences of appends over a
//! few interleaved streams, with expected versions (any, no stream, exact right, exact wrong),
//! idempotent retries of earlier appends, and conflicting reuse of earlier event ids. After every
//! operation the outcome must match the model's; at the end every stream and the global log must
//! read back exactly as modelled, and the root must equal the RFC 9162 root of the leaves.

mod common;
use std::collections::BTreeMap;

use common::*;
use ledger::merkle::root_of;
use ledger::types::*;
use ledger::{AppendInput, ErrorCode, NewEvent};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Expect {
    Any,
    NoStream,
    ExactRight,
    ExactWrong(u64),
}

#[derive(Clone, Debug)]
enum Op {
    Append { stream: usize, expect: Expect, payloads: Vec<u8> },
    Retry { which: usize },
    Conflict { which: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..3, prop_oneof![
            Just(Expect::Any), Just(Expect::NoStream), Just(Expect::ExactRight), (0u64..4).prop_map(Expect::ExactWrong)
        ], prop::collection::vec(any::<u8>(), 1..4))
            .prop_map(|(stream, expect, payloads)| Op::Append { stream, expect, payloads }),
        2 => (0usize..100).prop_map(|which| Op::Retry { which }),
        1 => (0usize..100).prop_map(|which| Op::Conflict { which }),
    ]
}

#[derive(Default)]
struct Model {
    /// stream -> payloads in version order.
    streams: BTreeMap<usize, Vec<Vec<u8>>>,
    /// global log: (stream, payload).
    log: Vec<(usize, Vec<u8>)>,
    /// Successful appends: (input, first position).
    done: Vec<(AppendInput, u64)>,
}

fn stream_name(i: usize) -> StreamName {
    StreamName::parse(&format!("conv-{i}"), "s", &Default::default()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn ledger_matches_model(ops in prop::collection::vec(op(), 1..25)) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = open(dir.path());
        let customer = CustomerId::new_random();
        let mut model = Model::default();
        let rt = rt();
        for op in ops {
            match op {
                Op::Append { stream, expect, payloads } => {
                    let head = model.streams.get(&stream).map(|v| v.len() as u64);
                    let (expected, ok) = match expect {
                        Expect::Any => (ExpectedVersion::Any, true),
                        Expect::NoStream => (ExpectedVersion::NoStream, head.is_none()),
                        Expect::ExactRight => match head {
                            Some(n) => (ExpectedVersion::Exact(StreamVersion(n - 1)), true),
                            None => (ExpectedVersion::NoStream, true),
                        },
                        Expect::ExactWrong(v) => (ExpectedVersion::Exact(StreamVersion(v)), head == Some(v + 1)),
                    };
                    let events: Vec<NewEvent> = payloads.iter().map(|p| event(&[*p, 1, 2])).collect();
                    let input = AppendInput { customer, region: Some(eu()), stream: stream_name(stream), expected, events };
                    let result = rt.block_on(ledger.append(input.clone()));
                    if ok {
                        let out = result.expect("model says the append goes through");
                        prop_assert_eq!(out.first_position.0, model.log.len() as u64);
                        prop_assert!(!out.idempotent_replay);
                        let s = model.streams.entry(stream).or_default();
                        for ev in &input.events {
                            s.push(ev.payload.clone());
                            model.log.push((stream, ev.payload.clone()));
                        }
                        prop_assert_eq!(out.next_stream_version.0, s.len() as u64);
                        prop_assert_eq!(out.tree_size, model.log.len() as u64);
                        model.done.push((input, out.first_position.0));
                    } else {
                        let err = result.expect_err("model says wrong expected version");
                        prop_assert_eq!(err.code(), ErrorCode::WrongExpectedVersion);
                    }
                }
                Op::Retry { which } => {
                    if model.done.is_empty() { continue; }
                    let (input, first) = model.done[which % model.done.len()].clone();
                    let out = rt.block_on(ledger.append(input)).expect("a retry of the same append succeeds");
                    prop_assert!(out.idempotent_replay);
                    prop_assert_eq!(out.first_position.0, first);
                    prop_assert_eq!(out.tree_size, model.log.len() as u64);
                }
                Op::Conflict { which } => {
                    if model.done.is_empty() { continue; }
                    let (mut input, _) = model.done[which % model.done.len()].clone();
                    input.events[0].payload.push(0xff);
                    let err = rt.block_on(ledger.append(input)).expect_err("same id, other content");
                    prop_assert_eq!(err.code(), ErrorCode::DuplicateEventId);
                }
            }
        }
        // Every stream reads back as modelled, forward and backward.
        for (stream, payloads) in &model.streams {
            let got = ledger.read_stream(customer, &stream_name(*stream), None, false, 1000).unwrap();
            let got: Vec<Vec<u8>> = got.into_iter().map(|e| match e.payload { ledger::Payload::Available(p) => p, other => panic!("{other:?}") }).collect();
            prop_assert_eq!(&got, payloads);
            let back = ledger.read_stream(customer, &stream_name(*stream), None, true, 1).unwrap();
            prop_assert_eq!(back[0].header.stream_version.0, payloads.len() as u64 - 1);
        }
        // The global log is contiguous and in model order, and the root matches its leaves.
        let (all, next) = ledger.read_range(Position(0), Position(ledger.committed_size()), 10_000, usize::MAX, &Default::default()).unwrap();
        prop_assert_eq!(next.0, model.log.len() as u64);
        let leaves: Vec<_> = all.iter().map(|e| e.leaf).collect();
        for (i, (e, (stream, payload))) in all.iter().zip(&model.log).enumerate() {
            prop_assert_eq!(e.header.position.0, i as u64);
            prop_assert_eq!(e.header.stream.clone(), format!("conv-{stream}"));
            prop_assert_eq!(&e.payload, &ledger::Payload::Available(payload.clone()));
        }
        prop_assert_eq!(ledger.tree().root, root_of(&leaves));
        rt.block_on(ledger.shutdown());
    }
}
