//! The security flags of `pspace coordinator`, `pspace worker`, `pspace status` and
//! `pspace health`, and reading what they point at. Secrets come from files or environment
//! variables only (a command-line value would show in `ps` and shell history): the token from
//! `PSPACE_TOKEN` or the file named by `--token-file` / `PSPACE_TOKEN_FILE`; keys from the files
//! named by `--tls-key` / `PSPACE_TLS_KEY`. Error messages name files and variables, never the
//! values.

use anyhow::{bail, Context, Result};
use clap::Args;
use pspace_actors::transport::{ClientSecurity, Secret, ServerSecurity, ServerTls};
use std::path::{Path, PathBuf};

/// How a coordinator protects its port.
#[derive(Debug, Args)]
pub struct ServerSecurityArgs {
    /// The coordinator's TLS certificate chain (PEM). With --tls-key, the port serves TLS only.
    #[arg(long, env = "PSPACE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM file).
    #[arg(long, env = "PSPACE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: every client must present a certificate signed by this CA (PEM).
    #[arg(long, env = "PSPACE_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// A file holding the bearer token every call must carry (or the token itself in the
    /// PSPACE_TOKEN environment variable).
    #[arg(long, env = "PSPACE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Listen on a non-loopback address without TLS or without a token (a warning names what
    /// is open). Without it such a start is refused.
    #[arg(long)]
    pub insecure: bool,
}

/// How a client reaches a coordinator.
#[derive(Debug, Args)]
pub struct ClientSecurityArgs {
    /// The CA certificate (PEM) the coordinator's certificate must chain to (https:// only;
    /// default: the system's roots).
    #[arg(long, env = "PSPACE_CA")]
    pub ca: Option<PathBuf>,
    /// This client's certificate (PEM), for a coordinator that wants mutual TLS.
    #[arg(long, env = "PSPACE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM file).
    #[arg(long, env = "PSPACE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The name the coordinator's certificate must carry, when the endpoint's host differs
    /// (an IP address, a tunnel).
    #[arg(long, env = "PSPACE_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
    /// A file holding the bearer token (or the token itself in PSPACE_TOKEN).
    #[arg(long, env = "PSPACE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Allow sending the token in plaintext (http://) to a non-loopback address.
    #[arg(long)]
    pub insecure: bool,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// The token from PSPACE_TOKEN or the token file (trailing newline and spaces dropped).
fn token(file: Option<&Path>) -> Result<Option<Secret>> {
    let from_env = std::env::var_os("PSPACE_TOKEN").filter(|v| !v.is_empty());
    let bytes = match (from_env, file) {
        (Some(_), Some(f)) => bail!(
            "both PSPACE_TOKEN and a token file ({}) are set: keep one",
            f.display()
        ),
        (Some(v), None) => v.into_encoded_bytes(),
        (None, Some(f)) => read(f, "token file")?,
        (None, None) => return Ok(None),
    };
    let text = bytes.trim_ascii().to_vec();
    let secret = Secret::new(text);
    pspace_actors::transport::security::check_token(&secret).map_err(|e| {
        let source = file.map_or("PSPACE_TOKEN".to_string(), |f| f.display().to_string());
        anyhow::anyhow!("the token in {source}: {e}")
    })?;
    Ok(Some(secret))
}

impl ServerSecurityArgs {
    pub fn load(&self) -> Result<ServerSecurity> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(ServerTls {
                cert_pem: read(cert, "TLS certificate")?,
                key_pem: Secret::new(read(key, "TLS key")?),
                client_ca_pem: self
                    .client_ca
                    .as_deref()
                    .map(|p| read(p, "client CA"))
                    .transpose()?,
            }),
            _ => None,
        };
        Ok(ServerSecurity {
            tls,
            token: token(self.token_file.as_deref())?,
        })
    }
}

impl ClientSecurityArgs {
    pub fn load(&self) -> Result<ClientSecurity> {
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((
                read(cert, "client certificate")?,
                Secret::new(read(key, "client key")?),
            )),
            _ => None,
        };
        Ok(ClientSecurity {
            ca_pem: self
                .ca
                .as_deref()
                .map(|p| read(p, "CA certificate"))
                .transpose()?,
            identity,
            domain: self.tls_domain.clone(),
            token: token(self.token_file.as_deref())?,
            insecure: self.insecure,
        })
    }
}
