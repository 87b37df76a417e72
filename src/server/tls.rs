//! TLS on the listener (`server.tls`): the acceptor (HTTP/2 and HTTP/1.1 by ALPN), its
//! certificate reloaded when the files change, and the client certificate a connection
//! presented, handed to the router as a request extension ([`PeerCertificate`]).
//!
//! The certificate lives behind an `ArcSwap` read by a rustls certificate resolver, so a
//! handshake takes no lock and a reload never touches open connections: those keep the
//! certificate they were made with, new ones get the new pair. A task reads both files every
//! `reload` and swaps in a pair that changed and parses (a half-written rotation, a key that
//! does not fit, is logged and the old pair kept until the next look). Who a client
//! certificate belongs to is [`crate::auth`]'s business; this module only verifies it against
//! `client_ca_file` and reports its SHA-256.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::config::ServerTlsConfig;

/// The SHA-256 of the leaf certificate a client presented on this connection (verified
/// against `server.tls.client_ca_file`), in each request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCertificate {
    pub sha256: [u8; 32],
}

impl PeerCertificate {
    /// The first 8 hex digits, for logs and the caller's id.
    pub fn short(&self) -> String {
        hex::encode(&self.sha256[..4])
    }
}

/// The listener's TLS: the acceptor and the certificate it serves, reloadable.
pub struct ListenerTls {
    acceptor: TlsAcceptor,
    resolver: Arc<Reloading>,
    cfg: ServerTlsConfig,
}

impl ListenerTls {
    /// Read the files and build the acceptor; an error names the field and the file.
    pub fn from_config(cfg: &ServerTlsConfig) -> Result<ListenerTls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert, key) = read_pair(&cfg.cert_file, &cfg.key_file)?;
        let current = certified(&cert, &key, &provider)?;
        let resolver = Arc::new(Reloading {
            current: ArcSwap::from_pointee(current),
        });
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("server.tls: {e}"))?;
        let builder = match &cfg.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(file) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = crate::egress::read_certs(file)
                    .map_err(|e| format!("server.tls.client_ca_file: {e}"))?;
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| format!("server.tls.client_ca_file: {e}"))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                let verifier = if cfg.require_client_cert {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| format!("server.tls.client_ca_file: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ListenerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            resolver,
            cfg: cfg.clone(),
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Look at the files every `reload` until the returned task is aborted (`0s`: never).
    pub fn spawn_reloader(&self) -> Option<tokio::task::JoinHandle<()>> {
        let every = self.cfg.reload.0;
        if every.is_zero() {
            return None;
        }
        let (cert_file, key_file) = (self.cfg.cert_file.clone(), self.cfg.key_file.clone());
        let resolver = self.resolver.clone();
        Some(tokio::spawn(async move {
            reload_loop(resolver, &cert_file, &key_file, every).await;
        }))
    }
}

/// The certificate resolver: whatever pair was loaded last.
#[derive(Debug)]
struct Reloading {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

async fn reload_loop(resolver: Arc<Reloading>, cert_file: &Path, key_file: &Path, every: Duration) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut last = (
        tokio::fs::read(cert_file).await.unwrap_or_default(),
        tokio::fs::read(key_file).await.unwrap_or_default(),
    );
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (Ok(cert), Ok(key)) = (
            tokio::fs::read(cert_file).await,
            tokio::fs::read(key_file).await,
        ) else {
            tracing::warn!(
                cert_file = %cert_file.display(),
                "listener certificate or key unreadable; keeping the current pair"
            );
            continue;
        };
        if (&cert, &key) == (&last.0, &last.1) {
            continue;
        }
        match certified(&cert, &key, &provider) {
            Ok(pair) => {
                let id = pair
                    .cert
                    .first()
                    .map(|c| hex::encode(&Sha256::digest(c.as_ref())[..4]))
                    .unwrap_or_default();
                resolver.current.store(Arc::new(pair));
                tracing::info!(cert_file = %cert_file.display(), certificate = %id, "listener certificate reloaded");
                last = (cert, key);
            }
            // Perhaps half-way through a rotation: look again next time.
            Err(e) => tracing::warn!(error = %e, "listener certificate not reloaded"),
        }
    }
}

fn read_pair(cert_file: &Path, key_file: &Path) -> Result<(Vec<u8>, Vec<u8>), String> {
    let cert = std::fs::read(cert_file).map_err(|e| {
        format!(
            "server.tls.cert_file: cannot read {}: {e}",
            cert_file.display()
        )
    })?;
    let key = std::fs::read(key_file).map_err(|e| {
        format!(
            "server.tls.key_file: cannot read {}: {e}",
            key_file.display()
        )
    })?;
    Ok((cert, key))
}

/// A certificate chain and its key, checked to belong together.
fn certified(
    cert: &[u8],
    key: &[u8],
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("server.tls.cert_file: not a PEM certificate file: {e}"))?;
    if chain.is_empty() {
        return Err("server.tls.cert_file: holds no PEM certificate".into());
    }
    // The parser's message never quotes the key.
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| format!("server.tls.key_file: no usable PEM private key ({e})"))?;
    CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("server.tls.key_file: does not fit cert_file: {e}"))
}

/// The verified client certificate of a finished handshake, if the client sent one.
pub fn peer_certificate(conn: &rustls::ServerConnection) -> Option<PeerCertificate> {
    let leaf = conn.peer_certificates()?.first()?;
    Some(PeerCertificate {
        sha256: Sha256::digest(leaf.as_ref()).into(),
    })
}
