//! Teams, keys and the audit trail: the admin operations, shared by the admin API and the CLI.
//!
//! Every change writes its audit row in the same transaction, so a change without its audit row
//! (or the other way round) cannot happen. Keys are stored only as their SHA-256 (hex) with a
//! short display prefix; the plaintext exists once, in the answer to create or rotate.

use rand::distr::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;

use super::{now_ms, on_pool, BudgetPeriod, Limits, Store, StoreError};
use crate::config::BudgetConfig;

/// Plaintext keys made here start with this.
pub const KEY_PREFIX: &str = "sk-tg-";
/// Characters of the plaintext kept for display: `sk-tg-` and four random characters, enough to
/// tell keys apart in a list, far too few to matter for guessing (32 random characters).
pub const DISPLAY_PREFIX_LEN: usize = 10;

/// A team that lives in the store.
#[derive(Debug, Clone, Serialize)]
pub struct TeamRecord {
    pub name: String,
    /// Models the team may use; `*` for all.
    pub models: Vec<String>,
    #[serde(flatten)]
    pub limits: Limits,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A key that lives in the store. Its hash is never serialized.
#[derive(Debug, Clone, Serialize)]
pub struct KeyRecord {
    pub id: String,
    #[serde(skip)]
    pub hash: String,
    pub prefix: String,
    pub name: String,
    pub team: String,
    /// Narrows the team's models; `None`: the team's.
    pub models: Option<Vec<String>>,
    #[serde(flatten)]
    pub limits: Limits,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub rotated_to: Option<String>,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

impl KeyRecord {
    /// Usable now: not revoked, not expired.
    pub fn active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// Body of "create a team".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTeam {
    pub name: String,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(flatten)]
    pub limits: Limits,
}

/// Body of "create a key".
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub team: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Seconds from now until the key stops working.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
    #[serde(flatten)]
    pub limits: Limits,
}

/// A partial update of a [`Limits`], with the same field names: an absent field is left alone,
/// `null` clears it; `budget` is set or cleared whole.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    #[serde(default, alias = "rpm", deserialize_with = "some")]
    pub requests_per_minute: Option<Option<u64>>,
    #[serde(default, alias = "tpm", deserialize_with = "some")]
    pub tokens_per_minute: Option<Option<u64>>,
    #[serde(default, deserialize_with = "some")]
    pub max_concurrent: Option<Option<u64>>,
    #[serde(default, deserialize_with = "some")]
    pub budget: Option<Option<BudgetConfig>>,
}

impl LimitsPatch {
    fn apply(&self, l: &mut Limits) {
        if let Some(v) = self.requests_per_minute {
            l.requests_per_minute = v;
        }
        if let Some(v) = self.tokens_per_minute {
            l.tokens_per_minute = v;
        }
        if let Some(v) = self.max_concurrent {
            l.max_concurrent = v;
        }
        if let Some(v) = self.budget {
            l.budget = v;
        }
    }
}

/// Body of "update a key".
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "some")]
    pub models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "some")]
    pub expires_at: Option<Option<i64>>,
    #[serde(flatten)]
    pub limits: LimitsPatch,
}

/// Body of "update a team".
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamPatch {
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(flatten)]
    pub limits: LimitsPatch,
}

fn some<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A new plaintext key and its stored form.
pub struct Minted {
    pub plaintext: String,
    pub hash: String,
    pub prefix: String,
}

pub fn mint_key() -> Minted {
    let random: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    let plaintext = format!("{KEY_PREFIX}{random}");
    Minted {
        hash: hex::encode(crate::secret::hash_key(&plaintext)),
        prefix: plaintext[..DISPLAY_PREFIX_LEN].to_owned(),
        plaintext,
    }
}

fn new_id(prefix: &str) -> String {
    let u = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}{}", &u[..16])
}

/// Limits the config would refuse are refused here too, with the same words.
fn valid(l: &Limits) -> Result<(), StoreError> {
    crate::config::check_limits("", l).map_err(|e| StoreError::Invalid(e.to_string()))
}

