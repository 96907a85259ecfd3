//! TLS on rustls with the ring provider. Clients (the callback worker, `fupload::client`) trust
//! Mozilla's roots (webpki-roots), the system's store and the CA certificates of an optional PEM
//! file; there is no way to turn verification off. The server side serves `server.tls` with a
//! certificate that [`ServerCert::reload`] swaps while connections go on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, RwLock};

use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// ring, not aws-lc-rs (rustls's default, which needs cmake to build). rustls 0.23.48 marks ring's
/// provider deprecated because ring has no post-quantum key exchange; the classical groups
/// (X25519, P-256, P-384) it offers are what business servers negotiate today.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Mozilla's roots and the system's, read once per process. A system store that cannot be read
/// (no `/etc/ssl/certs` in a small image) leaves Mozilla's.
static BUILT_IN_ROOTS: LazyLock<RootCertStore> = LazyLock::new(|| {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let system = rustls_native_certs::load_native_certs();
    for error in &system.errors {
        tracing::warn!(%error, "cannot read some of the system's CA certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(system.certs);
    tracing::debug!(added, ignored, "the system's CA certificates");
    roots
});

/// The client side: the built-in roots plus the CA certificates in `ca_file` (PEM), HTTP/1.1.
pub fn client_config(ca_file: Option<&Path>) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = BUILT_IN_ROOTS.clone();
    if let Some(path) = ca_file {
        for cert in read_certs(path)? {
            roots.add(cert).with_context(|| format!("{}: a certificate rustls cannot trust", path.display()))?;
        }
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The same wire as plain http: one block per connection at a time, as fupload serves it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The certificates of a PEM file; an error if it has none.
fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the PEM certificates in {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{}: no CERTIFICATE in it", path.display());
    Ok(certs)
}

/// The server's certificate chain and key, from `server.tls`'s files; reloaded on demand.
#[derive(Debug)]
pub struct ServerCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCert {
    pub fn load(cert_file: &Path, key_file: &Path) -> anyhow::Result<Arc<Self>> {
        let current = RwLock::new(certified_key(cert_file, key_file)?);
        Ok(Arc::new(Self { cert_file: cert_file.to_owned(), key_file: key_file.to_owned(), current }))
    }

    /// Reads the files again; new handshakes use them. On an error the old certificate stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = certified_key(&self.cert_file, &self.key_file)?;
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
        Ok(())
    }

    /// The leaf certificate served now.
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.current().cert[0].clone()
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// A rustls config that serves this certificate (actix adds the ALPN protocols).
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<ServerConfig> {
        Ok(ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone()))
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn certified_key(cert_file: &Path, key_file: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain = read_certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("reading the PEM private key in {}", key_file.display()))?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).with_context(|| {
        format!("{} and {} do not make a certificate and its key", cert_file.display(), key_file.display())
    })?;
    Ok(Arc::new(certified))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str, dir: &Path) -> (PathBuf, PathBuf) {
        let issued = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&cert, issued.cert.pem()).unwrap();
        std::fs::write(&key, issued.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed("ca.test", dir.path());
        client_config(Some(&cert)).unwrap();
        let error = client_config(Some(&key)).unwrap_err();
        assert!(format!("{error:#}").contains("no CERTIFICATE"), "{error:#}");
        assert!(client_config(Some(&dir.path().join("missing.pem"))).is_err());
    }

    #[test]
    fn reload_swaps_the_certificate_and_keeps_the_old_one_on_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed("one.test", dir.path());
        let served = ServerCert::load(&cert, &key).unwrap();
        served.server_config().unwrap();
        let first = served.leaf();
        let (cert2, key2) = self_signed("two.test", dir.path());
        std::fs::copy(&cert2, &cert).unwrap();
        std::fs::copy(&key2, &key).unwrap();
        served.reload().unwrap();
        let second = served.leaf();
        assert_ne!(first, second);
        std::fs::write(&key, "not a key").unwrap();
        assert!(served.reload().is_err());
        assert_eq!(served.leaf(), second);
        // A key that does not belong to the certificate is refused too.
        let (_, other_key) = self_signed("three.test", dir.path());
        std::fs::copy(other_key, &key).unwrap();
        assert!(served.reload().is_err());
    }
}
