//! Who may talk to a coordinator, and how a worker proves it: TLS (rustls through tonic's
//! `tls-ring`; mutual when the coordinator is given a client CA) and a bearer token that an
//! interceptor checks on every call. Secrets (the token, private keys) live in [`Secret`], whose
//! `Debug` and `Display` never show them, so no log line, span field, status reply or error
//! message can carry one by accident.
//!
//! The policy a coordinator applies at start is [`listen_policy`]: on a loopback address
//! anything goes; on any other address both TLS and a token are required unless the operator
//! passes `--insecure`, and then a warning names what is open. A worker applies
//! [`ClientSecurity::check`]: a token is never sent in plaintext off the machine.

use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

/// A secret value (a bearer token, a PEM private key). Shown as `[redacted]` everywhere.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<Vec<u8>>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(Arc::new(bytes.into()))
    }

    /// The secret's bytes, for the one place that must use them (a TLS config, a header).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Why a security setting cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("{0}")]
    Policy(String),
    #[error("the bearer token must be printable ASCII without spaces (found a character that is not)")]
    TokenNotAscii,
    #[error("the bearer token is empty")]
    TokenEmpty,
    #[error("cannot use the TLS settings: {0}")]
    Tls(String),
}

/// A bearer token as sent and checked: printable ASCII, at least one character.
pub fn check_token(token: &Secret) -> Result<(), SecurityError> {
    let bytes = token.expose();
    if bytes.is_empty() {
        return Err(SecurityError::TokenEmpty);
    }
    if !bytes.iter().all(|b| b.is_ascii_graphic()) {
        return Err(SecurityError::TokenNotAscii);
    }
    Ok(())
}

/// The coordinator's TLS identity (PEM), and the CA its clients' certificates must chain to
/// when mutual TLS is wanted.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Secret,
    /// Set: every client must present a certificate signed by this CA (mutual TLS).
    pub client_ca_pem: Option<Vec<u8>>,
}

/// How a coordinator's gRPC port is protected.
#[derive(Clone, Debug, Default)]
pub struct ServerSecurity {
    pub tls: Option<ServerTls>,
    /// Set: every call must carry `authorization: Bearer <token>`.
    pub token: Option<Secret>,
}

impl ServerSecurity {
    /// What this port leaves open, for the `--insecure` warning ("" when nothing is).
    pub fn what_is_open(&self) -> Vec<&'static str> {
        let mut open = Vec::new();
        if self.tls.is_none() {
            open.push("no TLS: calls, leases and the run's spec cross the network in plaintext");
        }
        if self.token.is_none() {
            open.push("no token: anyone who can reach the port can take leases, complete tasks and read the run's status");
        }
        open
    }
}

/// True when every address `addr` can mean is on this machine (127.0.0.0/8, ::1).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// Whether a coordinator may listen on `addr` with `security`: Ok(None) when it may, Ok(Some
/// warning) when only `--insecure` lets it, Err when it may not (the message says what is
/// missing and how to fix it).
pub fn listen_policy(
    addr: &SocketAddr,
    security: &ServerSecurity,
    insecure: bool,
) -> Result<Option<String>, SecurityError> {
    let open = security.what_is_open();
    if is_loopback(addr) || open.is_empty() {
        return Ok(None);
    }
    if insecure {
        return Ok(Some(format!(
            "coordinator: WARNING: --insecure: listening on {addr}, which is not a loopback address, with {}",
            open.join("; and ")
        )));
    }
    let mut missing = Vec::new();
    if security.tls.is_none() {
        missing.push("TLS (--tls-cert and --tls-key)");
    }
    if security.token.is_none() {
        missing.push("a token (PSPACE_TOKEN or --token-file)");
    }
    Err(SecurityError::Policy(format!(
        "refusing to listen on {addr} (not a loopback address) without {}: give them, listen on \
         127.0.0.1, or pass --insecure to accept an open port",
        missing.join(" and ")
    )))
}

