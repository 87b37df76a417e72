//! The store: teams, keys, usage and audit in SQLite (embedded) or PostgreSQL (scale-out).
//!
//! [`Store`] is an enum over sqlx's native `SqlitePool` and `PgPool` rather than `AnyPool`:
//! every query is written once (the [`on_pool!`] macro expands it for each backend, and both
//! accept `$1` placeholders), but decoding stays native, with no `Any` type mapping in between
//! (which cannot decode PostgreSQL's NUMERIC or SQLite's untyped expressions reliably) and no
//! `install_default_drivers` global. The one schema in `migrations/` is portable by construction
//! (TEXT ids, BIGINT epoch milliseconds, BIGINT 0/1 flags, JSON text lists), embedded at build
//! time and applied at start: PostgreSQL's migrator holds an advisory lock, so two replicas
//! starting at once apply it once; SQLite has no such lock, so a losing racer retries.
//!
//! What is here: connecting and migrating ([`Store::connect`]), the admin operations on teams
//! and keys, each with its audit row in the same transaction ([`records`]), the key cache the
//! request path reads instead of the database ([`key_cache`]), usage rows and their queries
//! ([`usage`]), usage over time and recent failures ([`series`]) and the batched, off-path
//! usage writer ([`writer`]). [`open`] starts all of it.
//!
//! Config keys and teams stay in the config file and are read-only here; store teams add to
//! them and a name clash is refused. Failure policy: if the store is unreachable the request
//! path keeps serving config keys and cached store keys (see [`key_cache`]), and usage rows
//! queue, then spill to a local file (see [`writer`]); nothing is dropped silently.

pub mod batches;
pub mod files;
mod key_lookup;
pub mod records;
pub mod series;
pub mod usage;
pub mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::config::{PostgresTlsConfig, SslMode, StoreConfig};
use crate::secret::EnvSource;

pub use records::{KeyRecord, TeamRecord};
pub use usage::UsageRow;
pub use writer::{UsageSink, UsageWriter};

/// The migrations, embedded at build time; one set for both backends. Listed by hand rather than
/// with `sqlx::migrate!`, which would pull sqlx's proc-macro crates (and a second build of both
/// database drivers) into every build; the version, description and SQL are what `migrate!`
/// read from the file names, so databases migrated before keep their checksums.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "store", include_str!("../../migrations/0001_store.sql")),
    (2, "batch", include_str!("../../migrations/0002_batch.sql")),
];

/// Hands [`MIGRATIONS`] to sqlx's migrator.
#[derive(Debug)]
struct Embedded;

impl<'s> sqlx::migrate::MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> futures_util::future::BoxFuture<
        's,
        Result<Vec<sqlx::migrate::Migration>, sqlx::error::BoxDynError>,
    > {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, description, sql)| {
                    sqlx::migrate::Migration::new(
                        *version,
                        (*description).into(),
                        sqlx::migrate::MigrationType::Simple,
                        (*sql).into(),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// A connection pool to one of the two backends. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

#[derive(Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Pg(PgPool),
}

/// Run `$body` with `$p` bound to whichever pool this is; the body is compiled once per backend.
macro_rules! on_pool {
    ($store:expr, $p:ident => $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Sqlite($p) => $body,
            $crate::store::Pool::Pg($p) => $body,
        }
    };
}
pub(crate) use on_pool;

/// What went wrong in a store operation; the admin API maps it to a status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A database error already reported to someone else (shared by concurrent lookups).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for crate::error::ApiError {
    fn from(e: StoreError) -> Self {
        use crate::error::ApiError;
        match e {
            StoreError::NotFound(message) => ApiError::NotFound { message },
            StoreError::Conflict(message) => ApiError::Conflict { message },
            StoreError::Invalid(message) => ApiError::invalid(message, None),
            StoreError::Db(e) => {
                tracing::warn!(error = %e, "store operation failed");
                ApiError::StoreUnavailable
            }
            StoreError::Unavailable(e) => {
                tracing::warn!(error = %e, "store operation failed");
                ApiError::StoreUnavailable
            }
        }
    }
}

/// SQLite's page cache per connection (`PRAGMA cache_size`, negative = KiB): 512 KiB instead of
/// SQLite's 2 MiB. The gateway's writes append (usage rows, batch lines) and its reads are
/// indexed lookups, so a small cache costs little; the operating system's page cache still
/// holds the file. Each pooled connection has its own cache, allocated by SQLite outside the
/// Rust allocator (docs/BENCHMARKS.md, governed peak memory).
const SQLITE_CACHE_SIZE: &str = "-512";

