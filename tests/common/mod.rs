//! A `ledgerd` child process for end-to-end tests: started on free loopback ports with its own
//! temporary data directory, its stderr captured, killed and cleaned up on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use proto::v1 as pb;
use proto::v1::ledger_client::LedgerClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A channel whose calls carry a bearer token.
pub type Conn = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to every call (or nothing, for `Bearer(None)`).
#[derive(Clone)]
pub struct Bearer(pub Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            request.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        Ok(request)
    }
}

pub struct Server {
    pub child: Child,
    pub grpc_addr: String,
    pub http_addr: String,
    pub data_dir: PathBuf,
    pub logs: Arc<Mutex<String>>,
    /// Secrets this server was configured with, which its log must never show.
    pub secrets: Vec<String>,
    _owned_dir: Option<tempfile::TempDir>,
    _canary_dir: Option<tempfile::TempDir>,
    /// The thread copying the server's stderr into `logs`; it ends when the server exits.
    reader: Option<std::thread::JoinHandle<()>>,
}

/// The canary secrets every server without a test's own configuration is started with.
pub const CANARY_APP_SECRET: &str = "canary-app-secret-7f3a9c1e5b";
pub const CANARY_VERIFY_TOKEN: &str = "canary-verify-token-2d8e4f6a0c";