pub(super) fn to_u(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}
fn to_i(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

fn parse_list(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

const KEY_COLS: &str = "id, hash, prefix, name, team, models, rpm, tpm, max_concurrent, \
    budget_usd, budget_period, expires_at, revoked_at, rotated_to, created_at, last_used_at";
const TEAM_COLS: &str =
    "name, models, rpm, tpm, max_concurrent, budget_usd, budget_period, created_at, updated_at";

macro_rules! limits_from_row {
    ($r:expr) => {
        limits_from_row!($r, "")
    };
    ($r:expr, $prefix:literal) => {{
        use sqlx::Row;
        stored_limits(
            to_u($r.try_get(concat!($prefix, "rpm"))?),
            to_u($r.try_get(concat!($prefix, "tpm"))?),
            to_u($r.try_get(concat!($prefix, "max_concurrent"))?),
            $r.try_get(concat!($prefix, "budget_usd"))?,
            $r.try_get::<Option<String>, _>(concat!($prefix, "budget_period"))?,
        )
    }};
}
pub(super) use limits_from_row;

/// The five columns of a stored [`Limits`] (a budget stored without a period is monthly).
pub(super) fn stored_limits(
    rpm: Option<u64>,
    tpm: Option<u64>,
    max_concurrent: Option<u64>,
    budget_usd: Option<f64>,
    budget_period: Option<String>,
) -> Limits {
    Limits {
        requests_per_minute: rpm,
        tokens_per_minute: tpm,
        max_concurrent,
        budget: budget_usd.map(|amount_usd| BudgetConfig {
            amount_usd,
            period: budget_period
                .as_deref()
                .and_then(BudgetPeriod::parse)
                .unwrap_or_default(),
        }),
    }
}

/// Binds a [`Limits`] as its five columns, in the order `rpm, tpm, max_concurrent, budget_usd,
/// budget_period`: the one place that knows how limits are stored.
trait BindLimits: Sized {
    fn bind_limits(self, l: &Limits) -> Self;
}

impl<'q, DB: sqlx::Database> BindLimits
    for sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<f64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    fn bind_limits(self, l: &Limits) -> Self {
        self.bind(to_i(l.requests_per_minute))
            .bind(to_i(l.tokens_per_minute))
            .bind(to_i(l.max_concurrent))
            .bind(l.budget.map(|b| b.amount_usd))
            .bind(l.budget.map(|b| -> &'q str { b.period.as_str() }))
    }
}

macro_rules! key_from_row {
    ($r:expr) => {{
        use sqlx::Row;
        KeyRecord {
            id: $r.try_get("id")?,
            hash: $r.try_get("hash")?,
            prefix: $r.try_get("prefix")?,
            name: $r.try_get("name")?,
            team: $r.try_get("team")?,
            models: $r
                .try_get::<Option<String>, _>("models")?
                .map(|m| parse_list(&m)),
            limits: limits_from_row!($r),
            expires_at: $r.try_get("expires_at")?,
            revoked_at: $r.try_get("revoked_at")?,
            rotated_to: $r.try_get("rotated_to")?,
            created_at: $r.try_get("created_at")?,
            last_used_at: $r.try_get("last_used_at")?,
        }
    }};
}

macro_rules! team_from_row {
    ($r:expr) => {{
        use sqlx::Row;
        TeamRecord {
            name: $r.try_get("name")?,
            models: parse_list(&$r.try_get::<String, _>("models")?),
            limits: limits_from_row!($r),
            created_at: $r.try_get("created_at")?,
            updated_at: $r.try_get("updated_at")?,
        }
    }};
}

/// Write one audit row inside the transaction `$tx`.
macro_rules! audit {
    ($tx:expr, $actor:expr, $action:expr, $target:expr, $detail:expr) => {
        sqlx::query(
            "INSERT INTO audit (id, ts, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(new_id("aud_"))
        .bind(now_ms())
        .bind($actor)
        .bind($action)
        .bind($target)
        .bind($detail.to_string())
        .execute(&mut *$tx)
        .await?
    };
}

macro_rules! insert_key {
    ($tx:expr, $rec:expr) => {
        sqlx::query(
            "INSERT INTO keys (id, hash, prefix, name, team, models, rpm, tpm, max_concurrent, \
             budget_usd, budget_period, expires_at, revoked_at, rotated_to, created_at, last_used_at) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,NULL,NULL,$13,NULL)",
        )
        .bind(&$rec.id)
        .bind(&$rec.hash)
        .bind(&$rec.prefix)
        .bind(&$rec.name)
        .bind(&$rec.team)
        .bind($rec.models.as_ref().map(|m| json!(m).to_string()))
        .bind_limits(&$rec.limits)
        .bind($rec.expires_at)
        .bind($rec.created_at)
        .execute(&mut *$tx)
        .await?
    };
}

/// One audit entry, for `GET /admin/audit`.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub ts: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
}

impl Store {
    pub async fn list_teams(&self) -> Result<Vec<TeamRecord>, StoreError> {
        let sql = format!("SELECT {TEAM_COLS} FROM teams ORDER BY name");
        on_pool!(self, p => {
            let rows = sqlx::query(&sql).fetch_all(p).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(team_from_row!(r));
            }
            Ok(out)
        })
    }

    pub async fn get_team(&self, name: &str) -> Result<Option<TeamRecord>, StoreError> {
        let sql = format!("SELECT {TEAM_COLS} FROM teams WHERE name = $1");
        on_pool!(self, p => {
            match sqlx::query(&sql).bind(name).fetch_optional(p).await? {
                Some(r) => Ok(Some(team_from_row!(r))),
                None => Ok(None),
            }
        })
    }

    /// Create a store team. The caller has checked the name against config teams and the
    /// models against the config.
    pub async fn create_team(&self, actor: &str, t: &NewTeam) -> Result<TeamRecord, StoreError> {
        if t.name.is_empty() || t.name.len() > 128 {
            return Err(StoreError::Invalid(
                "'name' must be 1 to 128 characters".into(),
            ));
        }
        valid(&t.limits)?;
        if self.get_team(&t.name).await?.is_some() {
            return Err(StoreError::Conflict(format!(
                "team '{}' already exists",
                t.name
            )));
        }
        let now = now_ms();
        let rec = TeamRecord {
            name: t.name.clone(),
            models: t.models.clone(),
            limits: t.limits,
            created_at: now,
            updated_at: now,
        };
        let detail = json!({"models": rec.models, "limits": rec.limits});
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let r = sqlx::query(
                "INSERT INTO teams (name, models, rpm, tpm, max_concurrent, budget_usd, \
                 budget_period, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
            )
            .bind(&rec.name)
            .bind(json!(rec.models).to_string())
            .bind_limits(&rec.limits)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await;
            if let Err(e) = r {
                return Err(unique_violation(e, || format!("team '{}' already exists", rec.name)));
            }
            audit!(tx, actor, "team.create", &rec.name, detail);
            tx.commit().await?;
        });
        Ok(rec)
    }

    pub async fn update_team(
        &self,
        actor: &str,
        name: &str,
        patch: &TeamPatch,
    ) -> Result<TeamRecord, StoreError> {
        let mut rec = self
            .get_team(name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("team '{name}' is not in the store")))?;
        if let Some(m) = &patch.models {
            rec.models = m.clone();
        }
        patch.limits.apply(&mut rec.limits);
        valid(&rec.limits)?;
        rec.updated_at = now_ms();
        let detail = json!({"models": rec.models, "limits": rec.limits});
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "UPDATE teams SET models = $2, rpm = $3, tpm = $4, max_concurrent = $5, \
                 budget_usd = $6, budget_period = $7, updated_at = $8 WHERE name = $1",
            )
            .bind(&rec.name)
            .bind(json!(rec.models).to_string())
            .bind_limits(&rec.limits)
            .bind(rec.updated_at)
            .execute(&mut *tx)
            .await?;
            audit!(tx, actor, "team.update", name, detail);
            tx.commit().await?;
        });
        Ok(rec)
    }

    /// Delete a store team: its keys that still work are revoked in the same transaction (a
    /// deleted team's key must not outlive it), its usage rows stay (they are history). Returns
    /// how many keys were revoked.
    pub async fn delete_team(&self, actor: &str, name: &str) -> Result<u64, StoreError> {
        if self.get_team(name).await?.is_none() {
            return Err(StoreError::NotFound(format!(
                "team '{name}' is not in the store"
            )));
        }
        let now = now_ms();
        let revoked;
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            revoked = sqlx::query(
                "UPDATE keys SET revoked_at = $2 WHERE team = $1 AND revoked_at IS NULL",
            )
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query("DELETE FROM teams WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            audit!(tx, actor, "team.delete", name, json!({"keys_revoked": revoked}));
            tx.commit().await?;
        });
        Ok(revoked)
    }

    pub async fn list_keys(&self, team: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        let sql = format!(
            "SELECT {KEY_COLS} FROM keys WHERE ($1 IS NULL OR team = $1) ORDER BY created_at, id"
        );
        on_pool!(self, p => {
            let rows = sqlx::query(&sql).bind(team).fetch_all(p).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(key_from_row!(r));
            }
            Ok(out)
        })
    }

    pub async fn get_key(&self, id: &str) -> Result<KeyRecord, StoreError> {
        let sql = format!("SELECT {KEY_COLS} FROM keys WHERE id = $1");
        on_pool!(self, p => {
            match sqlx::query(&sql).bind(id).fetch_optional(p).await? {
                Some(r) => Ok(key_from_row!(r)),
                None => Err(StoreError::NotFound(format!("no key with id '{id}'"))),
            }
        })
    }

    /// Create a key; returns the record and the plaintext (shown once). The caller has checked
    /// that the team exists and the models are known.
    pub async fn create_key(
        &self,
        actor: &str,
        k: &NewKey,
    ) -> Result<(KeyRecord, String), StoreError> {
        valid(&k.limits)?;
        let now = now_ms();
        let minted = mint_key();
        let rec = KeyRecord {
            id: new_id("key_"),
            hash: minted.hash,
            prefix: minted.prefix,
            name: k.name.clone().unwrap_or_else(|| k.team.clone()),
            team: k.team.clone(),
            models: k.models.clone(),
            limits: k.limits,
            expires_at: k
                .expires_in_secs
                .map(|s| now.saturating_add(i64::try_from(s).unwrap_or(i64::MAX / 2000) * 1000)),
            revoked_at: None,
            rotated_to: None,
            created_at: now,
            last_used_at: None,
        };
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            insert_key!(tx, rec);
            audit!(tx, actor, "key.create", &rec.id, key_detail(&rec));
            tx.commit().await?;
        });
        Ok((rec, minted.plaintext))
    }

    /// Revoke a key now. Returns the record (with its hash, so the caller can drop it from
    /// its cache).
    pub async fn revoke_key(&self, actor: &str, id: &str) -> Result<KeyRecord, StoreError> {
        let mut rec = self.get_key(id).await?;
        if rec.revoked_at.is_some() {
            return Ok(rec);
        }
        let now = now_ms();
        rec.revoked_at = Some(now);
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query("UPDATE keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            audit!(tx, actor, "key.revoke", id, json!({}));
            tx.commit().await?;
        });
        Ok(rec)
    }

    /// Replace a key with a new one (same team, name, models, limits). The old key keeps working
    /// for `grace`, to the millisecond (its expiry is brought forward to then, never pushed back).
    pub async fn rotate_key(
        &self,
        actor: &str,
        id: &str,
        grace: std::time::Duration,
    ) -> Result<(KeyRecord, String, KeyRecord), StoreError> {
        let mut old = self.get_key(id).await?;
        let now = now_ms();
        if !old.active(now) {
            return Err(StoreError::Conflict(format!(
                "key '{id}' is revoked or expired; create a new key instead"
            )));
        }
        let minted = mint_key();
        let new = KeyRecord {
            id: new_id("key_"),
            hash: minted.hash,
            prefix: minted.prefix,
            created_at: now,
            expires_at: None,
            revoked_at: None,
            rotated_to: None,
            last_used_at: None,
            ..old.clone()
        };
        let until = now.saturating_add(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX));
        old.expires_at = Some(old.expires_at.map_or(until, |e| e.min(until)));
        old.rotated_to = Some(new.id.clone());
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            insert_key!(tx, new);
            sqlx::query("UPDATE keys SET expires_at = $2, rotated_to = $3 WHERE id = $1")
                .bind(&old.id)
                .bind(old.expires_at)
                .bind(&new.id)
                .execute(&mut *tx)
                .await?;
            audit!(tx, actor, "key.rotate", &old.id,
                json!({"new_key": new.id, "old_expires_at": old.expires_at}));
            tx.commit().await?;
        });
        Ok((new, minted.plaintext, old))
    }

    /// Change a key's name, models, expiry, limits or budget.
    pub async fn update_key(
        &self,
        actor: &str,
        id: &str,
        patch: &KeyPatch,
    ) -> Result<KeyRecord, StoreError> {
        let mut rec = self.get_key(id).await?;
        if let Some(n) = &patch.name {
            rec.name = n.clone();
        }
        if let Some(m) = &patch.models {
            rec.models = m.clone();
        }
        if let Some(e) = patch.expires_at {
            rec.expires_at = e;
        }
        patch.limits.apply(&mut rec.limits);
        valid(&rec.limits)?;
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "UPDATE keys SET name = $2, models = $3, rpm = $4, tpm = $5, max_concurrent = $6, \
                 budget_usd = $7, budget_period = $8, expires_at = $9 WHERE id = $1",
            )
            .bind(&rec.id)
            .bind(&rec.name)
            .bind(rec.models.as_ref().map(|m| json!(m).to_string()))
            .bind_limits(&rec.limits)
            .bind(rec.expires_at)
            .execute(&mut *tx)
            .await?;
            audit!(tx, actor, "key.update", id, key_detail(&rec));
            tx.commit().await?;
        });
        Ok(rec)
    }

    /// The most recent audit entries, newest first.
    pub async fn audit(&self, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        on_pool!(self, p => {
            use sqlx::Row;
            let rows = sqlx::query(
                "SELECT ts, actor, action, target, detail FROM audit ORDER BY ts DESC, id LIMIT $1",
            )
            .bind(limit)
            .fetch_all(p)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(AuditEntry {
                    ts: r.try_get("ts")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    detail: serde_json::from_str(&r.try_get::<String, _>("detail")?)
                        .unwrap_or_default(),
                });
            }
            Ok(out)
        })
    }
}

/// What an audit row says about a key: never its hash.
fn key_detail(k: &KeyRecord) -> serde_json::Value {
    json!({"name": k.name, "team": k.team, "prefix": k.prefix, "models": k.models,
        "limits": k.limits, "expires_at": k.expires_at})
}

fn unique_violation(e: sqlx::Error, msg: impl FnOnce() -> String) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(msg()),
        _ => StoreError::Db(e),
    }
}
