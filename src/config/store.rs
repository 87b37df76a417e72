//! Config of the store (`store:`) and its usage writer.

use super::*;

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
    /// TLS to PostgreSQL: `sslmode`, the CA bundle, a client certificate. These override the
    /// same settings written in the URL (`?sslmode=…&sslrootcert=…`). Not with SQLite.
    #[serde(default)]
    pub tls: Option<PostgresTlsConfig>,
    /// The directory of the config file this came from: a relative SQLite path is resolved
    /// against it (set by [`Config::load`]; `None` for a config parsed from text).
    #[serde(skip)]
    pub base_dir: Option<std::path::PathBuf>,
}

impl StoreConfig {
    /// The URL to connect to: `url` resolved, with a relative SQLite path made relative to the
    /// config file's directory (so a command run from elsewhere opens the same database).
    pub fn connect_url(&self, env: &dyn EnvSource) -> Result<crate::secret::Secret, String> {
        let url = self.url.resolve(env)?;
        Ok(match &self.base_dir {
            Some(dir) => {
                sqlite_relative_to(url.expose(), dir).map_or(url, crate::secret::Secret::new)
            }
            None => url,
        })
    }
}

/// `sqlite://data.db?mode=rwc` with `dir` = `/etc/tollgate` → `sqlite:///etc/tollgate/data.db?mode=rwc`;
/// `None` when `url` is not a relative SQLite file path (PostgreSQL, an absolute path, memory).
pub fn sqlite_relative_to(url: &str, dir: &std::path::Path) -> Option<String> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = match rest.find('?') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if path.is_empty() || path.starts_with('/') || path.starts_with(":memory:") {
        return None;
    }
    let dir = if dir.as_os_str().is_empty() {
        std::env::current_dir().ok()?
    } else if dir.is_relative() {
        std::env::current_dir().ok()?.join(dir)
    } else {
        dir.to_path_buf()
    };
    Some(format!("sqlite://{}{query}", dir.join(path).display()))
}

/// TLS to the PostgreSQL store.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresTlsConfig {
    /// libpq's `sslmode`: `disable`, `allow`, `prefer` (the default), `require` (encrypted, the
    /// certificate not checked), `verify-ca` (signed by `ca_file`), `verify-full` (and the
    /// host name matches).
    pub sslmode: Option<SslMode>,
    /// A PEM bundle of the CAs the server's certificate may chain to (`sslrootcert`).
    pub ca_file: Option<std::path::PathBuf>,
    /// A PEM client certificate (`sslcert`); needs `client_key`.
    pub client_cert_file: Option<std::path::PathBuf>,
    /// Its private key (PEM) as a secret reference (`file:/path` or `${ENV}`).
    pub client_key: Option<SecretRef>,
}

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
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
