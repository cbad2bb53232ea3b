//! Step 1 of a group commit: **plan**. Pure and deterministic, no I/O: given what the writer
//! read (the customers, known event ids and stream heads the batch touches) and the Merkle
//! frontier, decide each append's outcome in order (conflict, idempotent replay, commit), assign
//! positions and stream versions, build the stored records and leaves, extend the frontier, and
//! collect every row the commit must write. The writer then commits the plan (step 2) and applies
//! it (step 3); see `writer.rs`.

use std::collections::{HashMap, HashSet};

use crate::codec::{commit_suffix, encode_record};
use crate::error::LedgerError;
use crate::merkle::{leaf_hash, Frontier};
use crate::storage::{Batch, Space, WrappedKey};
use crate::store::{self, TreeState};
use crate::types::{CustomerId, EventId, ExpectedVersion, Position, StreamVersion};
use crate::writer::{NewCustomer, Rejection, SealedEvent};

/// A customer as the store holds it when the batch is planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CustomerStatus {
    /// Exists and may be appended to.
    Active,
    /// Exists and was erased.
    Erased,
}

/// What the planner may know about the store: only these maps and the frontier.
pub(crate) struct PlanState<'a> {
    /// Customers the batch touches that exist; a customer not here does not exist.
    pub customers: &'a HashMap<CustomerId, CustomerStatus>,
    /// Event ids of the batch already appended, with their position and content MAC; an id not
    /// here is new.
    pub event_ids: &'a HashMap<EventId, (Position, [u8; 32])>,
    /// The last version of each stream the batch touches (`None`: no events yet), by stream prefix.
    pub heads: &'a HashMap<Vec<u8>, Option<StreamVersion>>,
    /// The tree so far.
    pub frontier: &'a Frontier,
}

/// One append to plan.
pub(crate) struct PlanAppend {
    pub customer: CustomerId,
    pub new_customer: Option<NewCustomer>,
    /// `store::stream_prefix` of the customer and stream.
    pub prefix: Vec<u8>,
    pub expected: ExpectedVersion,
    pub events: Vec<SealedEvent>,
}

/// An accepted append: first position, next stream version, whether it was an idempotent replay.
pub(crate) type Accepted = (Position, StreamVersion, bool);

/// A deliberate planner bug, for showing that the simulator catches one. Never set in production.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlannerMutation {
    /// Accept an exact expected version that is older than the stream's head.
    AcceptStaleExpectedVersion,
    /// Answer appends before their batch is committed (a writer bug: applied in the writer).
    AckBeforeCommit,
}

/// The planned batch.
pub(crate) struct Plan {
    /// Per append, in order.
    pub outcomes: Vec<Result<Accepted, Rejection>>,
    /// Every row to commit, the new tree state included.
    pub batch: Batch,
    /// Keys of the customers the batch creates, for the key store (before the commit).
    pub new_keys: Vec<(CustomerId, WrappedKey)>,
    /// Stored records of the new events in position order, for live subscribers.
    pub records: Vec<Vec<u8>>,
    /// Position of `records[0]`.
    pub first_position: Position,
    /// The frontier after the batch.
    pub frontier: Frontier,
    /// The tree state after the batch.
    pub tree: TreeState,
    /// The new head of every stream the batch appended to.
    pub heads: HashMap<Vec<u8>, Option<StreamVersion>>,
    /// Customers found active or created by accepted appends.
    pub active: HashSet<CustomerId>,
}

impl Plan {
    /// Whether committing the plan writes nothing (every append refused or replayed).
    pub fn writes_nothing(&self) -> bool {
        self.records.is_empty() && self.new_keys.is_empty()
    }
}

/// Plans `appends` against `state`. See the module documentation.
pub(crate) fn plan(state: &PlanState<'_>, appends: Vec<PlanAppend>, mutation: Option<PlannerMutation>) -> Plan {
    let events: usize = appends.iter().map(|a| a.events.len()).sum();
    let mut p = Plan {
        outcomes: Vec::with_capacity(appends.len()),
        // About five rows per event, and a few hundred bytes each.
        batch: Batch::with_capacity(events * 5 + 1, 160),
        new_keys: Vec::new(),
        records: Vec::with_capacity(events),
        first_position: Position(state.frontier.size()),
        frontier: state.frontier.clone(),
        tree: TreeState { size: 0, root: [0; 32] },
        heads: HashMap::new(),
        active: HashSet::new(),
    };
    // What earlier appends of this batch did.
    let mut created: HashSet<CustomerId> = HashSet::new();
    let mut ids: HashMap<EventId, (Position, [u8; 32])> = HashMap::new();
    for append in appends {
        let outcome = plan_one(state, append, mutation, &mut p, &mut created, &mut ids);
        p.outcomes.push(outcome);
    }
    p.tree = TreeState { size: p.frontier.size(), root: p.frontier.root() };
    if p.frontier.size() != state.frontier.size() {
        p.batch.put(Space::Meta, store::META_TREE, &p.tree.encode());
    }
    p
}

