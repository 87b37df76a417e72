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
            .ok_or_else(|| format!("duration '{s}' needs a unit (ms, s, m, h)"))?;
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("duration '{s}' has no valid number"))?;
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return Err(format!("duration '{s}' has an unknown unit '{unit}'")),
        };
        if !(0.0..=31_536_000.0).contains(&secs) {
            return Err(format!("duration '{s}' is out of range"));
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
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
    /// Where keys made through the admin API, teams, usage and audit live; without it only
    /// config keys work and no usage rows are written.
    #[serde(default)]
    pub store: Option<StoreConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://tollgate.db?mode=rwc` (embedded) or `postgres://user@host/db`; may be an
    /// `${ENV}` or `file:` reference (a PostgreSQL URL can carry a password).
    pub url: SecretRef,
    /// Connections in the pool.
    #[serde(default = "default_store_connections")]
    pub max_connections: u32,
    /// How long a store key lookup is answered from memory before it is re-read in the
    /// background; a change reaches every replica within twice this. At most 2.5s.
    #[serde(default = "default_key_cache_ttl")]
    pub key_cache_ttl: Dur,
    /// While the store cannot be read, cached store keys keep working this long.
    #[serde(default = "default_stale_if_error")]
    pub stale_if_error: Dur,
    #[serde(default)]
    pub usage: UsageWriterConfig,
}

fn default_store_connections() -> u32 {
    8
}
fn default_key_cache_ttl() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_stale_if_error() -> Dur {
    secs(60)
}

/// The usage writer: a bounded queue between requests and the store, written in batches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageWriterConfig {
    /// Rows the queue holds while the store is slow or down.
    pub queue: usize,
    /// Most rows in one batch (one transaction); at most 2000.
    pub batch_size: usize,
    /// A batch is written when full or when its first row has waited this long.
    pub batch_interval: Dur,
    /// What happens to a row when the queue is full: `spill` or `block`.
    pub on_full: OnFull,
    /// With `on_full: block`, how long a row waits for room before it is spilled.
    pub block_timeout: Dur,
    /// The local JSON-lines file rows spill to; replayed into the store later.
    pub spill_path: std::path::PathBuf,
    /// On shutdown, how long the writer may take to write what is queued (the rest spills).
    pub flush_timeout: Dur,
}

impl Default for UsageWriterConfig {
    fn default() -> Self {
        UsageWriterConfig {
            queue: 65_536,
            batch_size: 1000,
            batch_interval: Dur(Duration::from_millis(100)),
            on_full: OnFull::Spill,
            block_timeout: Dur(Duration::from_millis(100)),
            spill_path: "tollgate-usage.spill.jsonl".into(),
            flush_timeout: secs(10),
        }
    }
}

/// The full-queue policy of the usage writer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Append the row to the spill file.
    #[default]
    Spill,
    /// Wait (off the request path) up to `block_timeout` for room, then spill.
    Block,
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum CredentialConfig {
    /// A fixed key.
    Static {
        secret: SecretRef,
        #[serde(default)]
        placement: Placement,
    },
}

/// Where a credential goes on the upstream request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Placement {
    /// `Authorization: Bearer <token>`.
    #[default]
    Bearer,
    /// A named header, e.g. `api-key: <token>`.
    Header(String),
    /// A query parameter, e.g. `?access_token=<token>`.
    Query(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Any OpenAI-compatible server: vLLM, OpenAI, DeepSeek, Zhipu's compatible endpoint.
    Openai,
    /// The built-in mock model: answers without any network.
    Mock,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub provider: ProviderKind,
    /// Base URL including the version path, e.g. `http://127.0.0.1:8000/v1`. Not used by `mock`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Name of an entry under `credentials`; none for open upstreams.
    #[serde(default)]
    pub credential: Option<String>,
    /// Model name sent upstream in place of the client's.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Requests in flight to this upstream at once; beyond it Tollgate answers 503.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    /// Behaviour of the `mock` provider.
    #[serde(default)]
    pub mock: MockConfig,
}

