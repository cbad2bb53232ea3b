//! TLS and mutual TLS end to end, with a test certificate authority made here: a client
//! certificate names the principal, its roles and region scopes; clients without a certificate
//! need a token (or are refused outright with `--tls-require-client-cert`); certificates from
//! another CA, expired ones and revoked ones fail the handshake, and those failures are in the
//! access trail. The HTTP port serves TLS with the same certificate, and the CLI reaches an
//! `https://` target.

mod common;
use common::*;
use proto::v1 as pb;
use proto::v1::admin_client::AdminClient;
use proto::v1::ledger_client::LedgerClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A test PKI in a temporary directory: a CA, the server's certificate for 127.0.0.1, and a CRL.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

/// A client's certificate and key, PEM.
struct ClientCert {
    cert: String,
    key: String,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params("ledger test CA").self_signed(&ca_key).unwrap();
        let pki = Pki { dir, ca, ca_key };
        let mut server = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        server.subject_alt_names.push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        server.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server = server.signed_by(&server_key, &pki.ca, &pki.ca_key).unwrap();
        pki.write("ca.pem", &pki.ca.pem());
        pki.write("server.pem", &server.pem());
        pki.write("server.key", &server_key.serialize_pem());
        pki
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join(name), text).unwrap();
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A client certificate for `name` with `ou`, serial `serial`, valid now unless `expired`.
    fn client(&self, name: &str, ou: &str, serial: u64, expired: bool) -> ClientCert {
        client_cert(name, ou, serial, expired, &self.ca, &self.ca_key)
    }

    /// Writes a CRL revoking `serials`.
    fn revoke(&self, serials: &[u64]) {
        let crl = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2026, 1, 1),
            next_update: rcgen::date_time_ymd(2040, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2026, 1, 2),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.ca, &self.ca_key)
        .unwrap();
        self.write("crl.pem", &crl.pem().unwrap());
    }
}

fn ca_params(name: &str) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign, rcgen::KeyUsagePurpose::DigitalSignature];
    params
}

fn client_cert(name: &str, ou: &str, serial: u64, expired: bool, ca: &rcgen::Certificate, ca_key: &rcgen::KeyPair) -> ClientCert {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.distinguished_name.push(rcgen::DnType::OrganizationalUnitName, ou);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.serial_number = Some(rcgen::SerialNumber::from(serial));
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca, ca_key).unwrap();
    ClientCert { cert: cert.pem(), key: key.serialize_pem() }
}

/// A TLS channel to `server` trusting `ca_pem`, presenting `client` if given, sending `token`.
async fn connect(server: &Server, ca_pem: &str, client: Option<&ClientCert>, token: Option<&str>) -> Result<Conn, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    if let Some(c) = client {
        tls = tls.identity(Identity::from_pem(&c.cert, &c.key));
    }
    let channel = Channel::from_shared(format!("https://{}", server.grpc_addr)).unwrap().tls_config(tls)?.connect().await?;
    Ok(InterceptedService::new(channel, Bearer(token.map(str::to_owned))))
}

/// Whether a call over a channel presenting `client` gets through the handshake: the connection
/// or the first call fails at the transport (never with an application status) when it does not.
async fn handshake_refused(server: &Server, ca_pem: &str, client: Option<&ClientCert>, token: Option<&str>) -> bool {
    let Ok(conn) = connect(server, ca_pem, client, token).await else { return true };
    let mut admin = AdminClient::new(conn);
    match admin.list_tokens(pb::ListTokensRequest {}).await {
        Ok(_) => false,
        Err(status) => {
            assert!(
                !matches!(status.code(), tonic::Code::PermissionDenied | tonic::Code::Unauthenticated),
                "refused by the application, not the handshake: {status:?}"
            );
            true
        }
    }
}

