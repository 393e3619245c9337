//! Whether a TLS coordinator requires a client certificate, found by a handshake of our own.
//!
//! A TLS 1.3 server that wants a client certificate refuses a client without one only after the
//! client has finished its side of the handshake; its `certificate_required` alert then races the
//! connection's reset, and on a loaded machine the client often sees only "connection closed",
//! which reads like a coordinator that went away (CI, 2026-12-01). The server's
//! CertificateRequest, on the other hand, arrives inside the handshake, before anything can be
//! reset. So when a call without a client certificate ends in a closed connection, the client
//! makes one more handshake, with a certificate resolver that notes whether it was asked, and
//! names the cause from that, after waiting a moment for the server's verdict on a client with no
//! certificate (see `requires_client_certificate`). Used only to explain a failure: it never
//! carries a call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::rustls::client::ResolvesClientCert;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;

/// How long the whole probe (TCP connect and handshake) may take.
const PROBE_DEADLINE: Duration = Duration::from_secs(5);

/// A client-certificate resolver that has no certificate and notes whether the server asked.
#[derive(Debug, Default)]
struct AskedForCertificate(AtomicBool);

impl ResolvesClientCert for AskedForCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.store(true, Ordering::SeqCst);
        None
    }

    /// True so that rustls consults `resolve` whenever the server sends a CertificateRequest.
    fn has_certs(&self) -> bool {
        true
    }
}

/// The trust and name settings of the failed call, for the probe's own handshake.
#[derive(Clone, Debug)]
pub struct ProbeSettings {
    /// `https://HOST:PORT` of the coordinator.
    pub endpoint: String,
    /// The CA (PEM) the coordinator's certificate chains to; None: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The name to check the coordinator's certificate against, if not the endpoint's host.
    pub domain: Option<String>,
}

/// How long the probe waits, after its handshake, for a server that asked for a certificate to
/// close the connection on a client that gave none; a server that waits for the client's first
/// bytes instead takes the certificate as optional.
const VERDICT_WAIT: Duration = Duration::from_secs(2);

/// Whether the coordinator at `settings.endpoint` requires a client certificate: Some(true) when
/// its handshake asked for one and it then closed the connection of the probe, which gave none;
/// Some(false) when it did not ask, or asked and kept the connection open (optional client
/// authentication); None when the probe could not tell (no connection, a failed handshake, the
/// deadline of 5 s).
///
/// The probe sends no application data, so a server that refuses it closes a connection with
/// nothing unread and its alert or end of stream arrives (a reset, which loses the alert, comes
/// from closing with unread data, as with a real client's HTTP/2 preface).
pub async fn requires_client_certificate(settings: &ProbeSettings) -> Option<bool> {
    tokio::time::timeout(PROBE_DEADLINE, probe(settings))
        .await
        .ok()
        .flatten()
}

async fn probe(settings: &ProbeSettings) -> Option<bool> {
    let uri: tonic::transport::Uri = settings.endpoint.parse().ok()?;
    let host = uri
        .host()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let mut roots = RootCertStore::empty();
    match &settings.ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                roots.add(cert.ok()?).ok()?;
            }
        }
        None => {
            // Reads the system's certificate files: off the async threads.
            let native = tokio::task::spawn_blocking(rustls_native_certs::load_native_certs)
                .await
                .ok()?;
            for cert in native.certs {
                let _ = roots.add(cert);
            }
        }
    }
    let asked = Arc::new(AskedForCertificate::default());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_client_cert_resolver(asked.clone());
    let name = ServerName::try_from(settings.domain.clone().unwrap_or(host.clone())).ok()?;
    let tcp = TcpStream::connect((host.as_str(), port)).await.ok()?;
    let handshake = TlsConnector::from(Arc::new(config)).connect(name, tcp).await;
    let asked = asked.0.load(Ordering::SeqCst);
    let mut tls = match handshake {
        Ok(tls) if asked => tls,
        Ok(_) => return Some(false),
        // TLS 1.2 judges the certificate inside the handshake: a refusal is the server's alert.
        Err(e) if asked && e.to_string().contains("received fatal alert") => return Some(true),
        Err(_) => return None,
    };
    // TLS 1.3: the server judges the (empty) certificate after the client's Finished, so the
    // verdict comes after the handshake: an alert or the end of the stream means refused.
    let mut byte = [0u8; 1];
    match tokio::time::timeout(VERDICT_WAIT, tls.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Some(true),
        Ok(Ok(_)) | Err(_) => Some(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_rustls::rustls::pki_types::PrivateKeyDer;
    use tokio_rustls::rustls::server::WebPkiClientVerifier;
    use tokio_rustls::rustls::ServerConfig;
    use tokio_rustls::TlsAcceptor;

    /// How a test server treats client certificates.
    #[derive(Clone, Copy)]
    enum ClientAuth {
        None,
        Optional,
        Required,
    }

    /// A TLS server on loopback with a self-signed certificate for `localhost`; a connection it
    /// accepts stays open (as a server waiting for a request). Returns its port and the
    /// certificate's PEM (the probe's trust).
    async fn server(auth: ClientAuth) -> (u16, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let builder = match auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Optional => {
                builder.with_client_cert_verifier(verifier.allow_unauthenticated().build().unwrap())
            }
            ClientAuth::Required => builder.with_client_cert_verifier(verifier.build().unwrap()),
        };
        let key_der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let config = builder
            .with_single_cert(vec![cert.der().clone()], key_der)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(open) = acceptor.accept(tcp).await {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        drop(open);
                    }
                });
            }
        });
        (port, cert.pem().into_bytes())
    }

    fn settings(port: u16, ca_pem: Option<Vec<u8>>) -> ProbeSettings {
        ProbeSettings {
            endpoint: format!("https://localhost:{port}"),
            ca_pem,
            domain: None,
        }
    }

    async fn probed(auth: ClientAuth) -> Option<bool> {
        let (port, ca) = server(auth).await;
        requires_client_certificate(&settings(port, Some(ca))).await
    }

    #[tokio::test]
    async fn only_a_server_that_requires_a_certificate_is_said_to() {
        assert_eq!(probed(ClientAuth::Required).await, Some(true));
        assert_eq!(probed(ClientAuth::Optional).await, Some(false));
        assert_eq!(probed(ClientAuth::None).await, Some(false));
    }

    #[tokio::test]
    async fn an_untrusted_server_or_nothing_listening_tells_nothing() {
        let (plain, _) = server(ClientAuth::None).await;
        let (_, other_ca) = server(ClientAuth::None).await;
        assert_eq!(
            requires_client_certificate(&settings(plain, Some(other_ca))).await,
            None
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = listener.local_addr().unwrap().port();
        drop(listener);
        assert_eq!(requires_client_certificate(&settings(closed, None)).await, None);
    }
}
