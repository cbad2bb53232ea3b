//! TLS for both ports (rustls with the ring provider), and the principal a client certificate
//! names.
//!
//! A client certificate authenticates a gRPC caller when the server has a client CA: the
//! subject's common name is the principal's name, each `OU` value naming a role (`appender`,
//! `reader`, `auditor`, `dpo`, `admin`) grants it, and each `region:<r>` value scopes the
//! principal to that region (no `region:` value: every region). Values may be given as several
//! `OU` attributes or comma-separated in one. Certificates from another CA, expired ones and
//! revoked ones (with `client_crl`) fail the handshake.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ledger::types::Region;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use ledger::access::AccessRecord;
use ledger::Ledger;
use tokio::net::{TcpListener, TcpStream};

use crate::security::{Principal, Role};
use crate::serve::config::TlsConfig;

/// The gRPC port's TLS acceptor: the server's identity and, if configured, the client CA (and
/// its revocation lists) that client certificates are verified against.
pub fn grpc(config: &TlsConfig) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let verifier = match &config.client_ca {
        None => None,
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(ca)? {
                roots.add(cert).with_context(|| format!("tls.client_ca {}: not a usable CA certificate", ca.display()))?;
            }
            let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            if !config.require_client_cert {
                verifier = verifier.allow_unauthenticated();
            }
            if let Some(crl) = &config.client_crl {
                let crls = rustls_pki_types::CertificateRevocationListDer::pem_file_iter(crl)
                    .with_context(|| format!("reading tls.client_crl {}", crl.display()))?
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| format!("parsing tls.client_crl {}", crl.display()))?;
                verifier = verifier.with_crls(crls);
            }
            Some(verifier.build().context("building the client certificate verifier")?)
        }
    };
    acceptor(config, verifier, &[b"h2"])
}

/// The HTTP port's TLS acceptor (no client certificates: webhooks authenticate by signature,
/// `/metrics` by bearer token).
pub fn http(config: &TlsConfig) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    acceptor(config, None, &[b"h2", b"http/1.1"])
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An acceptor serving `config`'s certificate, verifying client certificates with `verifier`
/// (if any), offering `alpn`.
fn acceptor(
    config: &TlsConfig,
    verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    alpn: &[&[u8]],
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let builder = rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().context("TLS protocol versions")?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(certificates(&config.cert)?, private_key(&config.key)?).context("the TLS certificate and key do not match")?;
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

/// The gRPC port's connections: accepted, each handshake on its own task within `handshake`
/// (a stalled client holds only itself), the established ones passed on. A failed handshake
/// (no certificate where one is required, another CA's, an expired or revoked one) is a failed
/// authentication: it is recorded in the access trail, at most once a second per client
/// address with the count it stands for, so a flood of bad handshakes is not a flood of writes.
pub fn incoming(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handshake: Duration,
    ledger: Ledger,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let failures = Arc::new(crate::security::quota::Coalesce::default());
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = accept(&listener, "gRPC") => accepted,
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, ledger, failures) = (acceptor.clone(), tx.clone(), ledger.clone(), failures.clone());
            tokio::spawn(async move {
                let why = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                        return;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "TLS handshake timed out".to_owned(),
                };
                metrics::counter!("ledger_tls_handshake_failures_total").increment(1);
                if let Some(count) = failures.due(&peer.ip().to_string()) {
                    let record = AccessRecord::granted("anonymous", "tls/handshake", &peer.to_string()).param("failed_handshakes", count);
                    crate::security::record_refusal(&ledger, record, ledger::ErrorCode::Unauthenticated, Some(why)).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The next connection on `listener`. Accept errors (out of file descriptors, most likely) are
/// logged and retried after a pause rather than in a spin.
pub async fn accept(listener: &TcpListener, port: &str) -> (TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(error = %e, port, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no PEM certificate in {}", path.display());
    Ok(certs)
}

fn private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    // The error names the file only: key material never reaches a message.
    PrivateKeyDer::from_pem_file(path).map_err(|_| anyhow::anyhow!("no readable PEM private key in {}", path.display()))
}

/// The principal a verified client certificate (DER) names.
pub fn principal_from_certificate(der: &[u8]) -> Result<Principal, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| "the client certificate cannot be parsed".to_owned())?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .filter(|s| !s.trim().is_empty())
        .ok_or("the client certificate's subject has no common name to name the principal")?;
    let mut roles = Vec::new();
    let mut regions = Vec::new();
    let values = subject.iter_organizational_unit().filter_map(|ou| ou.as_str().ok()).flat_map(|v| v.split(',')).map(str::trim);
    for value in values {
        if let Some(region) = value.strip_prefix("region:") {
            Region::parse(region, "region").map_err(|e| format!("the client certificate's OU {value:?}: {e}"))?;
            regions.push(region.to_owned());
        } else if let Ok(role) = Role::parse(value) {
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        // Other OU values (an organisation's own) mean nothing here.
    }
    Ok(Principal { name: name.to_owned(), roles, regions: (!regions.is_empty()).then_some(regions) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate whose subject has `cn` and up to two `OU` attributes.
    fn cert_with(cn: Option<&str>, ous: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        // rcgen keeps one value per attribute type; the OU's OID spelled as a custom type is a
        // second OU attribute in the encoded name.
        let types = [rcgen::DnType::OrganizationalUnitName, rcgen::DnType::CustomDnType(vec![2, 5, 4, 11])];
        assert!(ous.len() <= types.len());
        for (ou, t) in ous.iter().zip(types) {
            params.distinguished_name.push(t, *ou);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_subject_names_the_principal_its_roles_and_regions() {
        let p = principal_from_certificate(&cert_with(Some("crm-sync"), &["reader, Engineering", "region:eu,appender"])).unwrap();
        let mut roles = p.roles.clone();
        roles.sort();
        assert_eq!((p.name.as_str(), roles, p.regions), ("crm-sync", vec![Role::Appender, Role::Reader], Some(vec!["eu".to_owned()])));
        let p = principal_from_certificate(&cert_with(Some("ops"), &["admin"])).unwrap();
        assert_eq!(p.regions, None);
        assert!(principal_from_certificate(&cert_with(None, &["admin"])).unwrap_err().contains("common name"));
        assert!(principal_from_certificate(&cert_with(Some("x"), &["region:EU!"])).is_err());
        assert!(principal_from_certificate(b"not a certificate").is_err());
    }
}
