//! How Tollgate's own connections leave: the TLS client configuration of an upstream or a token
//! endpoint (private CA, client certificate, server name, minimum version), the egress proxy a
//! destination goes through, and the naming of a failed connection (which hop, which cause).
//!
//! Everything here is built once per config snapshot (files read, keys parsed, the proxy
//! decided for the destination's fixed host), never per request; the HTTP clients that use it
//! belong to [`crate::providers`] (upstreams) and [`crate::credentials`] (token endpoints).
//! Errors name the config field and the file, never a key. It does not own the listener's TLS
//! (that is [`crate::server`]).

use std::path::Path;
use std::sync::Arc;

use http::{HeaderValue, Uri};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};

use crate::config::{ClientTlsConfig, ProxyConfig, TlsVersion};
use crate::error::ConnectFailure;
use crate::secret::EnvSource;

/// The crypto provider of every TLS configuration Tollgate builds (ring, as hyper-rustls and
/// reqwest use it here).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS client configuration for one destination. `path` names the config block in errors
/// (`upstreams.vllm.tls`). Without `tls`, the public roots and TLS 1.2+. ALPN is left empty:
/// each HTTP client sets what it speaks.
pub fn client_config(
    tls: Option<&ClientTlsConfig>,
    path: &str,
    env: &dyn EnvSource,
) -> Result<ClientConfig, String> {
    let default = ClientTlsConfig::default();
    let tls = tls.unwrap_or(&default);
    let provider = provider();
    let mut roots = RootCertStore::empty();
    if tls.public_roots != Some(false) {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(file) = &tls.ca_file {
        let certs = read_certs(file).map_err(|e| format!("{path}.ca_file: {e}"))?;
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("{path}.ca_file: {}: {e}", file.display()))?;
        }
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::V12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V13 => &[&rustls::version::TLS13],
    };
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("{path}: cannot build the certificate verifier: {e}"))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| format!("{path}.min_version: {e}"))?;
    let builder = match &tls.server_name {
        Some(name) => {
            let name = ServerName::try_from(name.clone())
                .map_err(|e| format!("{path}.server_name: {e}"))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(FixedName {
                    inner: webpki,
                    name,
                }))
        }
        None => builder.with_webpki_verifier(webpki),
    };
    match (&tls.client_cert_file, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert).map_err(|e| format!("{path}.client_cert_file: {e}"))?;
            let pem = key
                .resolve(env)
                .map_err(|e| format!("{path}.client_key: {e}"))?;
            // The parser's message never quotes the key.
            let key = PrivateKeyDer::from_pem_slice(pem.expose().as_bytes())
                .map_err(|e| format!("{path}.client_key: no usable PEM private key ({e})"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{path}.client_key: does not fit client_cert_file: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The server name a connection sends (SNI) and checks, when the config overrides the URL's.
pub fn server_name(tls: Option<&ClientTlsConfig>) -> Option<ServerName<'static>> {
    let name = tls?.server_name.clone()?;
    ServerName::try_from(name).ok()
}

/// Every certificate of a PEM file; an error when there is none.
pub fn read_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", file.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no PEM certificate", file.display()));
    }
    Ok(certs)
}

/// The webpki verifier, checking the configured name instead of the URL's host.
#[derive(Debug)]
struct FixedName {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for FixedName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Where a destination's connections go when they leave through a proxy.
#[derive(Clone)]
pub struct ProxyRoute {
    /// The proxy, `http://host:port`.
    pub uri: Uri,
    /// `Proxy-Authorization` for the CONNECT (marked sensitive).
    pub auth: Option<HeaderValue>,
}

impl std::fmt::Debug for ProxyRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProxyRoute({})", self.uri)
    }
}