/// How a worker (or `pspace status`) reaches a coordinator.
#[derive(Clone, Debug, Default)]
pub struct ClientSecurity {
    /// The CA (PEM) the coordinator's certificate must chain to; None: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// This client's certificate and key (PEM), for a coordinator that wants mutual TLS.
    pub identity: Option<(Vec<u8>, Secret)>,
    /// The name the coordinator's certificate must carry, when it differs from the endpoint's
    /// host (connecting by IP address, or through a tunnel).
    pub domain: Option<String>,
    /// Sent as `authorization: Bearer <token>` on every call.
    pub token: Option<Secret>,
    /// The operator accepted sending the token in plaintext off this machine.
    pub insecure: bool,
}

impl ClientSecurity {
    /// Checks these settings against `endpoint` (`http://` or `https://HOST:PORT`): TLS files
    /// need https://, and a token never goes in plaintext to another machine unless the
    /// operator said `--insecure`.
    pub fn check(&self, endpoint: &str) -> Result<(), SecurityError> {
        if let Some(token) = &self.token {
            check_token(token)?;
        }
        let tls = endpoint.starts_with("https://");
        if !tls && (self.ca_pem.is_some() || self.identity.is_some() || self.domain.is_some()) {
            return Err(SecurityError::Policy(format!(
                "TLS settings (--ca, --tls-cert, --tls-domain) were given but the coordinator's \
                 endpoint {endpoint} is plaintext: use https://"
            )));
        }
        if !tls && self.token.is_some() && !self.insecure && !endpoint_is_loopback(endpoint) {
            return Err(SecurityError::Policy(format!(
                "refusing to send the token in plaintext to {endpoint} (not a loopback address): \
                 use https:// (the coordinator's --tls-cert), or pass --insecure"
            )));
        }
        Ok(())
    }

    /// The `authorization` header value, marked sensitive (tonic and hyper do not print it).
    pub(crate) fn bearer(&self) -> Result<Option<MetadataValue<Ascii>>, SecurityError> {
        let Some(token) = &self.token else {
            return Ok(None);
        };
        check_token(token)?;
        let mut text = b"Bearer ".to_vec();
        text.extend_from_slice(token.expose());
        let mut value = MetadataValue::try_from(text.as_slice()).map_err(|_| SecurityError::TokenNotAscii)?;
        value.set_sensitive(true);
        Ok(Some(value))
    }
}

/// The host of `http://HOST:PORT/...` is a loopback name or address.
fn endpoint_is_loopback(endpoint: &str) -> bool {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| is_loopback(&SocketAddr::new(ip, 0)))
}

/// The server's token check, cloned into every call's interceptor. The comparison runs over
/// SHA-256 digests with a constant-time equality, so neither the token's bytes nor its length
/// can be learnt from timing.
#[derive(Clone)]
pub struct TokenCheck {
    expected: Option<[u8; 32]>,
}

impl TokenCheck {
    pub fn new(token: Option<&Secret>) -> TokenCheck {
        TokenCheck {
            expected: token.map(|t| Sha256::digest(t.expose()).into()),
        }
    }

