//! Certificates and a token made for one test (rcgen): a CA, a server certificate signed by it
//! for the names the test connects to, a client certificate for mutual TLS, and a second,
//! unrelated CA whose trust must not be enough. Written as PEM files into a folder, as an
//! operator would mount them from Secrets.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};

/// The files of a test PKI and the token (the token only ever goes into a file or an
/// environment variable of a child process, as in production).
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing the coordinator uses.
    pub rogue_ca: PathBuf,
    pub token: String,
    pub token_file: PathBuf,
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().expect("a CA key");
    let cert = params.self_signed(&key).expect("a self-signed CA");
    (cert.pem(), Issuer::new(params, key))
}

fn leaf(names: &[&str], issuer: &Issuer<'static, KeyPair>) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).expect("leaf params");
    params
        .distinguished_name
        .push(DnType::CommonName, names.first().cloned().unwrap_or_default());
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("a leaf key");
    let cert = params.signed_by(&key, issuer).expect("a signed leaf");
    (cert.pem(), key.serialize_pem())
}

/// A random token: 32 hex digits (from a fresh private key's randomness) after a prefix the
/// tests grep for.
pub fn random_token() -> String {
    use sha2::{Digest, Sha256};
    let entropy = KeyPair::generate().expect("entropy").serialize_der();
    let digest = Sha256::digest(&entropy);
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("pspacetok-{hex}")
}

impl Pki {
    /// A PKI whose server certificate is valid for `names` (DNS names or IP addresses).
    pub fn write(dir: &Path, names: &[&str]) -> Pki {
        std::fs::create_dir_all(dir).expect("the PKI folder");
        let (ca_pem, issuer) = ca("pspace test CA");
        let (server_pem, server_key) = leaf(names, &issuer);
        let (client_pem, client_key) = leaf(&["pspace-worker"], &issuer);
        let (rogue_pem, _) = ca("some other CA");
        let token = random_token();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write a PKI file");
            path
        };
        Pki {
            dir: dir.to_path_buf(),
            ca: write("ca.crt", &ca_pem),
            server_cert: write("tls.crt", &server_pem),
            server_key: write("tls.key", &server_key),
            client_cert: write("client.crt", &client_pem),
            client_key: write("client.key", &client_key),
            rogue_ca: write("rogue-ca.crt", &rogue_pem),
            token_file: write("token", &format!("{token}\n")),
            token,
        }
    }
}