impl Store {
    /// Connect to `url` (`sqlite:…` or `postgres:…`) and apply the migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, String> {
        Store::connect_tls(url, max_connections, None, &crate::secret::ProcessEnv).await
    }

    /// [`Store::connect`] with PostgreSQL TLS settings (`store.tls`), which override the URL's.
    pub async fn connect_tls(
        url: &str,
        max_connections: u32,
        tls: Option<&PostgresTlsConfig>,
        env: &dyn EnvSource,
    ) -> Result<Store, String> {
        let store = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|e| format!("store.url: {e}"))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .pragma("cache_size", SQLITE_CACHE_SIZE);
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections.max(1))
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await
                .map_err(|e| format!("cannot open the SQLite store: {e}"))?;
            Store {
                pool: Pool::Sqlite(pool),
            }
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let opts = PgConnectOptions::from_str(url).map_err(|e| format!("store.url: {e}"))?;
            let opts = match tls {
                Some(t) => pg_tls(opts, t, env)?,
                None => opts,
            };
            let pool = PgPoolOptions::new()
                .max_connections(max_connections.max(1))
                // The writer retries with backoff; a short acquire keeps its loop responsive.
                .acquire_timeout(Duration::from_secs(3))
                .connect_with(opts)
                .await
                .map_err(|e| format!("cannot connect to the PostgreSQL store: {e}"))?;
            Store {
                pool: Pool::Pg(pool),
            }
        } else {
            return Err("store.url must start with sqlite: or postgres:".into());
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Apply pending migrations. PostgreSQL serialises concurrent runs with an advisory lock;
    /// SQLite has none, so a replica that lost the race (its insert into the migrations table
    /// fails) tries again and then finds the migration applied.
    async fn migrate(&self) -> Result<(), String> {
        let migrator = sqlx::migrate::Migrator::new(Embedded)
            .await
            .map_err(|e| e.to_string())?;
        let mut last = String::new();
        for attempt in 0..5 {
            let r = match &self.pool {
                Pool::Sqlite(p) => migrator.run(p).await,
                Pool::Pg(p) => migrator.run(p).await,
            };
            match r {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last = e.to_string();
                    tracing::warn!(attempt, error = %e, "store migration failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
                }
            }
        }
        Err(format!("store migration failed: {last}"))
    }

    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Pg(_) => "postgres",
        }
    }

    /// Close the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        on_pool!(self, p => p.close().await)
    }
}

/// Limits and budget of a key or a team: the config's one shape, stored as five columns
/// (`records`). Enforced by the limits module, not here; unset means "no limit at this level".
pub use crate::config::Limits;

/// The window a budget applies to: the config's vocabulary.
pub use crate::config::BudgetPeriod;