fn plan_one(
    state: &PlanState<'_>,
    append: PlanAppend,
    mutation: Option<PlannerMutation>,
    p: &mut Plan,
    created: &mut HashSet<CustomerId>,
    ids: &mut HashMap<EventId, (Position, [u8; 32])>,
) -> Result<Accepted, Rejection> {
    let err = Rejection::Error;
    let PlanAppend { customer, new_customer, prefix, expected, events } = append;
    // 1. The customer.
    let exists = created.contains(&customer)
        || match state.customers.get(&customer) {
            Some(CustomerStatus::Erased) => return Err(err(LedgerError::CustomerErased { customer: customer.to_string() })),
            Some(CustomerStatus::Active) => true,
            None => false,
        };
    if exists && new_customer.is_some() {
        return Err(Rejection::CustomerCreatedConcurrently);
    }
    if !exists && new_customer.is_none() {
        return Err(err(LedgerError::NotFound { what: "customer" }));
    }

    // 2. Idempotency: all ids known with the same content is a replay; any other overlap is refused.
    let mut known = 0usize;
    let mut first_known: Option<EventId> = None;
    let mut replay_first: Option<Position> = None;
    for (i, ev) in events.iter().enumerate() {
        let found = ids.get(&ev.event_id).or_else(|| state.event_ids.get(&ev.event_id));
        if let Some(&(position, mac)) = found {
            if mac != ev.content_mac {
                return Err(err(LedgerError::DuplicateEventId { event_id: ev.event_id.to_string() }));
            }
            if i == 0 {
                replay_first = Some(position);
            }
            // A replay must be the same append again: its events sit contiguously.
            if replay_first.map(|f| f.0 + i as u64) != Some(position.0) {
                return Err(err(LedgerError::DuplicateEventId { event_id: ev.event_id.to_string() }));
            }
            first_known.get_or_insert(ev.event_id);
            known += 1;
        }
    }
    let head = match p.heads.get(&prefix) {
        Some(h) => *h,
        None => state.heads.get(&prefix).copied().flatten(),
    };
    if known == events.len() {
        let first = replay_first.expect("at least one event");
        p.active.insert(customer);
        return Ok((first, StreamVersion(head.map_or(0, |v| v.0 + 1)), true));
    }
    if known > 0 {
        let id = first_known.expect("a known id was counted");
        return Err(err(LedgerError::DuplicateEventId { event_id: id.to_string() }));
    }

    // 3. Expected version.
    let ok = match expected {
        ExpectedVersion::Any => true,
        ExpectedVersion::NoStream => head.is_none(),
        ExpectedVersion::Exact(v) => {
            head == Some(v) || (mutation == Some(PlannerMutation::AcceptStaleExpectedVersion) && head.is_some_and(|h| v < h))
        }
    };
    if !ok {
        return Err(err(LedgerError::WrongExpectedVersion {
            expected: match expected {
                ExpectedVersion::Any => "any".into(),
                ExpectedVersion::NoStream => "no stream".into(),
                ExpectedVersion::Exact(v) => v.0.to_string(),
            },
            actual: head.map_or_else(|| "none".to_owned(), |v| v.0.to_string()),
            actual_version: head.map(|v| v.0),
        }));
    }

    // 4. Into the batch.
    if let Some(nc) = new_customer {
        p.batch.put(Space::Customers, customer.as_bytes(), &nc.record.encode());
        p.new_keys.push((customer, WrappedKey { kek_version: nc.kek_version, wrapped: nc.wrapped_dek }));
        created.insert(customer);
    }
    p.active.insert(customer);
    let first = Position(p.frontier.size());
    let mut version = head.map_or(0, |v| v.0 + 1);
    let mut stream_key = Vec::with_capacity(prefix.len() + 8);
    for mut ev in events {
        let position = Position(p.frontier.size());
        commit_suffix(&mut ev.header, position, StreamVersion(version));
        let leaf = leaf_hash(&ev.header, &ev.sealed_hash);
        let record = encode_record(&ev.header, &ev.sealed, &leaf);
        p.batch.put(Space::Events, &store::event_key(position), &record);
        stream_key.clear();
        stream_key.extend_from_slice(&prefix);
        stream_key.extend_from_slice(&version.to_be_bytes());
        p.batch.put(Space::Streams, &stream_key, &position.0.to_be_bytes());
        p.batch.put(Space::EventIds, ev.event_id.as_bytes(), &store::encode_event_id_record(position, &ev.content_mac));
        let batch = &mut p.batch;
        // A leaf is stored once, in its record: the Merkle space holds the nodes above it.
        p.frontier.push(leaf, |level, index, hash| {
            if level > 0 {
                batch.put(Space::Merkle, &store::merkle_key(level, index), hash);
            }
        });
        ids.insert(ev.event_id, (position, ev.content_mac));
        p.records.push(record);
        version += 1;
    }
    p.heads.insert(prefix, Some(StreamVersion(version - 1)));
    Ok((first, StreamVersion(version), false))
}