fn default_max_concurrent() -> usize {
    1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP (and TLS) connect.
    pub connect: Dur,
    /// From sending the request to the response headers.
    pub first_byte: Dur,
    /// Longest gap between two stream chunks.
    pub idle: Dur,
    /// The whole request, streams included.
    pub total: Dur,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: secs(5),
            first_byte: secs(60),
            idle: secs(60),
            total: secs(600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockConfig {
    /// Stream chunks per answer (the reply is split into this many pieces).
    pub chunks: usize,
    /// Delay between stream chunks.
    pub chunk_delay: Dur,
    /// Delay before the answer starts.
    pub latency: Dur,
    /// Fixed prompt token count to report; counted from the request when absent.
    pub prompt_tokens: Option<u64>,
    /// Fixed completion token count to report; counted from the reply when absent.
    pub completion_tokens: Option<u64>,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            chunks: 8,
            chunk_delay: Dur(Duration::ZERO),
            latency: Dur(Duration::ZERO),
            prompt_tokens: None,
            completion_tokens: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Upstreams serving this model. One is enough today; routing picks among several.
    pub targets: Vec<TargetConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub upstream: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeamConfig {
    /// Client-facing models this team may use; `*` for all.
    pub models: Vec<String>,
    pub max_tokens: Option<RangeDefault<u64>>,
    pub temperature: Option<TemperaturePolicy>,
    /// Most messages in one chat request.
    pub max_messages: Option<usize>,
    /// Largest body this team may send (capped by `server.max_body_bytes`).
    pub max_body_bytes: Option<usize>,
}

/// A default applied when the client sends nothing, and a cap.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeDefault<T> {
    pub default: Option<T>,
    pub max: Option<T>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemperaturePolicy {
    pub default: Option<f64>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// A display name, used as the key id in logs.
    pub name: String,
    pub team: String,
    /// SHA-256 of the key, hex.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The key itself, as an `${ENV}` or `file:` reference.
    #[serde(default)]
    pub key: Option<SecretRef>,
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
            let inner = e.into_inner();
            let message = match inner.location() {
                Some(loc) => format!("{inner} (line {})", loc.line()),
                None => inner.to_string(),
            };
            err(if path == "." { String::new() } else { path }, message)
        })
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("", format!("cannot read {}: {e}", path.display())))?;
        Config::parse(&text)
    }

    /// Check cross references and resolve every secret. Returns warnings (e.g. literal secrets);
    /// the first hard error aborts.
    pub fn validate(&self, env: &dyn EnvSource) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        let s = &self.server;
        if s.max_body_bytes == 0 {
            return Err(err("server.max_body_bytes", "must be greater than 0"));
        }
        if s.max_in_flight == 0 {
            return Err(err("server.max_in_flight", "must be greater than 0"));
        }
        if s.cors.allow_credentials && s.cors.allowed_origins.iter().any(|o| o == "*") {
            return Err(err(
                "server.cors.allowed_origins",
                "'*' cannot be combined with allow_credentials: list the origins",
            ));
        }
        for (i, h) in s.forward_headers.iter().enumerate() {
            let lower = h.to_ascii_lowercase();
            if http::HeaderName::from_bytes(lower.as_bytes()).is_err()
                || matches!(
                    lower.as_str(),
                    "authorization" | "x-api-key" | "cookie" | "host" | "content-length"
                )
            {
                return Err(err(
                    format!("server.forward_headers[{i}]"),
                    format!("'{h}' may not be forwarded"),
                ));
            }
        }
        for (name, c) in &self.credentials {
            let path = format!("credentials.{name}");
            match c {
                CredentialConfig::Static { secret, placement } => {
                    check_secret(secret, &format!("{path}.secret"), env, &mut warnings)?;
                    check_placement(placement, &format!("{path}.placement"))?;
                }
            }
        }
        if self.upstreams.is_empty() {
            return Err(err("upstreams", "at least one upstream is required"));
        }
        for (name, u) in &self.upstreams {
            let path = format!("upstreams.{name}");
            if u.provider == ProviderKind::Openai {
                match &u.base_url {
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
        }
        for (name, t) in &self.teams {
            let path = format!("teams.{name}");
            for (i, m) in t.models.iter().enumerate() {
                if m != "*" && !self.models.contains_key(m) {
                    return Err(err(
                        format!("{path}.models[{i}]"),
                        format!("model '{m}' is not defined under models"),
                    ));
                }
            }
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
        }
        Ok(warnings)
    }
}

