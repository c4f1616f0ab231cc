//! TLS for every port (HTTP and QWP, ILP/TCP, PostgreSQL), with rustls on
//! aws-lc-rs. One certificate chain and key serve the node; they are read
//! again, without a restart, when either file changes (checked at most once
//! a second, on a new connection). A replacement that does not load is
//! logged and the previous certificate stays in use.
//!
//! With a client CA, every client must present a certificate it signed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// Where the node's certificate, key and (optional) client CA are.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM: the certificate chain, the node's own certificate first.
    pub cert: PathBuf,
    /// PEM: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM: CA certificates client certificates must chain to; `None`
    /// asks for no client certificate.
    pub client_ca: Option<PathBuf>,
}

/// How often a changed certificate or key file is noticed.
const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// A TLS handshake that takes longer closes the connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<CryptoProvider> {
    // Explicit: the test build has both of rustls' providers compiled in,
    // and then there is no process default.
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// What tells a changed file: its modification time and length.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(p: &Path) -> Stamp {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn load_key(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| format!("cannot read TLS certificate {}: {e}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("TLS certificate {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "TLS certificate {} holds no PEM CERTIFICATE",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("cannot read TLS key {}: {e}", files.key.display()))?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| {
        format!(
            "TLS key {} does not go with certificate {}: {e}",
            files.key.display(),
            files.cert.display()
        )
    })
}

struct Current {
    key: Arc<CertifiedKey>,
    /// The files as last loaded, or as last tried (a pair that failed is
    /// tried again, and warned about, only once it changes again).
    stamps: (Stamp, Stamp),
    checked: Instant,
}

/// The certificate in use, reloaded when its files change.
struct Reloading {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: Mutex<Current>,
}

impl std::fmt::Debug for Reloading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("cert", &self.files.cert)
            .finish()
    }
}

impl Reloading {
    fn current(&self) -> Arc<CertifiedKey> {
        let mut c = self.current.lock().expect("not poisoned");
        if c.checked.elapsed() >= RELOAD_CHECK {
            c.checked = Instant::now();
            let stamps = (stamp(&self.files.cert), stamp(&self.files.key));
            if stamps != c.stamps {
                c.stamps = stamps;
                match load_key(&self.files, &self.provider) {
                    Ok(k) => {
                        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                        c.key = Arc::new(k);
                    }
                    // A half-written pair (the certificate replaced, the key
                    // not yet) is tried again once a file changes again.
                    Err(e) => tracing::warn!(
                        error = %e,
                        "TLS certificate files changed but do not load; still serving the previous certificate"
                    ),
                }
            }
        }
        c.key.clone()
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The node's TLS set-up, shared by every port.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ServerConfig>,
    /// For PostgreSQL, which also names its protocol in ALPN.
    pg_config: Arc<ServerConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Loads the files now, so a node with a bad certificate does not start.
    pub fn load(files: &TlsFiles) -> Result<Tls, String> {
        let provider = provider();
        let first = load_key(files, &provider)?;
        let resolver = Arc::new(Reloading {
            files: files.clone(),
            provider: provider.clone(),
            current: Mutex::new(Current {
                key: Arc::new(first),
                stamps: (stamp(&files.cert), stamp(&files.key)),
                checked: Instant::now(),
            }),
        });
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("cannot read TLS client CA {}: {e}", ca.display()))?;
                for c in certs {
                    let c = c.map_err(|e| format!("TLS client CA {}: {e}", ca.display()))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("TLS client CA {}: {e}", ca.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!(
                        "TLS client CA {} holds no PEM CERTIFICATE",
                        ca.display()
                    ));
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| format!("TLS client CA {}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(resolver);
        // No TLS 1.3 session tickets: they are the only bytes the server
        // would send an ILP/TCP client, which never reads, and a socket
        // closed with unread bytes sends RST, which discards the rows
        // still in flight to the server. (Sessions are not resumed; a
        // full handshake is a few hundred µs.)
        config.send_tls13_tickets = 0;
        let mut pg = config.clone();
        pg.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Tls {
            config: Arc::new(config),
            pg_config: Arc::new(pg),
        })
    }

    /// For glommio's streams (futures-io).
    pub fn futures_acceptor(&self) -> futures_rustls::TlsAcceptor {
        futures_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// For tokio's streams.
    pub fn tokio_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// For PostgreSQL connections (pgwire, on tokio).
    pub fn pg_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.pg_config.clone())
    }
}