#[cfg(test)]
mod tests {
    //! The planner against a model that knows nothing of records or trees: per stream a list of
    //! event ids, a map of id -> (position, content), and a log length. Random batches of appends
    //! (expected any / no stream / exact right / exact stale / exact ahead, retries of earlier
    //! appends, reuse of an id with other content, new and erased customers) are planned one batch
    //! at a time; the state for the next batch is built only from the committed plans' rows.

    use super::*;
    use crate::codec::{EventHeader, PrecommitHeader, RecordRef};
    use crate::merkle::{root_of, sha256};
    use crate::store::{CustomerRecord, CustomerState};
    use crate::types::{Channel, Direction, Metadata, Region, UnixMillis};
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Want {
        Any,
        NoStream,
        Right,
        Stale,
        Ahead,
    }

    #[derive(Clone, Debug)]
    enum Gen {
        New { customer: usize, stream: usize, want: Want, events: usize },
        Retry { which: usize },
        Conflict { which: usize },
    }

    fn any_gen() -> impl Strategy<Value = Gen> {
        let want = prop_oneof![Just(Want::Any), Just(Want::NoStream), Just(Want::Right), Just(Want::Stale), Just(Want::Ahead)];
        prop_oneof![
            6 => (0usize..4, 0usize..3, want, 1usize..4).prop_map(|(customer, stream, want, events)| Gen::New { customer, stream, want, events }),
            2 => (0usize..64).prop_map(|which| Gen::Retry { which }),
            1 => (0usize..64).prop_map(|which| Gen::Conflict { which }),
        ]
    }

    /// A sealed event whose "ciphertext" is its content (the planner never looks inside).
    fn sealed(customer: CustomerId, id: EventId, stream: &str, content: u64) -> SealedEvent {
        let metadata = Metadata::new();
        let mut header = Vec::new();
        PrecommitHeader {
            customer,
            event_id: id,
            stream,
            event_type: "t",
            channel: Channel::Internal,
            direction: Direction::Internal,
            occurred_at: UnixMillis(0),
            recorded_at: UnixMillis(0),
            key_version: 1,
            schema_version: 1,
            metadata: &metadata,
        }
        .encode_into(&mut header);
        // Shaped like nonce, ciphertext and tag.
        let mut body = vec![0u8; 12];
        body.extend_from_slice(&content.to_be_bytes());
        body.extend_from_slice(&[0u8; 16]);
        SealedEvent { event_id: id, content_mac: sha256(&body), header, sealed_hash: sha256(&body), sealed: body }
    }

    fn stream_name(s: usize) -> String {
        format!("s{s}")
    }

    fn prefix(customer: CustomerId, s: usize) -> Vec<u8> {
        store::stream_prefix(customer, &crate::types::StreamName::parse(&stream_name(s), "s", &Default::default()).unwrap())
    }

