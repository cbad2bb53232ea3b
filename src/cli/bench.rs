//! `ledgerd bench`: drives a running server over gRPC and prints throughput and latency. It is a
//! program that prints numbers; nothing here passes or fails on speed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use proto::v1 as pb;
use proto::v1::ledger_client::LedgerClient;
use rand::{Rng, RngCore};

use crate::cli::client::Conn;

/// Workloads of `ledgerd bench`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Concurrent writers, one event per Append.
    W1,
    /// Concurrent writers, `--batch-events` events per Append.
    W1b,
    /// ReadAll of the whole log with decryption.
    W2,
    /// Inclusion proofs for random positions against the current tree head.
    Proofs,
    /// `--events` events for one customer (W1b-style), an audited Replay of them into a proof
    /// file, and the offline verification `ledgerd verify --file` runs, timed. Needs
    /// `--verifier-key`.
    Replay,
    /// A customer with `--events` events and one with 10: export the big one to a file, then
    /// erase both, timing the call, the time until unreadable and until the key is purged. Run a
    /// write workload first to give the ledger its size.
    Erasure,
    /// W3: signed WhatsApp webhooks posted over HTTP by `--writers` concurrent clients,
    /// `--events` messages from `--customers` numbers. Needs `--whatsapp-secret` and
    /// `--phone-number-id` of a configured account.
    W3,
    /// In-process, no server: `--events` message events (JSON payloads like the connectors',
    /// over `--customers` customers) appended to a fresh ledger in `--data-dir`, then the audit,
    /// CRM-sync and routing views caught up from zero together, timed; then W1-style load
    /// (`--writers` concurrent single-event appends) with the views following, and the delay from
    /// an event's commit to its view commit reported as p50/p99.
    Projections,
    /// Abuse isolation: `--quiet-appends` paced single-event appends by one principal, first
    /// alone, then while a second principal floods (`--writers` tasks appending as fast as they
    /// can, retrying at once when refused). Prints the quiet principal's latency both times
    /// and what the flood got through. Mints both principals' tokens with the admin token.
    Flood,
    /// W1, then W1b, then W2.
    All,
}

/// Options of `ledgerd bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// The server's gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// Which workload to run.
    #[arg(long, value_enum, default_value = "all")]
    pub workload: Workload,
    /// Concurrent writers.
    #[arg(long, default_value_t = 64)]
    pub writers: usize,
    /// HTTP/2 connections the writers share.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Distinct customers the events are spread over.
    #[arg(long, default_value_t = 10_000)]
    pub customers: usize,
    /// Events to append per write workload.
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 512)]
    pub payload_bytes: usize,
    /// Events per Append in W1b.
    #[arg(long, default_value_t = 100)]
    pub batch_events: usize,
    /// Inclusion proofs to request in the proofs workload.
    #[arg(long, default_value_t = 100_000)]
    pub proofs: u64,
    /// Region of the customers the benchmark creates.
    #[arg(long, default_value = "eu")]
    pub region: String,
    /// The webhook URL for W3.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/whatsapp")]
    pub webhook_url: String,
    /// The WhatsApp app secret of the account W3 posts for.
    #[arg(long, env = "LEDGER_BENCH_WHATSAPP_SECRET")]
    pub whatsapp_secret: Option<String>,
    /// The `phone_number_id` of the account W3 posts for.
    #[arg(long, default_value = "106540352242922")]
    pub phone_number_id: String,
    /// A fresh data directory for the projections workload (default: a temporary one).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    /// Appends of the quiet principal in each phase of the flood workload (one every 5 ms).
    #[arg(long, default_value_t = 2000)]
    pub quiet_appends: usize,
    /// How long a flood writer waits after RESOURCE_EXHAUSTED before trying again (0: at once,
    /// as an abusive client would).
    #[arg(long, default_value_t = 0)]
    pub flood_backoff_ms: u64,
    /// The server's C2SP verifier key (`ledgerd audit public-key`), for the replay workload.
    #[arg(long, env = "LEDGER_VERIFIER_KEY")]
    pub verifier_key: Option<String>,
}

