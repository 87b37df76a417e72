//! The config file: typed, validated before any port is bound, every error naming its field.
//!
//! Owns the YAML schema (serde structs with `deny_unknown_fields` and defaults), loading with
//! field paths (`serde_path_to_error`) and line numbers (the YAML parser's), and [`Config::validate`]
//! which checks cross references (models -> upstreams -> credentials, keys -> teams) and resolves
//! secret references. It must not build runtime objects: that is [`crate::state`]'s job.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::secret::{EnvSource, SecretRef};

mod batch;
mod cache;
mod checks;
pub use checks::check_limits;
use checks::{
    check_admin_key_is_not_a_client_key, check_credential, check_ernie, check_forward_headers,
    check_key_source, check_secret,
};
mod console;
mod credentials;
mod limits;
mod store;
mod teams;
mod telemetry;
#[cfg(test)]
mod tests;
mod tls;
mod upstreams;

pub use batch::*;
pub use cache::*;
pub use console::*;
pub use credentials::*;
pub use limits::*;
pub use store::*;
pub use teams::*;
pub use telemetry::*;
pub use tls::*;
pub use upstreams::*;

/// A duration written as `250ms`, `2s`, `5m` or `1h`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Dur {
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| format!("duration '{s}' needs a unit (ms, s, m, h, d)"))?;
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("duration '{s}' has no valid number"))?;
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            "d" => n * 86_400.0,
            _ => return Err(format!("duration '{s}' has an unknown unit '{unit}'")),
        };
        if !(0.0..=31_536_000.0).contains(&secs) {
            return Err(format!("duration '{s}' is out of range"));
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}

/// An address to listen on: an IP and port, or a host name and port resolved once, now (an IPv4
/// address preferred: `localhost:8080` is `127.0.0.1:8080`).
pub fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("'{s}' is not an address and port ({e})"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("'{s}' resolves to no address"))
}

