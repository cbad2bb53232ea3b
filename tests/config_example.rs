//! `ledgerd.example.toml` is what operators copy: with every optional block uncommented as shown
//! (TLS, a named principal's quotas, an erasure downstream, one account of every channel, routing
//! rules), it must parse and the server must start on it. Only what points at files is replaced,
//! with real files made here (a CA, a server certificate and a CRL; the test Teams JWKS; the
//! embedded routing rules); every other line is the example's own.

mod common;
use std::path::Path;

use common::*;

/// The example with every commented-out setting line (`# key = ...`) and table header
/// (`# [table]`, `# [[array]]`) uncommented; prose comments stay.
fn uncommented_example() -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ledgerd.example.toml")).unwrap();
    text.lines()
        .map(|line| {
            let Some(rest) = line.strip_prefix("# ") else { return line.to_owned() };
            let setting = rest.starts_with('[')
                || rest.split_once(" = ").is_some_and(|(key, _)| !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            if setting { rest.to_owned() } else { line.to_owned() }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Replaces the value of `key = "..."` lines whose value is `from` with `to`.
fn point(text: &str, key: &str, from: &str, to: &str) -> String {
    let from_line = format!("{key} = \"{from}\"");
    assert!(text.contains(&from_line), "the example no longer has {from_line}");
    text.replace(&from_line, &format!("{key} = \"{to}\""))
}

#[test]
fn the_example_with_every_block_uncommented_parses_and_starts() {
    let text = uncommented_example();
    for block in ["[tls]", "[[quotas.principal]]", "[[erasure.downstream]]", "[[connectors.whatsapp]]", "[[connectors.slack]]", "[[connectors.twilio]]", "[[connectors.teams]]", "[[connectors.email]]"] {
        assert!(text.lines().any(|l| l.trim() == block), "{block} is not in the example");
    }
    assert!(text.contains("\nrules = "), "the routing rules line is uncommented");
    // Files the example points at, made real.
    let files = tempfile::tempdir().unwrap();
    let f = |name: &str| files.path().join(name).to_str().unwrap().to_owned();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "example CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let mut server = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    server.subject_alt_names.push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = server.signed_by(&server_key, &ca, &ca_key).unwrap();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2026, 1, 1),
        next_update: rcgen::date_time_ymd(2040, 1, 1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&ca, &ca_key)
    .unwrap();
    std::fs::write(f("server.pem"), server.pem()).unwrap();
    std::fs::write(f("server.key"), server_key.serialize_pem()).unwrap();
    std::fs::write(f("ca.pem"), ca.pem()).unwrap();
    std::fs::write(f("ca.crl"), crl.pem().unwrap()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let d = |name: &str| data.path().join(name).to_str().unwrap().to_owned();
    let mut text = point(&text, "data_dir", "./data", &d(""));
    text = point(&text, "keyring", "./data/keyring.json", &d("keyring.json"));
    text = point(&text, "signing_key", "./data/signing.key", &d("signing.key"));
    text = point(&text, "cert", "/etc/ledgerd/server.pem", &f("server.pem"));
    text = point(&text, "key", "/etc/ledgerd/server.key", &f("server.key"));
    text = point(&text, "client_ca", "/etc/ledgerd/clients-ca.pem", &f("ca.pem"));
    text = point(&text, "client_crl", "/etc/ledgerd/clients-ca.crl", &f("ca.crl"));
    let jwks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/teams/jwks.json");
    text = point(&text, "jwks_path", "/etc/ledgerd/botframework-jwks.json", jwks.to_str().unwrap());
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/routing.toml");
    text = point(&text, "rules", "routing.toml", rules.to_str().unwrap());
    let config = files.path().join("ledgerd.toml");
    std::fs::write(&config, &text).unwrap();

    let mut server = Server::start_in(data.path(), &["--config", config.to_str().unwrap()]);
    assert!(server.logs().contains("tls=on, client certificates or tokens"), "{}", server.logs());
    let status = server.terminate();
    assert!(status.success(), "ledgerd exited with {status:?}");
}