/// Runs the chosen workloads and prints one line of results each.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.workload == Workload::Projections {
        return projections_workload(&args).await;
    }
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(crate::cli::client::connect(&args.target).await?);
    }
    let customers: Arc<Vec<String>> = Arc::new((0..args.customers.max(1)).map(|_| uuid::Uuid::new_v4().to_string()).collect());
    let w = args.workload;
    if matches!(w, Workload::W1 | Workload::All) {
        write_workload("W1", &args, &channels, customers.clone(), 1).await?;
    }
    if matches!(w, Workload::W1b | Workload::All) {
        write_workload("W1b", &args, &channels, customers.clone(), args.batch_events.max(1)).await?;
    }
    if matches!(w, Workload::W2 | Workload::All) {
        read_workload(&channels[0]).await?;
    }
    if w == Workload::Proofs {
        proof_workload(&args, &channels).await?;
    }
    if w == Workload::Replay {
        replay_workload(&args, &channels).await?;
    }
    if w == Workload::Erasure {
        erasure_workload(&args, &channels).await?;
    }
    if w == Workload::W3 {
        webhook_workload(&args).await?;
    }
    if w == Workload::Flood {
        flood_workload(&args, &channels).await?;
    }
    Ok(())
}

async fn flood_workload(args: &BenchArgs, channels: &[Conn]) -> anyhow::Result<()> {
    let mut admin = pb::admin_client::AdminClient::new(channels[0].clone());
    let mut mint = async |name: &str| -> anyhow::Result<String> {
        let req = pb::CreateTokenRequest { principal: name.into(), roles: vec!["appender".into()], regions: vec![], ttl_seconds: 3600 };
        Ok(admin.create_token(req).await.context("creating a bench token (the bench needs the admin token)")?.into_inner().token)
    };
    let (quiet_token, flood_token) = (mint("bench-quiet").await?, mint("bench-flood").await?);
    let quiet = LedgerClient::new(crate::cli::client::connect_as(&args.target, Some(&quiet_token)).await?);
    let region = args.region.clone();
    let paced = async |mut client: LedgerClient<Conn>, n: usize| -> anyhow::Result<Vec<u32>> {
        let customer = uuid::Uuid::new_v4().to_string();
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let mut latencies = Vec::with_capacity(n);
        for _ in 0..n {
            tick.tick().await;
            let req = pb::AppendRequest {
                stream: "bench-quiet".into(),
                customer_id: customer.clone(),
                region: region.clone(),
                expected_version: None,
                events: vec![pb::ProposedEvent {
                    event_id: uuid::Uuid::new_v4().to_string(),
                    event_type: "MessageReceived".into(),
                    payload: vec![b'q'; args.payload_bytes],
                    channel: pb::Channel::Whatsapp as i32,
                    direction: pb::Direction::Inbound as i32,
                    ..Default::default()
                }],
            };
            let t = Instant::now();
            client.append(req).await.context("the quiet principal's append failed")?;
            latencies.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
        }
        latencies.sort_unstable();
        Ok(latencies)
    };
    let report = |phase: &str, l: &[u32]| {
        println!(
            "flood: quiet principal {phase}: {} appends, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            l.len(),
            percentile(l, 0.50),
            percentile(l, 0.99),
            percentile(l, 1.0)
        )
    };
    eprintln!("flood: quiet principal alone...");
    let alone = paced(quiet.clone(), args.quiet_appends).await?;
    report("alone", &alone);

    eprintln!("flood: quiet principal while bench-flood floods with {} writers...", args.writers);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (accepted, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let flood_channels = {
        let mut v = Vec::new();
        for _ in 0..args.connections.max(1) {
            v.push(crate::cli::client::connect_as(&args.target, Some(&flood_token)).await?);
        }
        v
    };
    let started = Instant::now();
    let mut flooders = Vec::new();
    for i in 0..args.writers.max(1) {
        let mut client = LedgerClient::new(flood_channels[i % flood_channels.len()].clone());
        let (stop, accepted, refused) = (stop.clone(), accepted.clone(), refused.clone());
        let (region, per_append, payload_bytes) = (args.region.clone(), args.batch_events.max(1), args.payload_bytes);
        let backoff = Duration::from_millis(args.flood_backoff_ms);
        flooders.push(tokio::spawn(async move {
            let customer = uuid::Uuid::new_v4().to_string();
            while !stop.load(Ordering::Relaxed) {
                let events = (0..per_append)
                    .map(|_| pb::ProposedEvent {
                        event_id: uuid::Uuid::new_v4().to_string(),
                        event_type: "MessageReceived".into(),
                        payload: vec![b'f'; payload_bytes],
                    channel: pb::Channel::Whatsapp as i32,
                    direction: pb::Direction::Inbound as i32,
                        ..Default::default()
                    })
                    .collect();
                let req = pb::AppendRequest { stream: "bench-flood".into(), customer_id: customer.clone(), region: region.clone(), expected_version: None, events };
                match client.append(req).await {
                    Ok(_) => accepted.fetch_add(1, Ordering::Relaxed),
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                        if !backoff.is_zero() {
                            tokio::time::sleep(backoff).await;
                        }
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(s) => return Err(anyhow::anyhow!("flood append failed: {s}")),
                };
            }
            anyhow::Ok(())
        }));
    }
    // Let the flood reach its steady state before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let under = paced(quiet, args.quiet_appends).await;
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.await??;
    }
    let under = under?;
    let secs = started.elapsed().as_secs_f64();
    report("under flood", &under);
    let (a, r) = (accepted.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    println!(
        "flood: bench-flood made {} calls in {secs:.1} s: {a} accepted ({:.0}/s, {} events each), {r} refused RESOURCE_EXHAUSTED ({:.0}/s)",
        a + r,
        a as f64 / secs,
        args.batch_events.max(1),
        r as f64 / secs
    );
    Ok(())
}

async fn webhook_workload(args: &BenchArgs) -> anyhow::Result<()> {
    use hmac::Mac;
    let secret = args.whatsapp_secret.clone().context("W3 needs --whatsapp-secret of a configured WhatsApp account")?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.writers).build()?;
    let next = Arc::new(AtomicU64::new(0));
    let total = args.events;
    let started = Instant::now();
    let mut tasks = Vec::new();
    let run = uuid::Uuid::new_v4().simple().to_string();
    for _ in 0..args.writers.max(1) {
        let (client, next, secret, url, number, run) =
            (client.clone(), next.clone(), secret.clone(), args.webhook_url.clone(), args.phone_number_id.clone(), run.clone());
        let customers = args.customers.max(1) as u64;
        tasks.push(tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let wa_id = format!("551198{:07}", n % customers);
                let ts = 1_700_000_000 + n;
                let body = format!(
                    r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550783881","phone_number_id":"{number}"}},"contacts":[{{"profile":{{"name":"Bench"}},"wa_id":"{wa_id}"}}],"messages":[{{"from":"{wa_id}","id":"wamid.bench.{run}.{n}","timestamp":"{ts}","type":"text","text":{{"body":"benchmark message {n}"}}}}]}}}}]}}]}}"#
                );
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
                mac.update(body.as_bytes());
                let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
                let t = Instant::now();
                let resp = client.post(&url).header("content-type", "application/json").header("x-hub-signature-256", sig).body(body).send().await?;
                anyhow::ensure!(resp.status().is_success(), "webhook answered {}", resp.status());
                latencies_us.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            anyhow::Ok(latencies_us)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    println!(
        "W3: {} signed WhatsApp webhooks from {} numbers, {} clients: {:.2} s, {:.0} webhooks/s, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        all.len(),
        args.customers.min(args.events as usize),
        args.writers,
        elapsed,
        all.len() as f64 / elapsed,
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        percentile(&all, 1.0),
    );
    Ok(())
}

async fn erasure_workload(args: &BenchArgs, channels: &[Conn]) -> anyhow::Result<()> {
    use proto::v1::privacy_client::PrivacyClient;
    let big = uuid::Uuid::new_v4().to_string();
    let small = uuid::Uuid::new_v4().to_string();
    write_workload("erasure setup", args, channels, Arc::new(vec![big.clone()]), args.batch_events.max(1)).await?;
    let small_args = BenchArgs { events: 10, writers: 1, ..args.clone() };
    write_workload("erasure setup", &small_args, channels, Arc::new(vec![small.clone()]), 1).await?;

    let dir = std::env::temp_dir().join(format!("ledgerd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("export.jsonl");
    let started = Instant::now();
    crate::cli::proof_file::export(crate::cli::proof_file::ExportArgs { target: args.target.clone(), customer: Some(big.clone()), region: None, out: file.clone() })
        .await?;
    let secs = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&file)?.len();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "export: {} events of one customer to a file in {secs:.2} s: {:.0} events/s ({:.0} MiB)",
        args.events,
        args.events as f64 / secs,
        bytes as f64 / (1024.0 * 1024.0)
    );

    let mut privacy = PrivacyClient::new(channels[0].clone());
    for (label, customer, events) in [("10 events", &small, 10), ("big", &big, args.events)] {
        let request_id = format!("bench-{}", &customer[..8]);
        let req = pb::EraseCustomerRequest {
            customer_id: customer.clone(),
            request_id: request_id.clone(),
            legal_basis: "bench".into(),
            requested_by: "bench".into(),
        };
        let t = Instant::now();
        let r = privacy.erase_customer(req).await.context("erase failed")?.into_inner();
        let call_ms = t.elapsed().as_secs_f64() * 1000.0;
        let status = r.status.context("no status")?;
        let ms = |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000));
        let unreadable_ms = ms(&status.unreadable_at).unwrap_or(0) - ms(&status.requested_at).unwrap_or(0);
        let purged = loop {
            let s = privacy
                .get_erasure_status(pb::GetErasureStatusRequest { request_id: request_id.clone(), customer_id: String::new() })
                .await?
                .into_inner()
                .status
                .context("no status")?;
            if s.purged_at.is_some() {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let purge_ms = ms(&purged.purged_at).unwrap_or(0) - ms(&purged.unreadable_at).unwrap_or(0);
        let _ = label;
        println!(
            "erasure of a customer with {events} events: EraseCustomer returned in {call_ms:.1} ms (unreadable {unreadable_ms} ms after the request was recorded); key purged from the files {purge_ms} ms after that"
        );
    }
    Ok(())
}

async fn replay_workload(args: &BenchArgs, channels: &[Conn]) -> anyhow::Result<()> {
    let vkey = args.verifier_key.clone().context("the replay workload needs --verifier-key (from `ledgerd audit public-key`)")?;
    let customer = uuid::Uuid::new_v4().to_string();
    write_workload("replay setup", args, channels, Arc::new(vec![customer.clone()]), args.batch_events.max(1)).await?;
    let dir = std::env::temp_dir().join(format!("ledgerd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("replay.jsonl");
    let started = Instant::now();
    let replay = crate::cli::proof_file::ReplayArgs { target: args.target.clone(), customer, stream: None, from: 0, to: 0, out: file.clone() };
    crate::cli::proof_file::replay(replay).await?;
    let replay_secs = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&file)?.len();
    let path = file.clone();
    let report = tokio::task::spawn_blocking(move || proof::verify_file(&path, &vkey)).await??;
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(report.failures.is_empty(), "the replay did not verify: {:?}", report.failures);
    let size = report.head.as_ref().map_or(0, |h| h.size);
    println!(
        "replay: {} events of one customer with proofs against a log of {size} events: served and written in {:.2} s ({:.0} events/s, {:.0} MiB); \
         verified offline in {:.2} s ({:.0} events/s on {} threads)",
        report.events,
        replay_secs,
        report.events as f64 / replay_secs,
        bytes as f64 / (1024.0 * 1024.0),
        report.seconds,
        report.events as f64 / report.seconds,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    Ok(())
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[idx]) / 1000.0
}

async fn write_workload(
    name: &str,
    args: &BenchArgs,
    channels: &[Conn],
    customers: Arc<Vec<String>>,
    per_append: usize,
) -> anyhow::Result<()> {
    let appends_total = args.events.div_ceil(per_append as u64);
    let next = Arc::new(AtomicU64::new(0));
    let done_events = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let progress = {
        let done = done_events.clone();
        let total = appends_total * per_append as u64;
        let name = name.to_owned();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let d = done.load(Ordering::Relaxed);
                eprintln!("{name}: {d}/{total} events, {:.0} events/s so far", d as f64 / started.elapsed().as_secs_f64());
            }
        })
    };
    let mut tasks = Vec::new();
    for i in 0..args.writers.max(1) {
        let mut client = LedgerClient::new(channels[i % channels.len()].clone());
        let (next, done, customers) = (next.clone(), done_events.clone(), customers.clone());
        let (payload_bytes, region) = (args.payload_bytes, args.region.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies_us: Vec<u32> = Vec::new();
            let mut payload = vec![0u8; payload_bytes];
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= appends_total {
                    break;
                }
                let customer = {
                    let mut rng = rand::thread_rng();
                    customers[rng.gen_range(0..customers.len())].clone()
                };
                let events = (0..per_append)
                    .map(|_| {
                        rand::thread_rng().fill_bytes(&mut payload);
                        pb::ProposedEvent {
                            event_id: uuid::Uuid::new_v4().to_string(),
                            event_type: "MessageReceived".into(),
                            channel: pb::Channel::Whatsapp as i32,
                            direction: pb::Direction::Inbound as i32,
                            payload: payload.clone(),
                            ..Default::default()
                        }
                    })
                    .collect();
                let req = pb::AppendRequest {
                    stream: format!("bench-{}", &customer[..8]),
                    customer_id: customer,
                    region: region.clone(),
                    expected_version: None,
                    events,
                };
                let t = Instant::now();
                client.append(req).await.context("append failed")?;
                latencies_us.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                done.fetch_add(per_append as u64, Ordering::Relaxed);
            }
            anyhow::Ok(latencies_us)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    progress.abort();
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let events = all.len() as u64 * per_append as u64;
    println!(
        "{name}: {events} events in {} appends of {per_append}, {} writers: {:.2} s, {:.0} events/s, append latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        all.len(),
        args.writers,
        elapsed,
        events as f64 / elapsed,
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        percentile(&all, 1.0),
    );
    Ok(())
}

async fn read_workload(channel: &Conn) -> anyhow::Result<()> {
    let mut client = LedgerClient::new(channel.clone()).max_decoding_message_size(64 * 1024 * 1024);
    let started = Instant::now();
    let mut stream = client
        .read_all(pb::ReadAllRequest { from_position: 0, max_count: 0, filter: None })
        .await
        .context("read_all failed")?
        .into_inner();
    let (mut events, mut bytes) = (0u64, 0u64);
    let mut last_report = Instant::now();
    while let Some(msg) = stream.message().await? {
        events += msg.events.len() as u64;
        bytes += msg.events.iter().map(|e| e.payload.len() as u64).sum::<u64>();
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!("W2: {events} events read so far");
            last_report = Instant::now();
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "W2: ReadAll of {events} events ({:.1} MiB decrypted): {:.2} s, {:.0} events/s",
        bytes as f64 / (1024.0 * 1024.0),
        elapsed,
        events as f64 / elapsed
    );
    Ok(())
}

async fn proof_workload(args: &BenchArgs, channels: &[Conn]) -> anyhow::Result<()> {
    use proto::v1::audit_client::AuditClient;
    let mut audit = AuditClient::new(channels[0].clone());
    let head = audit.get_tree_head(pb::GetTreeHeadRequest {}).await?.into_inner().tree_head.context("no tree head")?;
    let size = head.tree_size;
    anyhow::ensure!(size > 0, "the log is empty: run a write workload first");
    let next = Arc::new(AtomicU64::new(0));
    let total = args.proofs;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.writers.max(1) {
        let mut client = AuditClient::new(channels[i % channels.len()].clone());
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies_us: Vec<u32> = Vec::new();
            let mut proof_bytes = 0u64;
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let position = rand::thread_rng().gen_range(0..size);
                let t = Instant::now();
                let p = client.get_inclusion_proof(pb::GetInclusionProofRequest { position, tree_size: size }).await?.into_inner();
                latencies_us.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                proof_bytes += p.hashes.iter().map(|h| h.len() as u64).sum::<u64>();
            }
            anyhow::Ok((latencies_us, proof_bytes))
        }));
    }
    let (mut all, mut bytes) = (Vec::new(), 0u64);
    for t in tasks {
        let (l, b) = t.await??;
        all.extend(l);
        bytes += b;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    println!(
        "proofs: {} inclusion proofs on a log of {size} events, {} clients: {:.0} proofs/s, latency p50 {:.3} ms, p99 {:.3} ms; mean proof {:.0} bytes (log2 of the size is {:.1}, so {} hashes of 32 bytes at most)",
        all.len(),
        args.writers,
        all.len() as f64 / elapsed,
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        bytes as f64 / all.len().max(1) as f64,
        (size as f64).log2(),
        64 - (size - 1).leading_zeros(),
    );
    Ok(())
}

