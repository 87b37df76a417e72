//! The admin operations, written once for both front ends: the HTTP admin API (`/admin/*`) and
//! the CLI (`tollgate keys|teams …`). Each checks the request against the config (a key's team
//! exists, models are defined, config teams are read-only) and then asks the store, which writes
//! the audit row. Transport concerns (status codes, the key cache of the serving replica) stay
//! with the front ends.

use serde_json::{json, Value};

use crate::config::Config;
use crate::error::ApiError;
use crate::store::records::{KeyPatch, KeyRecord, NewKey, NewTeam, TeamPatch, TeamRecord};
use crate::store::{Store, StoreError};

/// Why an operation did not happen: refused by a check, or the store failed (kept whole, so the
/// CLI can print the database's own words; the HTTP API answers with its generic message).
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    Refused(ApiError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<ApiError> for OpError {
    fn from(e: ApiError) -> Self {
        OpError::Refused(e)
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Refused(e) => e,
            OpError::Store(e) => e.into(),
        }
    }
}

/// Every model named must be defined in the config (`*` allows all).
pub fn check_models(cfg: &Config, models: &[String]) -> Result<(), ApiError> {
    match models
        .iter()
        .find(|m| *m != "*" && !cfg.models.contains_key(*m))
    {
        Some(m) => Err(ApiError::invalid(
            format!("model '{m}' is not defined"),
            Some("models"),
        )),
        None => Ok(()),
    }
}

/// A key's team must exist, in the config or the store.
pub async fn check_team(cfg: &Config, db: &Store, team: &str) -> Result<(), OpError> {
    if cfg.teams.contains_key(team) || db.get_team(team).await?.is_some() {
        Ok(())
    } else {
        Err(ApiError::invalid(format!("team '{team}' does not exist"), Some("team")).into())
    }
}

/// Make a key. The answer carries the key itself, the only time it is ever shown.
pub async fn create_key(
    cfg: &Config,
    db: &Store,
    actor: &str,
    new: &NewKey,
) -> Result<Value, OpError> {
    check_team(cfg, db, &new.team).await?;
    check_models(cfg, new.models.as_deref().unwrap_or_default())?;
    let (rec, plaintext) = db.create_key(actor, new).await?;
    let mut v = json!(rec);
    v["key"] = json!(plaintext);
    Ok(v)
}

pub async fn update_key(
    cfg: &Config,
    db: &Store,
    actor: &str,
    id: &str,
    patch: &KeyPatch,
) -> Result<KeyRecord, OpError> {
    if let Some(Some(m)) = &patch.models {
        check_models(cfg, m)?;
    }
    Ok(db.update_key(actor, id, patch).await?)
}

/// Replace a key; the old one keeps working for `grace`. Returns the answer (with the new
/// key, once) and the old key's hash (for the caller's key cache).
pub async fn rotate_key(
    db: &Store,
    actor: &str,
    id: &str,
    grace: std::time::Duration,
) -> Result<(Value, String), OpError> {
    let (new, plaintext, old) = db.rotate_key(actor, id, grace).await?;
    let mut v = json!(new);
    v["key"] = json!(plaintext);
    v["replaces"] = json!({"id": old.id, "expires_at": old.expires_at});
    Ok((v, old.hash))
}

/// Teams in the config file are read-only here: change them there.
fn writable_team(cfg: &Config, name: &str) -> Result<(), ApiError> {
    if cfg.teams.contains_key(name) {
        return Err(ApiError::Conflict {
            message: format!("team '{name}' is defined in the config file; change it there"),
        });
    }
    Ok(())
}

pub async fn create_team(
    cfg: &Config,
    db: &Store,
    actor: &str,
    team: &NewTeam,
) -> Result<TeamRecord, OpError> {
    writable_team(cfg, &team.name)?;
    check_models(cfg, &team.models)?;
    Ok(db.create_team(actor, team).await?)
}

pub async fn update_team(
    cfg: &Config,
    db: &Store,
    actor: &str,
    name: &str,
    patch: &TeamPatch,
) -> Result<TeamRecord, OpError> {
    writable_team(cfg, name)?;
    if let Some(m) = &patch.models {
        check_models(cfg, m)?;
    }
    Ok(db.update_team(actor, name, patch).await?)
}

/// Delete a store team and revoke its keys (config teams are refused: change the file).
pub async fn delete_team(
    cfg: &Config,
    db: &Store,
    actor: &str,
    name: &str,
) -> Result<Value, OpError> {
    writable_team(cfg, name)?;
    let revoked = db.delete_team(actor, name).await?;
    Ok(json!({"name": name, "deleted": true, "keys_revoked": revoked}))
}

/// Config teams, then store teams, each with its `source`.
pub async fn list_teams(cfg: &Config, db: &Store) -> Result<Vec<Value>, OpError> {
    let mut data: Vec<Value> = cfg
        .teams
        .iter()
        .map(|(name, t)| json!({"name": name, "models": t.models, "source": "config"}))
        .collect();
    for t in db.list_teams().await? {
        let mut v = json!(t);
        v["source"] = json!("store");
        data.push(v);
    }
    Ok(data)
}
