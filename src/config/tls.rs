//! Config of TLS and the egress proxy on every hop: upstream and token-endpoint TLS (`tls:`),
//! the egress proxy (`proxy:` gateway-wide and per upstream or credential), the listener's TLS
//! (`server.tls:`). Plain data and checks that need no file: the certificates are read where
//! the runtime objects are built ([`crate::tls`]).

use super::*;

/// The lowest TLS version a connection may use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (the default).
    #[default]
    #[serde(rename = "1.2")]
    V12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    V13,
}

/// TLS towards a server Tollgate connects to (an upstream, a token endpoint).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTlsConfig {
    /// A PEM bundle of CA certificates trusted besides the public (webpki) roots: a private CA.
    pub ca_file: Option<std::path::PathBuf>,
    /// Trust the public (webpki) roots too; `false` trusts `ca_file` alone.
    pub public_roots: Option<bool>,
    /// A PEM client certificate (chain) presented for mTLS; needs `client_key`.
    pub client_cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM) as a secret reference: `file:/path/key.pem`
    /// or `${ENV}` holding the PEM text.
    pub client_key: Option<SecretRef>,
    /// The name sent as SNI and checked against the server's certificate, instead of the URL's
    /// host (an upstream reached by IP or through an internal alias).
    pub server_name: Option<String>,
    /// The lowest TLS version accepted: `"1.2"` (default) or `"1.3"`.
    pub min_version: TlsVersion,
}

impl ClientTlsConfig {
    pub(super) fn validate(
        &self,
        path: &str,
        env: &dyn EnvSource,
        warnings: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        match (&self.client_cert_file, &self.client_key) {
            (Some(_), None) => {
                return Err(err(
                    format!("{path}.client_key"),
                    "is required with client_cert_file",
                ))
            }
            (None, Some(_)) => {
                return Err(err(
                    format!("{path}.client_cert_file"),
                    "is required with client_key",
                ))
            }
            (Some(_), Some(k)) => check_secret(k, &format!("{path}.client_key"), env, warnings)?,
            (None, None) => {}
        }
        if self.public_roots == Some(false) && self.ca_file.is_none() {
            return Err(err(
                format!("{path}.ca_file"),
                "is required with public_roots: false (nothing would be trusted)",
            ));
        }
        if let Some(name) = &self.server_name {
            if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                return Err(err(
                    format!("{path}.server_name"),
                    format!("'{name}' is not a DNS name or IP address"),
                ));
            }
        }
        Ok(())
    }
}

/// How connections leave through an HTTP proxy. Per upstream (or OAuth2 credential) it replaces
/// the gateway-wide `proxy:` entirely; `proxy: {}` there means "direct".
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// The proxy, `http://host:port`. Tollgate opens a CONNECT tunnel through it for every
    /// destination (https and http alike).
    pub url: Option<String>,
    /// Hosts reached directly: names (a name also matches its subdomains, `.corp` matches every
    /// `*.corp`), IP addresses, CIDR ranges (`10.0.0.0/8`), or `*` for everything.
    pub no_proxy: Vec<String>,
    /// `user:password` for the proxy (Basic), as a secret reference.
    pub credentials: Option<SecretRef>,
    /// Take the proxy from `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` and `NO_PROXY` (and their
    /// lower-case forms) in Tollgate's environment; never read unless this is `true`. Not with
    /// `url`; `no_proxy` adds to `NO_PROXY`.
    pub from_env: bool,
}

impl ProxyConfig {
    pub(super) fn validate(
        &self,
        path: &str,
        env: &dyn EnvSource,
        warnings: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        if self.url.is_some() && self.from_env {
            return Err(err(
                format!("{path}.from_env"),
                "cannot be combined with url: choose one",
            ));
        }
        if let Some(url) = &self.url {
            check_proxy_url(url).map_err(|m| err(format!("{path}.url"), m))?;
        }
        if let Some(c) = &self.credentials {
            let cpath = format!("{path}.credentials");
            check_secret(c, &cpath, env, warnings)?;
            let v = c.resolve(env).map_err(|m| err(&cpath, m))?;
            if !v.expose().contains(':') {
                return Err(err(cpath, "must be user:password"));
            }
        }
        Ok(())
    }
}

/// A proxy URL Tollgate can use: `http://host[:port]`, no credentials in it.
pub fn check_proxy_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
    if parsed.scheme() != "http" {
        return Err("must be an http:// proxy (TLS to the proxy itself is not supported)".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials: use the credentials field".into());
    }
    if parsed.host_str().is_none() {
        return Err("has no host".into());
    }
    Ok(())
}

/// TLS on Tollgate's own listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// The certificate chain (PEM), leaf first.
    pub cert_file: std::path::PathBuf,
    /// Its private key (PEM). Read from this path (not a secret reference) so that a rotated
    /// key is picked up with the certificate.
    pub key_file: std::path::PathBuf,
    /// A PEM bundle of CAs whose client certificates are accepted; clients then may (or with
    /// `require_client_cert`, must) present one. A team's `client_cert` names who is who.
    #[serde(default)]
    pub client_ca_file: Option<std::path::PathBuf>,
    /// Refuse the TLS handshake of a client without a certificate from `client_ca_file`.
    #[serde(default)]
    pub require_client_cert: bool,
    /// How often the certificate and key files are checked for change (their modification
    /// time); a changed pair is used by new connections. `0s` never reloads.
    #[serde(default = "default_reload")]
    pub reload: Dur,
}

fn default_reload() -> Dur {
    secs(10)
}

impl ServerTlsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.require_client_cert && self.client_ca_file.is_none() {
            return Err(err(
                "server.tls.client_ca_file",
                "is required with require_client_cert",
            ));
        }
        if !self.reload.0.is_zero() && self.reload.0 < Duration::from_millis(100) {
            return Err(err("server.tls.reload", "must be 0s or at least 100ms"));
        }
        Ok(())
    }
}