/// A message event like the connectors write: a JSON payload of about 300 bytes.
fn message_event(i: u64, rng: &mut impl Rng) -> ledger::NewEvent {
    use ledger::types::{Direction, EventId, EventType, Metadata};
    let limits = ledger::Limits::default();
    let inbound = i % 5 != 4;
    let texts = ["Quero fazer uma reclamação, o produto chegou quebrado", "Hi! I'd like to book a table for two", "¿Cuál es el precio del plan anual?", "hola", "The app is not working, I need help"];
    let text = texts[rng.gen_range(0..texts.len())];
    let (event_type, direction, payload) = if inbound {
        let m = serde_json::json!({"schema": 1, "channel": "whatsapp", "direction": "inbound", "kind": "message", "provider_message_id": format!("wamid.{i}"),
            "account": "106540352242922", "channel_identity": format!("55119{:08}", rng.gen_range(0..100_000_000u64)), "sender_name": "Cliente",
            "message_type": "text", "text": text, "provider_timestamp_ms": 1_763_800_000_000i64 + i as i64});
        ("MessageReceived", Direction::Inbound, m)
    } else {
        ("MessageQueued", Direction::Outbound, serde_json::json!({"schema": 1, "channel": "whatsapp", "account": "106540352242922", "to": "5511900000000", "content": {"type": "text", "body": "Obrigado pela sua mensagem."}}))
    };
    ledger::NewEvent {
        event_id: EventId::new_random(),
        event_type: EventType::parse(event_type, "event_type", &limits).expect("valid"),
        channel: ledger::types::Channel::Whatsapp,
        direction,
        occurred_at: None,
        metadata: Metadata::new(),
        payload: serde_json::to_vec(&payload).expect("serializes"),
        schema_version: 1,
    }
}