    #[derive(Default)]
    struct Model {
        streams: HashMap<(usize, usize), Vec<EventId>>,
        ids: HashMap<EventId, (u64, u64)>,
        len: u64,
        /// Accepted appends: (customer, stream, ids, contents, first position).
        done: Vec<(usize, usize, Vec<EventId>, Vec<u64>, u64)>,
        created: HashSet<usize>,
    }

    /// What the store holds: what committed plans wrote.
    #[derive(Default)]
    struct Store {
        rows: [std::collections::BTreeMap<Vec<u8>, Vec<u8>>; 8],
        leaves: Vec<[u8; 32]>,
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn plans_match_the_model(batches in prop::collection::vec(prop::collection::vec(any_gen(), 1..6), 1..12), erased in 0usize..5) {
            let customers: Vec<CustomerId> = (0..4u8).map(|i| CustomerId(uuid::Uuid::from_bytes([i + 1; 16]))).collect();
            let region = Region::parse("eu", "r").unwrap();
            let mut model = Model::default();
            let mut stored = Store::default();
            let mut frontier = Frontier::default();
            let mut next_id = 0u128;
            // Customer `erased` (if one of the four) exists but is erased from the start.
            let erased = customers.get(erased).copied();
            for gens in batches {
                let mut appends = Vec::new();
                let mut expect: Vec<Result<(u64, u64, bool), &str>> = Vec::new();
                // The model decides each append in order, with what earlier appends of the batch did.
                for g in gens {
                    let (c, s, ids, contents, want) = match g {
                        Gen::New { customer, stream, want, events } => {
                            let ids: Vec<EventId> = (0..events).map(|_| { next_id += 1; EventId(uuid::Uuid::from_u128(next_id)) }).collect();
                            let contents = ids.iter().map(|i| i.0.as_u128() as u64).collect();
                            (customer, stream, ids, contents, want)
                        }
                        Gen::Retry { which } if !model.done.is_empty() => {
                            let (c, s, ids, contents, _) = model.done[which % model.done.len()].clone();
                            (c, s, ids, contents, Want::Any)
                        }
                        Gen::Conflict { which } if !model.done.is_empty() => {
                            let (c, s, ids, mut contents, _) = model.done[which % model.done.len()].clone();
                            contents[0] ^= 0xff00;
                            (c, s, ids, contents, Want::Any)
                        }
                        _ => continue,
                    };
                    let customer = customers[c];
                    let head = model.streams.get(&(c, s)).map(|v| v.len() as u64 - 1);
                    let expected = match want {
                        Want::Any => ExpectedVersion::Any,
                        Want::NoStream => ExpectedVersion::NoStream,
                        Want::Right => head.map_or(ExpectedVersion::NoStream, |h| ExpectedVersion::Exact(StreamVersion(h))),
                        Want::Stale => ExpectedVersion::Exact(StreamVersion(head.map_or(0, |h| h.saturating_sub(1)))),
                        Want::Ahead => ExpectedVersion::Exact(StreamVersion(head.map_or(0, |h| h + 1))),
                    };
                    let is_new = !model.created.contains(&c) && Some(customer) != erased;
                    let known: Vec<Option<(u64, u64)>> = ids.iter().map(|i| model.ids.get(i).copied()).collect();
                    let outcome = if Some(customer) == erased {
                        Err("erased")
                    } else if known.iter().all(Option::is_some) {
                        let positions: Vec<u64> = known.iter().map(|k| k.unwrap().0).collect();
                        let same = known.iter().zip(&contents).all(|(k, c)| k.unwrap().1 == *c);
                        let contiguous = positions.windows(2).all(|w| w[1] == w[0] + 1);
                        if same && contiguous { Ok((positions[0], head.map_or(0, |h| h + 1), true)) } else { Err("duplicate") }
                    } else if known.iter().any(Option::is_some) {
                        Err("duplicate")
                    } else {
                        let ok = match expected {
                            ExpectedVersion::Any => true,
                            ExpectedVersion::NoStream => head.is_none(),
                            ExpectedVersion::Exact(v) => head == Some(v.0),
                        };
                        if ok {
                            let first = model.len;
                            let st = model.streams.entry((c, s)).or_default();
                            for (i, (id, content)) in ids.iter().zip(&contents).enumerate() {
                                st.push(*id);
                                model.ids.insert(*id, (first + i as u64, *content));
                            }
                            model.len += ids.len() as u64;
                            model.created.insert(c);
                            model.done.push((c, s, ids.clone(), contents.clone(), first));
                            Ok((first, st.len() as u64, false))
                        } else {
                            Err("version")
                        }
                    };
                    expect.push(outcome);
                    let new_customer = is_new.then(|| NewCustomer {
                        record: CustomerRecord { region: region.clone(), state: CustomerState::Active, key_version: 1, created_unix_ms: 0 },
                        kek_version: 1,
                        wrapped_dek: vec![c as u8; 60],
                    });
                    let events = ids.iter().zip(&contents).map(|(id, content)| sealed(customer, *id, &stream_name(s), *content)).collect();
                    appends.push((PlanAppend { customer, new_customer, prefix: prefix(customer, s), expected, events }, is_new));
                }
                // The state the writer would gather, read from the stored rows only.
                let mut customer_state = HashMap::new();
                let mut event_ids = HashMap::new();
                let mut heads = HashMap::new();
                if let Some(e) = erased { customer_state.insert(e, CustomerStatus::Erased); }
                for (a, _) in &appends {
                    if stored.rows[Space::Customers.index()].contains_key(&a.customer.as_bytes()[..]) {
                        customer_state.insert(a.customer, CustomerStatus::Active);
                    }
                    for ev in &a.events {
                        if let Some(row) = stored.rows[Space::EventIds.index()].get(&ev.event_id.as_bytes()[..]) {
                            event_ids.insert(ev.event_id, store::decode_event_id_record(row).unwrap());
                        }
                    }
                    let head = stored.rows[Space::Streams.index()]
                        .range(a.prefix.clone()..)
                        .take_while(|(k, _)| k.starts_with(&a.prefix) && k.len() == a.prefix.len() + 8)
                        .last()
                        .map(|(k, _)| StreamVersion(store::be_u64(&k[a.prefix.len()..]).unwrap()));
                    heads.insert(a.prefix.clone(), head);
                }
                let state = PlanState { customers: &customer_state, event_ids: &event_ids, heads: &heads, frontier: &frontier };
                // A second append creating a customer the first of the batch created is told to
                // retry under the stored key; the model counts it as the same customer.
                let planned = plan(&state, appends.into_iter().map(|(a, _)| a).collect(), None);
                prop_assert_eq!(planned.outcomes.len(), expect.len());
                for (got, want) in planned.outcomes.iter().zip(&expect) {
                    match (got, want) {
                        (Ok((p, v, r)), Ok((wp, wv, wr))) => prop_assert_eq!((p.0, v.0, *r), (*wp, *wv, *wr)),
                        (Err(Rejection::Error(e)), Err(why)) => {
                            let code = e.code();
                            let ok = match *why {
                                "erased" => code == crate::ErrorCode::CustomerErased,
                                "duplicate" => code == crate::ErrorCode::DuplicateEventId,
                                _ => code == crate::ErrorCode::WrongExpectedVersion,
                            };
                            prop_assert!(ok, "{:?} where the model says {}", e, why);
                        }
                        (Err(Rejection::CustomerCreatedConcurrently), Ok(_)) => {
                            prop_assert!(false, "a customer the model created was refused as created concurrently");
                        }
                        (got, want) => prop_assert!(false, "planned {:?}, model {:?}", got.as_ref().map(|x| x.0).map_err(|_| ()), want),
                    }
                }
                // Commit: the rows land in the store; the records' leaves are the tree's.
                for op in planned.batch.ops() {
                    match op {
                        crate::storage::Op::Put(s, k, v) => { stored.rows[s.index()].insert(k.to_vec(), v.to_vec()); }
                        crate::storage::Op::Delete(s, k) => { stored.rows[s.index()].remove(k); }
                    }
                }
                for (i, record) in planned.records.iter().enumerate() {
                    let rec = RecordRef::decode(record).unwrap();
                    let header = EventHeader::decode(rec.header).unwrap();
                    prop_assert_eq!(header.position.0, planned.first_position.0 + i as u64);
                    prop_assert_eq!(rec.leaf, leaf_hash(rec.header, &sha256(rec.sealed)));
                    stored.leaves.push(rec.leaf);
                }
                frontier = planned.frontier;
                prop_assert_eq!(frontier.size(), model.len);
                prop_assert_eq!(planned.tree.root, root_of(&stored.leaves));
                prop_assert_eq!(stored.rows[Space::Events.index()].len() as u64, model.len);
            }
        }
    }
}