/// Milliseconds since the Unix epoch: the store's one time format.
/// `rows` in chunks whose sizes are powers of two, at most `max`: a multi-row `INSERT` has one
/// statement text per chunk size, so a connection keeps at most `log2(max) + 1` of them prepared
/// however the batches it is given vary (a text per size piled up ~1.4 KB per request).
pub(crate) fn sized_chunks<T>(rows: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        let n = rest.len().min(max);
        if n == 0 {
            return None;
        }
        let (head, tail) = rest.split_at(1 << n.ilog2());
        rest = tail;
        Some(head)
    })
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parse a point in time for queries: `2024-05-01`, `2024-05-01T12:00:00Z`, epoch seconds, or
/// a duration meaning "that long ago" (`90m`, `24h`, `7d`).
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Some(days) = s.strip_suffix('d').and_then(|n| n.parse::<u64>().ok()) {
        return Ok(now_ms() - (days as i64) * 86_400_000);
    }
    if s.ends_with(['s', 'm', 'h']) && s.starts_with(|c: char| c.is_ascii_digit()) {
        if let Ok(d) = crate::config::Dur::parse(s) {
            return Ok(now_ms() - d.0.as_millis() as i64);
        }
    }
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(secs * 1000);
    }
    let bad = || format!("'{s}' is not a time (2024-05-01, 2024-05-01T12:00:00Z, 24h, 7d)");
    let (date, time) = match s.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t.trim_end_matches('Z'))),
        None => (s, None),
    };
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (Some(Ok(y)), Some(Ok(m)), Some(Ok(day)), None) = (d.next(), d.next(), d.next(), d.next())
    else {
        return Err(bad());
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return Err(bad());
    }
    let mut secs = days_from_civil(y, m, day) * 86_400;
    if let Some(t) = time {
        let mut parts = t.split(':').map(|p| p.parse::<f64>());
        let h = parts.next().and_then(Result::ok).ok_or_else(bad)?;
        let mi = parts.next().and_then(Result::ok).unwrap_or(0.0);
        let se = parts.next().and_then(Result::ok).unwrap_or(0.0);
        secs += (h * 3600.0 + mi * 60.0 + se) as i64;
    }
    Ok(secs * 1000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` of a day number since the epoch.
pub fn civil_from_days(z: i64) -> String {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Everything the running gateway holds of the store.
pub struct Handle {
    pub db: Store,
    /// How long the request path's key cache (`auth::KeyCache`) may answer from a read.
    pub key_cache_ttl: std::time::Duration,
    pub stale_if_error: std::time::Duration,
    /// Where the ledger sends usage rows.
    pub usage: UsageSink,
}

/// Connect, migrate, and start the key cache and the usage writer. The returned writer must be
/// closed on shutdown ([`UsageWriter::close`]) to flush what is queued.
pub async fn open(
    cfg: &StoreConfig,
    env: &dyn EnvSource,
) -> Result<(Arc<Handle>, UsageWriter), String> {
    let url = cfg.connect_url(env)?;
    let db = Store::connect_tls(url.expose(), cfg.max_connections, cfg.tls.as_ref(), env).await?;
    let (usage, writer) = writer::start(db.clone(), &cfg.usage)?;
    tracing::info!(backend = db.backend(), "store ready");
    let handle = Handle {
        db,
        key_cache_ttl: cfg.key_cache_ttl.0,
        stale_if_error: cfg.stale_if_error.0,
        usage,
    };
    Ok((Arc::new(handle), writer))
}

/// `store.tls` applied to the URL's options.
fn pg_tls(
    mut opts: PgConnectOptions,
    t: &PostgresTlsConfig,
    env: &dyn EnvSource,
) -> Result<PgConnectOptions, String> {
    use sqlx::postgres::PgSslMode as M;
    if let Some(mode) = t.sslmode {
        opts = opts.ssl_mode(match mode {
            SslMode::Disable => M::Disable,
            SslMode::Allow => M::Allow,
            SslMode::Prefer => M::Prefer,
            SslMode::Require => M::Require,
            SslMode::VerifyCa => M::VerifyCa,
            SslMode::VerifyFull => M::VerifyFull,
        });
    }
    if let Some(ca) = &t.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| format!("store.tls.ca_file: cannot read {}: {e}", ca.display()))?;
        opts = opts.ssl_root_cert_from_pem(pem);
    }
    if let (Some(cert), Some(key)) = (&t.client_cert_file, &t.client_key) {
        let pem = std::fs::read(cert).map_err(|e| {
            format!(
                "store.tls.client_cert_file: cannot read {}: {e}",
                cert.display()
            )
        })?;
        let key = key
            .resolve(env)
            .map_err(|e| format!("store.tls.client_key: {e}"))?;
        opts = opts
            .ssl_client_cert_from_pem(pem)
            .ssl_client_key_from_pem(key.expose().as_bytes());
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunks_are_powers_of_two_in_order_and_cover_every_row() {
        let rows: Vec<u32> = (0..1000).collect();
        let sizes: Vec<usize> = super::sized_chunks(&rows, 256).map(<[u32]>::len).collect();
        assert_eq!(sizes, [256, 256, 256, 128, 64, 32, 8]);
        let joined: Vec<u32> = super::sized_chunks(&rows, 256).flatten().copied().collect();
        assert_eq!(joined, rows);
        assert_eq!(super::sized_chunks(&rows[..1], 256).count(), 1);
        assert_eq!(super::sized_chunks::<u32>(&[], 256).count(), 0);
    }

    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(parse_time("1970-01-01"), Ok(0));
        assert_eq!(parse_time("2024-03-01T00:00:01Z"), Ok(1_709_251_201_000));
        assert_eq!(civil_from_days(1_709_251_201 / 86_400), "2024-03-01");
        assert_eq!(civil_from_days(0), "1970-01-01");
        assert!(parse_time("2024-13-01").is_err());
        assert!(parse_time("soon").is_err());
        let ago = now_ms() - parse_time("2d").unwrap_or(0);
        assert!((172_790_000..172_810_000).contains(&ago), "{ago}");
        let ago = now_ms() - parse_time("90m").unwrap_or(0);
        assert!((5_390_000..5_410_000).contains(&ago), "{ago}");
    }
}