/// Appends `count` inputs made by `make(n)`, `n` in `0..count`, from `writers` concurrent tasks.
async fn append_in_parallel(ledger: &ledger::Ledger, writers: usize, count: u64, make: impl Fn(u64) -> ledger::AppendInput + Send + Sync + 'static) -> anyhow::Result<()> {
    let (next, make) = (Arc::new(AtomicU64::new(0)), Arc::new(make));
    let mut tasks = Vec::new();
    for _ in 0..writers.max(1) {
        let (ledger, next, make) = (ledger.clone(), next.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return anyhow::Ok(());
                }
                ledger.append(make(n)).await.map_err(|e| anyhow::anyhow!("append: {e}"))?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn projections_workload(args: &BenchArgs) -> anyhow::Result<()> {
    use ledger::types::{CustomerId, ExpectedVersion, Region, StreamName};
    let tmp = tempfile::tempdir()?;
    let dir = args.data_dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    let region = Region::parse(&args.region, "region").map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = ledger::LedgerConfig::new(&dir, vec![region.clone()]);
    let (ledger, _) = tokio::task::spawn_blocking(move || ledger::Ledger::open(config)).await?.map_err(|e| anyhow::anyhow!("{e}"))?;
    let customers: Arc<Vec<CustomerId>> = Arc::new((0..args.customers.max(1)).map(|_| CustomerId::new_random()).collect());
    // 1. The log: W1b-style appends of `batch_events` message events per conversation.
    let per_append = args.batch_events.max(1) as u64;
    // A `--data-dir` that already holds a log this long is reused as it is (catch-up only).
    let appends = if ledger.committed_size() >= args.events {
        eprintln!("projections: reusing the log of {} events in {}", ledger.committed_size(), dir.display());
        0
    } else {
        args.events.div_ceil(per_append)
    };
    let _ = std::fs::remove_dir_all(dir.join("bench-projections"));
    let started = Instant::now();
    let (cs, r) = (customers.clone(), region.clone());
    append_in_parallel(&ledger, args.writers, appends, move |n| {
        if n % 1000 == 0 && n > 0 {
            eprintln!("projections: {} events appended", n * per_append);
        }
        let mut rng = rand::thread_rng();
        ledger::AppendInput {
            customer: cs[(n as usize) % cs.len()],
            region: Some(r.clone()),
            stream: StreamName::parse(&format!("conv.whatsapp.{:016x}", n % (cs.len() as u64 * 2)), "stream", &ledger::Limits::default()).expect("valid"),
            expected: ExpectedVersion::Any,
            events: (0..per_append).map(|i| message_event(n * per_append + i, &mut rng)).collect(),
        }
    })
    .await?;
    let size = ledger.committed_size();
    eprintln!("projections: log of {size} events written in {:.1} s", started.elapsed().as_secs_f64());

    // 2. Catch-up from zero, all three views in one pass.
    let runner = projections::Runner::open_at(ledger.clone(), &dir.join("bench-projections"), &projections::VIEWS)?;
    let views: Vec<Arc<dyn projections::View>> = projections::VIEWS.iter().filter_map(|n| projections::view_named(n)).collect();
    let r = runner.clone();
    let vs = views.clone();
    let started = Instant::now();
    let applied = tokio::task::spawn_blocking(move || {
        let refs: Vec<&dyn projections::View> = vs.iter().map(|v| v.as_ref()).collect();
        r.catch_up_group(&refs, &mut |p| {
            if p % 131_072 < projections::APPLY_CHUNK_EVENTS as u64 {
                eprintln!("projections: caught up to {p}");
            }
            Ok(())
        })
    })
    .await??;
    let secs = started.elapsed().as_secs_f64();
    println!("projections catch-up: {applied} events into audit+crm+routing from zero in {secs:.2} s: {:.0} events/s", applied as f64 / secs);

    // 3. Live: W1-style single-event appends with the views following; the delay from an event's
    // recorded time to its view commit, per event.
    let delays: Arc<std::sync::Mutex<Vec<u32>>> = Arc::default();
    let sink = delays.clone();
    runner.set_probe(Some(Box::new(move |events, now| {
        let mut d = sink.lock().expect("probe");
        d.extend(events.iter().map(|e| u32::try_from((now - e.header.recorded_at.0).max(0)).unwrap_or(u32::MAX)));
    })));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let follower = tokio::spawn(runner.clone().follow(views, stop_rx));
    let live_events = (args.events / 5).max(1000);
    let started = Instant::now();
    append_in_parallel(&ledger, args.writers, live_events, move |n| {
        let mut rng = rand::thread_rng();
        let customer = customers[rng.gen_range(0..customers.len())];
        ledger::AppendInput {
            customer,
            region: Some(region.clone()),
            stream: StreamName::parse(&format!("conv.live.{}", &customer.to_string()[..8]), "stream", &ledger::Limits::default()).expect("valid"),
            expected: ExpectedVersion::Any,
            events: vec![message_event(n, &mut rng)],
        }
    })
    .await?;
    let append_secs = started.elapsed().as_secs_f64();
    // Let the views drain the tail.
    let target = ledger.committed_size();
    while runner.checkpoint(projections::ROUTING_VIEW)? < target {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    let _ = follower.await;
    let mut d = std::mem::take(&mut *delays.lock().expect("probe"));
    d.sort_unstable();
    let pct = |p: f64| d.get(((d.len() as f64 * p) as usize).min(d.len().saturating_sub(1))).copied().unwrap_or(0);
    println!(
        "projections live: {live_events} single-event appends by {} writers at {:.0} events/s; commit-to-view delay over {} events: p50 {} ms, p99 {} ms, max {} ms",
        args.writers,
        live_events as f64 / append_secs,
        d.len(),
        pct(0.50),
        pct(0.99),
        pct(1.0),
    );
    ledger.shutdown().await;
    Ok(())
}