/// Every secret-looking value (`*secret*`, `*token*`, `*key*` fields of 8 characters or more) in a
/// configuration file. File paths (`key`, `signing_key`, `keyring`) name where a secret is, not the
/// secret, and the server may log them.
fn configured_secrets(config: &Path) -> Vec<String> {
    fn walk(v: &toml::Value, key: &str, out: &mut Vec<String>) {
        match v {
            toml::Value::String(s) if s.starts_with('/') || s.starts_with("./") => {}
            toml::Value::String(s) if s.len() >= 8 && ["secret", "token", "key"].iter().any(|k| key.contains(k)) => out.push(s.clone()),
            toml::Value::Table(t) => t.iter().for_each(|(k, v)| walk(v, k, out)),
            toml::Value::Array(a) => a.iter().for_each(|v| walk(v, key, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(config).unwrap_or_default();
    let mut out = Vec::new();
    if let Ok(v) = text.parse::<toml::Value>() {
        walk(&v, "", &mut out);
    }
    out
}

impl Server {
    /// Starts a server on a fresh data directory.
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let mut s = Server::start_in(&path, extra);
        s._owned_dir = Some(dir);
        s
    }

    /// Starts a server on an existing data directory (which the caller owns).
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(data_dir, extra, &[])
    }

    /// Starts a server with extra environment variables (`LEDGER_LOG` among them, to raise the
    /// log level). Without a `--config` of the test's own it gets one holding canary channel
    /// secrets; either way its log is checked for every configured secret and every bearer
    /// token when it is dropped.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let regions: &[&str] = if extra.contains(&"--regions") { &[] } else { &["--regions", "eu,us"] };
        let mut canary_dir = None;
        let config_path = match extra.iter().position(|a| *a == "--config") {
            Some(i) => PathBuf::from(extra[i + 1]),
            None => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("canary.toml");
                canary_dir = Some(dir);
                std::fs::write(
                    &path,
                    format!(
                        "[[connectors.whatsapp]]\nphone_number_id = \"100000000000001\"\napp_secret = \"{CANARY_APP_SECRET}\"\n\
                         verify_token = \"{CANARY_VERIFY_TOKEN}\"\nregion = \"eu\"\n"
                    ),
                )
                .unwrap();
                path
            }
        };
        let own_config: &[&str] = if extra.contains(&"--config") { &[] } else { &["--config", config_path.to_str().unwrap()] };
        let mut command = Command::new(env!("CARGO_BIN_EXE_ledgerd"));
        command
            .args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(regions)
            .arg("--data-dir")
            .arg(data_dir)
            .args(own_config)
            .args(extra)
            .env_remove("LEDGER_CONFIG")
            .env("LEDGER_LOG", "info");
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ledgerd");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let sink = logs.clone();
        let reader = std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Kept before readiness is signalled, so a test sees the ready line in the log.
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
                if line.contains("ledger ready") {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(Ok((field(&line, "grpc_addr="), field(&line, "http_addr="))));
                    }
                }
                if line.contains("refusing to serve") || line.starts_with("Error") {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(Err(line.clone()));
                    }
                }
            }
            if let Some(tx) = ready_tx.take() {
                let _ = tx.send(Err("ledgerd exited before it was ready".into()));
            }
        });
        let (grpc_addr, http_addr) = match ready_rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(addrs)) => addrs,
            Ok(Err(e)) => {
                let _ = child.kill();
                panic!("ledgerd did not start: {e}\n{}", logs.lock().unwrap());
            }
            Err(_) => {
                let _ = child.kill();
                panic!("ledgerd not ready in time\n{}", logs.lock().unwrap());
            }
        };
        let secrets = configured_secrets(&config_path);
        Server { child, grpc_addr, http_addr, data_dir: data_dir.to_owned(), logs, secrets, _owned_dir: None, _canary_dir: canary_dir, reader: Some(reader) }
    }

    /// Panics if the log shows a configured secret or anything shaped like a bearer token.
    pub fn assert_log_holds_no_secrets(&self) {
        let logs = self.logs();
        for secret in &self.secrets {
            assert!(!logs.contains(secret.as_str()), "a configured secret appears in the server log");
        }
        if let Ok(admin) = std::fs::read_to_string(self.data_dir.join("admin.token")) {
            assert!(!logs.contains(admin.trim()), "the admin token appears in the server log");
        }
        // Every token the server issues starts `ldg_` and carries 64 hex digits.
        let leaked = logs.match_indices("ldg_").any(|(i, _)| logs[i + 4..].chars().take(16).filter(|c| c.is_ascii_hexdigit()).count() == 16);
        assert!(!leaked, "a bearer token appears in the server log");
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// The admin token the server wrote on its first start.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token")).expect("admin.token").trim().to_owned()
    }

    /// A channel authenticated as `token` (`None`: no credentials).
    pub async fn channel_as(&self, token: Option<&str>) -> Conn {
        let channel = Channel::from_shared(self.endpoint()).unwrap().connect().await.expect("connect");
        InterceptedService::new(channel, Bearer(token.map(str::to_owned)))
    }

    /// A channel authenticated with the admin token (every role, every region).
    pub async fn channel(&self) -> Conn {
        self.channel_as(Some(&self.admin_token())).await
    }

    pub async fn client(&self) -> LedgerClient<Conn> {
        LedgerClient::new(self.channel().await).max_decoding_message_size(64 * 1024 * 1024)
    }

    /// Runs the `ledgerd` CLI against this server with its admin token (`--target` is added).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_ledgerd"))
            .args(args)
            .args(["--target", &self.endpoint()])
            .env("LEDGER_TOKEN_FILE", self.data_dir.join("admin.token"))
            .env_remove("LEDGER_TOKEN")
            .output()
            .unwrap()
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -TERM failed");
        self.child.wait().unwrap()
    }

    /// A plain HTTP/1.1 GET against the HTTP port, with the admin token: (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        self.http_get_as(path, Some(&self.admin_token()))
    }

    /// A plain HTTP/1.1 GET with `token` as its bearer (or none): (status, body).
    pub fn http_get_as(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(&self.http_addr).unwrap();
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Suite-wide: no test's server may have logged a secret. (Not while already panicking:
        // that would abort and hide the first failure.)
        if !std::thread::panicking() {
            // The whole log: the reader ends at the exited server's end of file.
            if let Some(reader) = self.reader.take() {
                let _ = reader.join();
            }
            self.assert_log_holds_no_secrets();
        }
    }
}

fn field(line: &str, key: &str) -> String {
    let start = line.find(key).unwrap_or_else(|| panic!("no {key} in ready line: {line}")) + key.len();
    line[start..].split_whitespace().next().unwrap().to_owned()
}

/// Runs the `ledgerd` binary with `args` and waits for it.
pub fn ledgerd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ledgerd")).args(args).output().unwrap()
}

