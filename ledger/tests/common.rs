//! Helpers shared by the engine's integration tests.
#![allow(dead_code, missing_docs)]

use std::path::Path;

use ledger::types::*;
use ledger::{AppendInput, Ledger, LedgerConfig, NewEvent};

pub fn eu() -> Region {
    Region::parse("eu", "r").unwrap()
}

pub fn config(dir: &Path) -> LedgerConfig {
    LedgerConfig::new(dir, vec![eu(), Region::parse("us", "r").unwrap()])
}

pub fn open(dir: &Path) -> Ledger {
    Ledger::open(config(dir)).expect("open").0
}

pub fn event(payload: &[u8]) -> NewEvent {
    NewEvent {
        event_id: EventId::new_random(),
        event_type: EventType::parse("MessageReceived", "t", &Default::default()).unwrap(),
        channel: Channel::Whatsapp,
        direction: Direction::Inbound,
        occurred_at: None,
        metadata: Metadata::new(),
        payload: payload.to_vec(),
        schema_version: 1,
    }
}

pub fn append_input(customer: CustomerId, stream: &str, events: Vec<NewEvent>) -> AppendInput {
    AppendInput {
        customer,
        region: Some(eu()),
        stream: StreamName::parse(stream, "s", &Default::default()).unwrap(),
        expected: ExpectedVersion::Any,
        events,
    }
}

/// Every file under `dir`, recursively.
pub fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The files under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    files(dir)
        .into_iter()
        .filter(|p| std::fs::read(p).map(|b| b.windows(needle.len()).any(|w| w == needle)).unwrap_or(false))
        .map(|p| p.display().to_string())
        .collect()
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}