fn tls_args(pki: &Pki) -> Vec<String> {
    ["--tls-cert", &pki.path("server.pem"), "--tls-key", &pki.path("server.key"), "--tls-client-ca", &pki.path("ca.pem"), "--tls-client-crl", &pki.path("crl.pem")]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

async fn append_for(client: &mut LedgerClient<Conn>, customer: &str, region: &str) {
    let mut req = append_req(customer, "s", vec![proposed(b"{\"text\":\"hi\"}")]);
    req.region = region.into();
    client.append(req).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_the_principal_its_roles_and_regions() {
    let pki = Pki::new();
    pki.revoke(&[99]);
    let args = tls_args(&pki);
    let server = Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(server.logs().contains("tls=on, client certificates or tokens"), "{}", server.logs());
    let ca = pki.ca_pem();

    // Tokens still work over TLS, without a client certificate.
    let mut admin = LedgerClient::new(connect(&server, &ca, None, Some(&server.admin_token())).await.unwrap());
    let (eu, us) = (new_id(), new_id());
    append_for(&mut admin, &eu, "eu").await;
    append_for(&mut admin, &us, "us").await;

    // A reader scoped to eu, by certificate alone.
    let reader = pki.client("crm-sync", "reader,region:eu", 10, false);
    let mut client = LedgerClient::new(connect(&server, &ca, Some(&reader), None).await.unwrap());
    assert_eq!(read_stream(&mut client, &eu, "s").await.len(), 1);
    let denied = client.read_stream(pb::ReadStreamRequest { customer_id: us.clone(), stream: "s".into(), max_count: 10, ..Default::default() }).await;
    assert_eq!(denied.unwrap_err().code(), tonic::Code::PermissionDenied);
    let denied = client.append(append_req(&eu, "s", vec![proposed(b"{}")])).await;
    assert_eq!(denied.unwrap_err().code(), tonic::Code::PermissionDenied);

    // An admin certificate works where the reader's did not.
    let ops = pki.client("ops", "admin", 11, false);
    let mut ops_admin = AdminClient::new(connect(&server, &ca, Some(&ops), None).await.unwrap());
    ops_admin.list_tokens(pb::ListTokensRequest {}).await.unwrap();

    // No certificate and no token: refused by the application, and recorded.
    let mut anonymous = AdminClient::new(connect(&server, &ca, None, None).await.unwrap());
    assert_eq!(anonymous.list_tokens(pb::ListTokensRequest {}).await.unwrap_err().code(), tonic::Code::Unauthenticated);

    // Another CA's certificate, an expired one and a revoked one fail the handshake.
    let other_key = rcgen::KeyPair::generate().unwrap();
    let other_ca = ca_params("someone else's CA").self_signed(&other_key).unwrap();
    let stranger = client_cert("ops", "admin", 12, false, &other_ca, &other_key);
    assert!(handshake_refused(&server, &ca, Some(&stranger), None).await);
    assert!(handshake_refused(&server, &ca, Some(&pki.client("ops", "admin", 13, true)), None).await);
    assert!(handshake_refused(&server, &ca, Some(&pki.client("ops", "admin", 99, false)), None).await);
    // A plaintext client gets nothing from a TLS port.
    let plain = Channel::from_shared(format!("http://{}", server.grpc_addr)).unwrap().connect().await;
    if let Ok(plain) = plain {
        let mut c = AdminClient::new(InterceptedService::new(plain, Bearer(Some(server.admin_token()))));
        assert!(c.list_tokens(pb::ListTokensRequest {}).await.is_err());
    }

    // The trail names the certificate principals and holds the refusals, the failed handshakes
    // among them (coalesced per client address and second, so at least one).
    let records: Vec<ledger::access::AccessRecord> = read_all(&mut admin)
        .await
        .into_iter()
        .filter(|e| e.stream == ledger::access::ACCESS_STREAM)
        .map(|e| serde_json::from_slice(&e.payload).unwrap())
        .collect();
    assert!(records.iter().any(|r| r.principal == "crm-sync" && r.action == "ledger.v1.Ledger/ReadStream" && r.outcome == "ledger.permission_denied"));
    assert!(records.iter().any(|r| r.principal == "crm-sync" && r.action == "ledger.v1.Ledger/Append" && r.outcome == "ledger.permission_denied"));
    assert!(records.iter().any(|r| r.principal == "anonymous" && r.action == "ledger.v1.Admin/ListTokens" && r.outcome == "ledger.unauthenticated"));
    let handshakes: Vec<_> = records.iter().filter(|r| r.action == "tls/handshake").collect();
    assert!(!handshakes.is_empty(), "failed handshakes are recorded");
    assert!(handshakes.iter().all(|r| r.outcome == "ledger.unauthenticated" && r.origin.starts_with("127.0.0.1:")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_client_certificate_refuses_token_only_clients_and_https_serves_the_http_port() {
    let pki = Pki::new();
    pki.revoke(&[]);
    let mut args = tls_args(&pki);
    args.push("--tls-require-client-cert".into());
    let server = Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let ca = pki.ca_pem();
    assert!(handshake_refused(&server, &ca, None, Some(&server.admin_token())).await);
    let ops = pki.client("ops", "admin", 20, false);
    let mut admin = AdminClient::new(connect(&server, &ca, Some(&ops), None).await.unwrap());
    admin.list_tokens(pb::ListTokensRequest {}).await.unwrap();

    // The CLI reaches an https:// target with the CA and a client certificate from the
    // environment (and picks up no admin token file behind the user's back).
    pki.write("ops.pem", &ops.cert);
    pki.write("ops.key", &ops.key);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ledgerd"))
        .args(["keys", "list", "--region", "eu", "--target", &format!("https://{}", server.grpc_addr)])
        .env("LEDGER_TLS_CA", pki.path("ca.pem"))
        .env("LEDGER_TLS_CLIENT_CERT", pki.path("ops.pem"))
        .env("LEDGER_TLS_CLIENT_KEY", pki.path("ops.key"))
        .env_remove("LEDGER_TOKEN")
        .env_remove("LEDGER_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("region eu KEK v1 (current)"), "{}", text(&o));

    // The HTTP port: TLS with the same certificate; /metrics still wants a token.
    let https = reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()).build().unwrap();
    let base = format!("https://{}", server.http_addr);
    let r = https.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(https.get(format!("{base}/metrics")).send().await.unwrap().status(), 401);
    let r = https.get(format!("{base}/metrics")).bearer_auth(server.admin_token()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("ledger_committed_position"));
    // Plaintext HTTP to the TLS port gets no answer.
    let plain = reqwest::get(format!("http://{}/healthz", server.http_addr)).await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}