/// The proxy `dst` goes through under `proxy` (the destination's own block or the gateway-wide
/// one), or `None` for a direct connection. Decided once: a destination's host is fixed.
pub fn proxy_route(
    proxy: Option<&ProxyConfig>,
    dst: &Uri,
    path: &str,
    env: &dyn EnvSource,
) -> Result<Option<ProxyRoute>, String> {
    let Some(p) = proxy else { return Ok(None) };
    let mut builder = hyper_util::client::proxy::matcher::Matcher::builder();
    let mut no = p.no_proxy.join(",");
    if let Some(url) = &p.url {
        builder = builder.all(url.as_str());
    } else if p.from_env {
        let var = |names: [&str; 2]| names.iter().find_map(|n| env.var(n)).unwrap_or_default();
        for (name, value) in [
            ("HTTPS_PROXY", var(["HTTPS_PROXY", "https_proxy"])),
            ("HTTP_PROXY", var(["HTTP_PROXY", "http_proxy"])),
            ("ALL_PROXY", var(["ALL_PROXY", "all_proxy"])),
        ] {
            if !value.is_empty() && !value.starts_with("http://") && value.contains("://") {
                return Err(format!(
                    "{path}.from_env: {name} must be an http:// proxy (TLS to the proxy itself \
                     is not supported)"
                ));
            }
        }
        builder = builder
            .https(var(["HTTPS_PROXY", "https_proxy"]))
            .http(var(["HTTP_PROXY", "http_proxy"]))
            .all(var(["ALL_PROXY", "all_proxy"]));
        let env_no = var(["NO_PROXY", "no_proxy"]);
        if !env_no.is_empty() {
            no = if no.is_empty() {
                env_no
            } else {
                format!("{env_no},{no}")
            };
        }
    } else {
        return Ok(None);
    }
    let Some(hit) = builder.no(no).build().intercept(dst) else {
        return Ok(None);
    };
    let mut auth = hit.basic_auth().cloned();
    if let Some(c) = &p.credentials {
        let v = c
            .resolve(env)
            .map_err(|e| format!("{path}.credentials: {e}"))?;
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(v.expose());
        let mut value = HeaderValue::try_from(format!("Basic {token}"))
            .map_err(|_| format!("{path}.credentials: not usable in a header"))?;
        value.set_sensitive(true);
        auth = Some(value);
    }
    Ok(Some(ProxyRoute {
        uri: hit.uri().clone(),
        auth,
    }))
}

/// Why the egress proxy opened no tunnel; its source is the I/O error, if one.
#[derive(Debug)]
pub struct ProxyError {
    pub failure: ConnectFailure,
    source: Option<std::io::Error>,
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.failure)
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// Largest CONNECT answer head read from a proxy.
const MAX_PROXY_HEAD: usize = 16 * 1024;

/// Open a CONNECT tunnel to `authority` (`host:port`) through `stream`, a connection to the
/// proxy. Only a 2xx opens it; 407 and any other answer are named refusals.
pub async fn tunnel(
    mut stream: tokio::net::TcpStream,
    authority: &str,
    auth: Option<&HeaderValue>,
) -> Result<tokio::net::TcpStream, ProxyError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let refused = |status| ProxyError {
        failure: ConnectFailure::ProxyRefused(status),
        source: None,
    };
    let io = |e: std::io::Error| ProxyError {
        failure: ConnectFailure::ProxyRefused(0),
        source: Some(e),
    };
    let mut head = Vec::with_capacity(128);
    head.extend_from_slice(b"CONNECT ");
    head.extend_from_slice(authority.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    head.extend_from_slice(authority.as_bytes());
    head.extend_from_slice(b"\r\n");
    if let Some(a) = auth {
        head.extend_from_slice(b"Proxy-Authorization: ");
        head.extend_from_slice(a.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    stream.write_all(&head).await.map_err(io)?;
    // The proxy says nothing after its answer until the client speaks, so reading past the
    // head cannot swallow the upstream's bytes.
    let mut answer = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            return Err(refused(0));
        }
        answer.extend_from_slice(&buf[..n]);
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            if end + 4 != answer.len() {
                return Err(refused(0));
            }
            break;
        }
        if answer.len() > MAX_PROXY_HEAD {
            return Err(refused(0));
        }
    }
    // `HTTP/1.1 200 Connection established`
    let status = answer
        .split(|b| *b == b' ')
        .nth(1)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(0);
    match status {
        200..=299 if answer.starts_with(b"HTTP/1.") => Ok(stream),
        407 => Err(ProxyError {
            failure: ConnectFailure::ProxyAuthRequired,
            source: None,
        }),
        s => Err(refused(s)),
    }
}

/// The proxy could not be reached at all.
pub fn proxy_unreachable(e: Box<dyn std::error::Error + Send + Sync>) -> ProxyError {
    ProxyError {
        failure: ConnectFailure::ProxyUnreachable,
        source: Some(std::io::Error::other(e)),
    }
}