fn socket_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    listen_addr(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn opt_socket_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| listen_addr(&s).map_err(serde::de::Error::custom))
        .transpose()
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn secs(n: u64) -> Dur {
    Dur(Duration::from_secs(n))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listener, limits on what clients may send, shutdown.
    #[serde(default)]
    pub server: ServerConfig,
    /// Named upstream credentials, referenced by upstreams.
    #[serde(default)]
    pub credentials: BTreeMap<String, CredentialConfig>,
    /// Upstream deployments: where requests go.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Client-facing model names, each served by one or more upstreams.
    pub models: BTreeMap<String, ModelConfig>,
    /// Teams: what their keys may do.
    pub teams: BTreeMap<String, TeamConfig>,
    /// Client keys.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// The admin API's key; without it `/admin` is closed.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Where rate-limit, concurrency and spend state lives, and what happens when it is down.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Prices per client-facing model (USD per million tokens); overrides the built-in table.
    #[serde(default)]
    pub prices: BTreeMap<String, PriceConfig>,
    /// Where keys made through the admin API, teams, usage and audit live; without it only
    /// config keys work and no usage rows are written.
    #[serde(default)]
    pub store: Option<StoreConfig>,
    /// The Batch API (`/v1/files`, `/v1/batches`) and its worker; on whenever `store` is set.
    /// See docs/BATCH.md.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Where the response cache's shared tiers (disk, Redis) live; what is cached is set per
    /// model (`models.<m>.cache`). See docs/CACHE.md.
    #[serde(default)]
    pub cache: CacheStoreConfig,
    /// The egress proxy for upstreams and token endpoints that set none of their own.
    #[serde(default)]
    pub proxy: Option<ProxyConfig>,
    /// OpenTelemetry traces (`telemetry.traces`); off unless written. See docs/TRACING.md.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// SHA-256 of the admin key, hex.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The admin key as an `${ENV}` or `file:` reference.
    #[serde(default)]
    pub key: Option<SecretRef>,
    /// The web console (`/console`), signed into with the admin key.
    #[serde(default)]
    pub console: ConsoleConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on: `127.0.0.1:8080`, `[::1]:8080` or `localhost:8080`.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// Largest request body accepted from any client (teams may set lower).
    pub max_body_bytes: usize,
    /// A client must send its request headers within this time.
    pub header_read_timeout: Dur,
    /// A client must send its whole body within this time.
    pub body_read_timeout: Dur,
    /// Requests handled at once; beyond it Tollgate answers 503.
    pub max_in_flight: usize,
    /// On SIGTERM/SIGINT, in-flight requests and streams get this long to finish.
    pub shutdown_grace: Dur,
    /// Client headers forwarded to upstreams (everything else is dropped).
    pub forward_headers: Vec<String>,
    /// Largest non-stream upstream response body Tollgate will relay.
    pub max_response_bytes: usize,
    pub cors: CorsConfig,
    /// A connection with no request in flight for this long is closed (HTTP/1 keep-alive and
    /// HTTP/2 alike); a connection's first request must come within `header_read_timeout`.
    pub idle_timeout: Dur,
    /// A write to a client that stays blocked this long (the client stopped reading) fails the
    /// connection and releases the response it held.
    pub write_timeout: Dur,
    /// Open client connections at most; at the cap the listener stops accepting until one
    /// closes. Unset: half the process's open-file limit (`ulimit -n`).
    pub max_connections: Option<usize>,
    /// HTTP/2 connection limits.
    pub http2: Http2Config,
    /// A bearer key `/metrics` requires (`${ENV}` or `file:` reference); unset: open.
    pub metrics_key: Option<SecretRef>,
    /// Serve `/metrics` on this address only (not on `listen`); read at start.
    #[serde(deserialize_with = "opt_socket_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// TLS on `listen` (HTTPS, HTTP/2 by ALPN); read at start, the files reloaded when they
    /// change. Unset: plain HTTP.
    pub tls: Option<ServerTlsConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Config {
    /// Streams (requests) one HTTP/2 connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Ping an HTTP/2 client this often to find dead peers during long streams.
    pub keep_alive_interval: Dur,
    /// A ping unanswered this long closes the connection.
    pub keep_alive_timeout: Dur,
    /// Largest header list (decoded) one request may send.
    pub max_header_list_size: u32,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            max_concurrent_streams: 100,
            keep_alive_interval: secs(30),
            keep_alive_timeout: secs(10),
            max_header_list_size: 64 * 1024,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 4 * 1024 * 1024,
            header_read_timeout: secs(10),
            body_read_timeout: secs(30),
            max_in_flight: 10_000,
            shutdown_grace: secs(30),
            forward_headers: vec!["accept".into(), "user-agent".into(), "openai-beta".into()],
            max_response_bytes: 64 * 1024 * 1024,
            cors: CorsConfig::default(),
            idle_timeout: secs(60),
            write_timeout: secs(30),
            max_connections: None,
            http2: Http2Config::default(),
            metrics_key: None,
            metrics_listen: None,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins allowed to call from a browser; empty disables CORS. `*` allows any origin and
    /// cannot be combined with `allow_credentials`.
    pub allowed_origins: Vec<String>,
    pub allow_credentials: bool,
}

/// A config problem, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

impl Config {
    /// Parse YAML text; the error names the field path and the line.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let inner = e.into_inner();
            let mut message = inner.to_string();
            // The YAML error repeats part of the path ("teams.x: unknown field …"): keep ours.
            if let Some((prefix, rest)) = message.split_once(": ") {
                if !prefix.is_empty() && path.starts_with(prefix) {
                    message = rest.to_owned();
                }
            }
            if let Some(loc) = inner.location() {
                if !message.contains("line ") {
                    message = format!("{message} (line {})", loc.line());
                }
            }
            err(path, message)
        })
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("", format!("cannot read {}: {e}", path.display())))?;
        let mut c = Config::parse(&text)?;
        // Relative paths of data the server keeps (the SQLite file, batch files) are the config
        // file's directory's, whatever the working directory of the command.
        let dir = path.parent().map(Path::to_path_buf);
        if let Some(store) = &mut c.store {
            store.base_dir = dir.clone();
        }
        if let Some(d) = dir.filter(|_| c.batch.files_dir.is_relative()) {
            c.batch.files_dir = d.join(&c.batch.files_dir);
        }
        Ok(c)
    }

    /// Check cross references and resolve every secret. Returns warnings (e.g. literal secrets);
    /// the first hard error aborts.
    pub fn validate(&self, env: &dyn EnvSource) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        self.batch.validate()?;
        let s = &self.server;
        if s.max_body_bytes == 0 {
            return Err(err("server.max_body_bytes", "must be greater than 0"));
        }
        if s.max_in_flight == 0 {
            return Err(err("server.max_in_flight", "must be greater than 0"));
        }
        if s.max_connections == Some(0) {
            return Err(err("server.max_connections", "must be greater than 0"));
        }
        if s.idle_timeout.0.is_zero() {
            return Err(err("server.idle_timeout", "must be greater than 0"));
        }
        if s.write_timeout.0.is_zero() {
            return Err(err("server.write_timeout", "must be greater than 0"));
        }
        if s.http2.max_concurrent_streams == 0 {
            return Err(err(
                "server.http2.max_concurrent_streams",
                "must be greater than 0",
            ));
        }
        if s.cors.allow_credentials && s.cors.allowed_origins.iter().any(|o| o == "*") {
            return Err(err(
                "server.cors.allowed_origins",
                "'*' cannot be combined with allow_credentials: list the origins",
            ));
        }
        check_forward_headers(&s.forward_headers)?;
        if let Some(t) = &s.tls {
            t.validate()?;
        }
        if let Some(p) = &self.proxy {
            p.validate("proxy", env, &mut warnings)?;
        }
        if let Some(k) = &s.metrics_key {
            check_secret(k, "server.metrics_key", env, &mut warnings)?;
        }
        if s.metrics_listen.is_some_and(|a| a == s.listen) {
            return Err(err(
                "server.metrics_listen",
                "must differ from server.listen",
            ));
        }
        for (name, c) in &self.credentials {
            let path = format!("credentials.{name}");
            check_credential(c, &path, env, &mut warnings)?;
        }
        if self.upstreams.is_empty() {
            return Err(err("upstreams", "at least one upstream is required"));
        }
        for (name, u) in &self.upstreams {
            let path = format!("upstreams.{name}");
            if matches!(u.provider, ProviderKind::Openai | ProviderKind::Anthropic) {
                match &u.base_url {
                    // `anthropic` has a default (its public API).
                    None if u.provider == ProviderKind::Anthropic => {}
                    None => return Err(err(format!("{path}.base_url"), "is required")),
                    Some(url) => {
                        let parsed = reqwest::Url::parse(url).map_err(|e| {
                            err(format!("{path}.base_url"), format!("invalid URL: {e}"))
                        })?;
                        if !matches!(parsed.scheme(), "http" | "https") {
                            return Err(err(format!("{path}.base_url"), "must be http or https"));
                        }
                    }
                }
            }
            if u.provider == ProviderKind::Ernie {
                check_ernie(u, &path)?;
            }
            checks::check_base_url_has_no_query(&path, u)?;
            checks::check_azure(&path, u, &self.credentials)?;
            if let Some(v) = &u.anthropic_version {
                if u.provider != ProviderKind::Anthropic {
                    return Err(err(
                        format!("{path}.anthropic_version"),
                        "is only for `provider: anthropic`",
                    ));
                }
                if v.is_empty() || http::HeaderValue::from_str(v).is_err() {
                    return Err(err(
                        format!("{path}.anthropic_version"),
                        "must be a version such as 2023-06-01",
                    ));
                }
            }
            if let Some(t) = &u.tls {
                t.validate(&format!("{path}.tls"), env, &mut warnings)?;
            }
            if let Some(p) = &u.proxy {
                p.validate(&format!("{path}.proxy"), env, &mut warnings)?;
            }
            if let Some(c) = &u.credential {
                if !self.credentials.contains_key(c) {
                    return Err(err(
                        format!("{path}.credential"),
                        format!("credential '{c}' is not defined under credentials"),
                    ));
                }
            }
            if u.max_concurrent == 0 {
                return Err(err(
                    format!("{path}.max_concurrent"),
                    "must be greater than 0",
                ));
            }
            if !(0.0..=1.0).contains(&u.breaker.error_rate) {
                return Err(err(
                    format!("{path}.breaker.error_rate"),
                    "must be between 0 and 1",
                ));
            }
            if u.mock.chunks == 0 {
                return Err(err(format!("{path}.mock.chunks"), "must be at least 1"));
            }
        }
        for (name, m) in &self.models {
            let path = format!("models.{name}");
            if m.targets.is_empty() {
                return Err(err(
                    format!("{path}.targets"),
                    "needs at least one upstream",
                ));
            }
            for (i, t) in m.targets.iter().enumerate() {
                if !self.upstreams.contains_key(&t.upstream) {
                    return Err(err(
                        format!("{path}.targets[{i}].upstream"),
                        format!("upstream '{}' is not defined under upstreams", t.upstream),
                    ));
                }
            }
            let fallbacks = m
                .fallbacks
                .iter()
                .enumerate()
                .map(|(i, f)| (format!("{path}.fallbacks[{i}]"), f));
            let on = m
                .fallback_on
                .iter()
                .map(|(r, f)| (format!("{path}.fallback_on.{r:?}"), f));
            for (fpath, f) in fallbacks.chain(on) {
                if f == name || !self.models.contains_key(f) {
                    return Err(err(
                        fpath,
                        format!("fallback model '{f}' is not another model defined under models"),
                    ));
                }
            }
            if m.retry.max_attempts == 0 {
                return Err(err(
                    format!("{path}.retry.max_attempts"),
                    "must be at least 1",
                ));
            }
            if !(0.0..=10.0).contains(&m.retry.budget_ratio) {
                return Err(err(
                    format!("{path}.retry.budget_ratio"),
                    "must be between 0 and 10",
                ));
            }
        }
        let mut fingerprints = std::collections::HashMap::new();
        for (name, t) in &self.teams {
            let path = format!("teams.{name}");
            for (i, f) in t.client_cert_sha256.iter().enumerate() {
                let fpath = format!("{path}.client_cert_sha256[{i}]");
                let Some(bytes) = parse_fingerprint(f) else {
                    return Err(err(fpath, "must be a SHA-256 fingerprint: 64 hex digits"));
                };
                if let Some(other) = fingerprints.insert(bytes, name) {
                    return Err(err(
                        fpath,
                        format!("the same certificate is already listed for team '{other}'"),
                    ));
                }
            }
            for (i, m) in t.models.iter().enumerate() {
                if m != "*" && !self.models.contains_key(m) {
                    return Err(err(
                        format!("{path}.models[{i}]"),
                        format!("model '{m}' is not defined under models"),
                    ));
                }
            }
            check_limits(&path, &t.limits)?;
            if let Some(tp) = &t.temperature {
                if let (Some(lo), Some(hi)) = (tp.min, tp.max) {
                    if lo > hi {
                        return Err(err(format!("{path}.temperature"), "min is above max"));
                    }
                }
            }
        }
        if let Some(a) = &self.admin {
            check_key_source(&a.sha256, &a.key, "admin", env, &mut warnings)?;
            a.console.validate()?;
        }
        if let Some(st) = &self.store {
            st.validate(env, &mut warnings)?;
        }
        for (i, k) in self.keys.iter().enumerate() {
            let path = format!("keys[{i}]");
            if !self.teams.contains_key(&k.team) {
                return Err(err(
                    format!("{path}.team"),
                    format!("team '{}' is not defined under teams", k.team),
                ));
            }
            check_key_source(&k.sha256, &k.key, &path, env, &mut warnings)?;
            check_limits(&path, &k.limits)?;
        }
        check_admin_key_is_not_a_client_key(self, env)?;
        self.validate_limits(env, &mut warnings)?;
        self.validate_cache(env, &mut warnings)?;
        if let Some(t) = &self.telemetry.traces {
            t.validate(env, &mut warnings)?;
        }
        Ok(warnings)
    }
}