    /// Admits a request carrying the right bearer token (or any request when no token is
    /// configured); refuses the others with `Unauthenticated` and a message saying what was
    /// wrong (never the token itself).
    #[allow(clippy::result_large_err)]
    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(expected) = &self.expected else {
            return Ok(());
        };
        let who = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "a client".into());
        let Some(header) = request.metadata().get("authorization") else {
            eprintln!("coordinator: refused a call from {who}: it carried no bearer token");
            return Err(Status::unauthenticated(
                "no bearer token: this coordinator requires one (set PSPACE_TOKEN or --token-file on the client)",
            ));
        };
        let sent = header.as_bytes();
        let token = sent
            .strip_prefix(b"Bearer ")
            .or_else(|| sent.strip_prefix(b"bearer "));
        let Some(token) = token else {
            eprintln!(
                "coordinator: refused a call from {who}: its authorization header is not a bearer token"
            );
            return Err(Status::unauthenticated(
                "the authorization header is not `Bearer <token>`",
            ));
        };
        let digest: [u8; 32] = Sha256::digest(token).into();
        if bool::from(digest.ct_eq(expected)) {
            Ok(())
        } else {
            eprintln!("coordinator: refused a call from {who}: wrong bearer token");
            Err(Status::unauthenticated(
                "wrong bearer token: it does not match the coordinator's",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn tls() -> Option<ServerTls> {
        Some(ServerTls {
            cert_pem: b"cert".to_vec(),
            key_pem: Secret::new("key"),
            client_ca_pem: None,
        })
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2-token");
        assert_eq!(format!("{s} {s:?}"), "[redacted] [redacted]");
        let security = ServerSecurity {
            tls: tls(),
            token: Some(s),
        };
        assert!(!format!("{security:?}").contains("hunter2"));
        assert!(!format!("{security:?}").contains("key\""));
    }

    #[test]
    fn loopback_is_always_allowed() {
        let open = ServerSecurity::default();
        assert!(listen_policy(&addr("127.0.0.1:1"), &open, false)
            .unwrap()
            .is_none());
        assert!(listen_policy(&addr("[::1]:1"), &open, false).unwrap().is_none());
    }

    #[test]
    fn off_loopback_needs_tls_and_token_or_insecure() {
        let open = ServerSecurity::default();
        let e = listen_policy(&addr("0.0.0.0:50051"), &open, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("without TLS") && e.contains("and a token"), "{e}");
        let half = ServerSecurity {
            tls: tls(),
            token: None,
        };
        let e = listen_policy(&addr("10.0.0.5:1"), &half, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("without a token") && !e.contains("TLS ("), "{e}");
        let warning = listen_policy(&addr("0.0.0.0:1"), &half, true).unwrap().unwrap();
        assert!(
            warning.contains("no token") && !warning.contains("no TLS"),
            "{warning}"
        );
        let closed = ServerSecurity {
            tls: tls(),
            token: Some(Secret::new("t")),
        };
        assert!(listen_policy(&addr("0.0.0.0:1"), &closed, false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_token_stays_off_plaintext_networks() {
        let c = ClientSecurity {
            token: Some(Secret::new("t0k")),
            ..Default::default()
        };
        assert!(c.check("http://127.0.0.1:5").is_ok());
        assert!(c.check("http://localhost:5").is_ok());
        assert!(c.check("http://[::1]:5").is_ok());
        assert!(c.check("https://coordinator:5").is_ok());
        let e = c.check("http://coordinator:5").unwrap_err().to_string();
        assert!(e.contains("plaintext") && !e.contains("t0k"), "{e}");
        let insecure = ClientSecurity {
            insecure: true,
            ..c.clone()
        };
        assert!(insecure.check("http://coordinator:5").is_ok());
        let ca_on_http = ClientSecurity {
            ca_pem: Some(b"ca".to_vec()),
            ..Default::default()
        };
        assert!(ca_on_http.check("http://127.0.0.1:5").is_err());
        let bad = ClientSecurity {
            token: Some(Secret::new("has space")),
            ..Default::default()
        };
        assert!(matches!(
            bad.check("https://x:1"),
            Err(SecurityError::TokenNotAscii)
        ));
    }

    #[test]
    fn the_token_check_admits_only_the_token() {
        let token = Secret::new("s3cr3t-value");
        let check = TokenCheck::new(Some(&token));
        let with = |value: Option<&str>| {
            let mut r = Request::new(());
            if let Some(v) = value {
                r.metadata_mut().insert("authorization", v.parse().unwrap());
            }
            check.check(&r)
        };
        assert!(with(Some("Bearer s3cr3t-value")).is_ok());
        let missing = with(None).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(missing.message().contains("no bearer token"));
        let wrong = with(Some("Bearer s3cr3t-valuf")).unwrap_err();
        assert!(wrong.message().contains("wrong bearer token"));
        assert!(!wrong.message().contains("s3cr3t"));
        assert!(with(Some("Basic abc")).is_err());
        assert!(TokenCheck::new(None).check(&Request::new(())).is_ok());
    }
}