/// A command's stdout and stderr, for assertions and failure messages.
pub fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The C2SP verifier key `ledgerd audit public-key` prints for a data directory.
pub fn public_key(data_dir: &Path) -> String {
    let out = ledgerd(&["audit", "public-key", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub fn proposed(payload: &[u8]) -> pb::ProposedEvent {
    pb::ProposedEvent {
        event_id: new_id(),
        event_type: "MessageReceived".into(),
        channel: pb::Channel::Whatsapp as i32,
        direction: pb::Direction::Inbound as i32,
        payload: payload.to_vec(),
        ..Default::default()
    }
}

pub fn append_req(customer: &str, stream: &str, events: Vec<pb::ProposedEvent>) -> pb::AppendRequest {
    pb::AppendRequest { customer_id: customer.into(), region: "eu".into(), stream: stream.into(), expected_version: None, events }
}

pub fn exact(v: u64) -> Option<pb::ExpectedVersion> {
    Some(pb::ExpectedVersion { kind: Some(pb::expected_version::Kind::Exact(v)) })
}

pub fn no_stream() -> Option<pb::ExpectedVersion> {
    Some(pb::ExpectedVersion { kind: Some(pb::expected_version::Kind::NoStream(pb::expected_version::NoStream {})) })
}

/// Reads the whole log through ReadAll.
pub async fn read_all(client: &mut LedgerClient<Conn>) -> Vec<pb::RecordedEvent> {
    let mut stream = client.read_all(pb::ReadAllRequest { from_position: 0, max_count: 0, filter: None }).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        out.extend(msg.events);
    }
    out
}

/// Reads the whole log through ReadAll, leaving out the ledger's own system events (the access
/// records that every decrypting read, this one included, appends).
pub async fn read_customer_events(client: &mut LedgerClient<Conn>) -> Vec<pb::RecordedEvent> {
    read_all(client).await.into_iter().filter(|e| !e.customer_id.parse().is_ok_and(|c: uuid::Uuid| ledger::access::is_system_customer(ledger::types::CustomerId(c)))).collect()
}

pub async fn read_stream(client: &mut LedgerClient<Conn>, customer: &str, stream: &str) -> Vec<pb::RecordedEvent> {
    let req = pb::ReadStreamRequest { customer_id: customer.into(), stream: stream.into(), max_count: 1000, ..Default::default() };
    let mut s = client.read_stream(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(msg) = s.message().await.unwrap() {
        out.extend(msg.events);
    }
    out
}

/// The RFC 9162 root over leaf hashes, computed independently of the server's incremental code.
pub fn root_of(leaves: &[[u8; 32]]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    match leaves.len() {
        0 => Sha256::digest(b"").into(),
        1 => leaves[0],
        n => {
            let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
            let mut h = Sha256::new();
            h.update([1u8]);
            h.update(root_of(&leaves[..k]));
            h.update(root_of(&leaves[k..]));
            h.finalize().into()
        }
    }
}

/// A raw HTTP/1.1 POST to the server's HTTP port with extra headers; returns the status code.
pub fn http_post(server: &Server, path: &str, headers: &[(&str, String)], body: &str) -> u16 {
    let mut s = std::net::TcpStream::connect(&server.http_addr).unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(s, "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// POSTs a WhatsApp webhook body signed with `app_secret`; it must be acknowledged with 200.
pub fn post_whatsapp_signed(server: &Server, app_secret: &str, body: &str) {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(app_secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(http_post(server, "/webhooks/whatsapp", &[("X-Hub-Signature-256", sig)], body), 200);
}

/// Every file under `dir` that contains `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(path);
                }
            }
        }
    }
    hits
}

/// Every gRPC method path the server describes (`/ledger.v1.Ledger/Append`, ...), from the
/// descriptor set: matrices check they list them all.
pub fn all_method_paths() -> Vec<String> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(proto::v1::FILE_DESCRIPTOR_SET).unwrap();
    set.file
        .iter()
        .flat_map(|f| f.service.iter().flat_map(move |s| s.method.iter().map(move |m| format!("/{}.{}/{}", f.package(), s.name(), m.name()))))
        .collect()
}

/// A raw HTTP/1.1 request; returns (status, body).
pub fn http_request(server: &Server, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(&server.http_addr).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text.split_whitespace().nth(1).unwrap_or("0").parse().unwrap();
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}