impl StoreConfig {
    fn validate(&self, env: &dyn EnvSource, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
        let url = self.url.resolve(env).map_err(|m| err("store.url", m))?;
        let u = url.expose();
        let pg = u.starts_with("postgres:") || u.starts_with("postgresql:");
        if !pg && !u.starts_with("sqlite:") {
            return Err(err("store.url", "must start with sqlite: or postgres:"));
        }
        if pg
            && !self.url.is_reference()
            && u.contains('@')
            && u.split('@')
                .next()
                .is_some_and(|a| a.matches(':').count() > 1)
        {
            warnings.push("store.url: a password written literally in the config; use ${ENV_VAR} or file:PATH".into());
        }
        if self.max_connections == 0 {
            return Err(err("store.max_connections", "must be greater than 0"));
        }
        let ttl = self.key_cache_ttl.0;
        if ttl.is_zero() || ttl > Duration::from_millis(2500) {
            return Err(err(
                "store.key_cache_ttl",
                "must be above 0 and at most 2.5s (a revoked key must be refused everywhere within 5 s)",
            ));
        }
        let u = &self.usage;
        if u.batch_size == 0 || u.batch_size > 2000 {
            return Err(err("store.usage.batch_size", "must be between 1 and 2000"));
        }
        if u.queue < u.batch_size {
            return Err(err("store.usage.queue", "must be at least batch_size"));
        }
        if u.spill_path.as_os_str().is_empty() {
            return Err(err("store.usage.spill_path", "is required"));
        }
        Ok(())
    }
}

/// A key is given as exactly one of a SHA-256 or a secret reference.
fn check_key_source(
    sha256: &Option<String>,
    key: &Option<SecretRef>,
    path: &str,
    env: &dyn EnvSource,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    match (sha256, key) {
        (Some(h), None) => {
            if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(err(format!("{path}.sha256"), "must be 64 hex digits"));
            }
        }
        (None, Some(r)) => check_secret(r, &format!("{path}.key"), env, warnings)?,
        _ => {
            return Err(err(
                path,
                "give exactly one of sha256 (the key's SHA-256, hex) or key (${ENV} or file:)",
            ))
        }
    }
    Ok(())
}

fn check_secret(
    r: &SecretRef,
    path: &str,
    env: &dyn EnvSource,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    r.resolve(env).map_err(|m| err(path, m))?;
    if !r.is_reference() {
        warnings.push(format!(
            "{path}: secret written literally in the config; use ${{ENV_VAR}} or file:PATH"
        ));
    }
    Ok(())
}

fn check_placement(p: &Placement, path: &str) -> Result<(), ConfigError> {
    match p {
        Placement::Header(h) if http::HeaderName::from_bytes(h.as_bytes()).is_err() => {
            Err(err(path, format!("'{h}' is not a valid header name")))
        }
        Placement::Query(q) if q.is_empty() => Err(err(path, "query parameter name is empty")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const BASE: &str = r#"
upstreams:
  m: { provider: mock }
models:
  mock-gpt: { targets: [ { upstream: m } ] }
teams:
  t: { models: ["*"] }
"#;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(
            Dur::parse("250ms").map(|d| d.0),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(Dur::parse("2m").map(|d| d.0), Ok(Duration::from_secs(120)));
        assert!(Dur::parse("5").is_err());
        assert!(Dur::parse("5y").is_err());
    }

    #[test]
    fn unknown_field_names_path_and_line() {
        let text = format!("{BASE}\nserver:\n  listen: 127.0.0.1:1\n  bogus: 1\n");
        let e = Config::parse(&text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("bogus"), "{e}");
        assert!(e.contains("line 11"), "{e}");
    }

    #[test]
    fn undefined_upstream_is_named() {
        let text = BASE.replace("upstream: m", "upstream: nope");
        let cfg = Config::parse(&text).map_err(|e| e.to_string());
        let e = cfg.and_then(|c| c.validate(&HashMap::new()).map_err(|e| e.to_string()));
        assert_eq!(
            e.err().as_deref(),
            Some("models.mock-gpt.targets[0].upstream: upstream 'nope' is not defined under upstreams")
        );
    }
}