/// What a failed connection's error chain says, when it says something worth naming: a TLS
/// failure (from rustls, on either side of the handshake) or the proxy's refusal.
pub fn failure(e: &(dyn std::error::Error + 'static)) -> Option<ConnectFailure> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(f) = err.downcast_ref::<rustls::Error>().map(tls_failure) {
            return Some(f);
        }
        if let Some(p) = err.downcast_ref::<ProxyError>() {
            return Some(p.failure);
        }
        // A TLS 1.3 server refuses a client certificate after the client finished its
        // handshake, so the alert arrives on the first read; over HTTP/2 the h2 crate keeps
        // only the text of that I/O error. rustls writes it as `received fatal alert: Name`.
        if let Some(f) = alert_in_text(&err.to_string()) {
            return Some(f);
        }
        // `io::Error::source` skips the error it wraps: look at that one first.
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// The alert of a rustls `received fatal alert: Name` message, named.
fn alert_in_text(text: &str) -> Option<ConnectFailure> {
    let (_, name) = text.split_once("received fatal alert: ")?;
    let name: String = name
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    let known = [
        AlertDescription::CertificateRequired,
        AlertDescription::BadCertificate,
        AlertDescription::UnknownCA,
        AlertDescription::CertificateUnknown,
        AlertDescription::CertificateExpired,
        AlertDescription::CertificateRevoked,
        AlertDescription::UnsupportedCertificate,
        AlertDescription::AccessDenied,
        AlertDescription::HandshakeFailure,
    ];
    let alert = known.into_iter().find(|a| format!("{a:?}") == name)?;
    Some(tls_failure(&rustls::Error::AlertReceived(alert)))
}

fn tls_failure(e: &rustls::Error) -> ConnectFailure {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => ConnectFailure::UnknownCa,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                ConnectFailure::NameMismatch
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => ConnectFailure::CertificateExpired,
            _ => ConnectFailure::Handshake,
        },
        E::AlertReceived(a) => match a {
            AlertDescription::CertificateRequired => ConnectFailure::ClientCertRequired,
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied => ConnectFailure::ClientCertRejected,
            _ => ConnectFailure::Handshake,
        },
        _ => ConnectFailure::Handshake,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn route(p: &ProxyConfig, dst: &str, env: &HashMap<String, String>) -> Option<String> {
        let dst: Uri = dst.parse().unwrap();
        proxy_route(Some(p), &dst, "proxy", env)
            .unwrap()
            .map(|r| r.uri.to_string())
    }

    #[test]
    fn a_configured_proxy_applies_except_to_no_proxy_hosts() {
        let env = HashMap::new();
        let p = ProxyConfig {
            url: Some("http://proxy.corp:3128".into()),
            no_proxy: vec![".internal".into(), "10.0.0.0/8".into()],
            ..Default::default()
        };
        assert_eq!(
            route(&p, "https://api.openai.com/v1", &env).as_deref(),
            Some("http://proxy.corp:3128/")
        );
        assert_eq!(route(&p, "https://vllm.internal/v1", &env), None);
        assert_eq!(route(&p, "http://10.1.2.3:8000/v1", &env), None);
        assert_eq!(route(&ProxyConfig::default(), "https://a/v1", &env), None);
    }

    #[test]
    fn the_environment_counts_only_when_the_config_says_so() {
        let env: HashMap<String, String> = [
            (
                "HTTPS_PROXY".to_string(),
                "http://envproxy:8080".to_string(),
            ),
            ("NO_PROXY".to_string(), "skip.example".to_string()),
        ]
        .into();
        let off = ProxyConfig::default();
        assert_eq!(route(&off, "https://api.example/v1", &env), None);
        let on = ProxyConfig {
            from_env: true,
            ..Default::default()
        };
        assert_eq!(
            route(&on, "https://api.example/v1", &env).as_deref(),
            Some("http://envproxy:8080/")
        );
        assert_eq!(route(&on, "https://skip.example/v1", &env), None);
        // No HTTP_PROXY: plain http goes direct.
        assert_eq!(route(&on, "http://api.example/v1", &env), None);
    }

    #[test]
    fn tls_errors_are_named() {
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, unknown);
        assert_eq!(failure(&io), Some(ConnectFailure::UnknownCa));
        let alert = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        assert_eq!(failure(&alert), Some(ConnectFailure::ClientCertRequired));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(failure(&plain), None);
        // As h2 hands it on: the text only.
        let text = std::io::Error::other("received fatal alert: BadCertificate");
        assert_eq!(failure(&text), Some(ConnectFailure::ClientCertRejected));
    }
}
