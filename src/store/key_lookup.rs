//! One query for the request path's key cache (`auth::KeyCache`): a key by its hash and, when its
//! team lives in the store, the team. Persistence only: what a key may do is decided above.

use super::records::{limits_from_row, stored_limits, to_u, KeyRecord};
use super::{on_pool, Store, StoreError, TeamRecord};

impl Store {
    /// The key with this SHA-256 and, when its team lives in the store, the team.
    pub async fn key_by_hash(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<(KeyRecord, Option<TeamRecord>)>, StoreError> {
        let sql = "SELECT k.id, k.hash, k.prefix, k.name, k.team, k.models, k.rpm, k.tpm, \
            k.max_concurrent, k.budget_usd, k.budget_period, k.expires_at, k.revoked_at, \
            k.rotated_to, k.created_at, k.last_used_at, t.models AS t_models, t.rpm AS t_rpm, \
            t.tpm AS t_tpm, t.max_concurrent AS t_max_concurrent, t.budget_usd AS t_budget_usd, \
            t.budget_period AS t_budget_period, t.created_at AS t_created_at, \
            t.updated_at AS t_updated_at \
            FROM keys k LEFT JOIN teams t ON t.name = k.team WHERE k.hash = $1";
        let hex_hash = hex::encode(hash);
        let found: Option<(KeyRecord, Option<TeamRecord>)> = on_pool!(self, p => {
            use sqlx::Row;
            match sqlx::query(sql).bind(&hex_hash).fetch_optional(p).await? {
                None => None,
                Some(r) => {
                    let list = |s: &str| serde_json::from_str::<Vec<String>>(s).unwrap_or_default();
                    let key = KeyRecord {
                        id: r.try_get("id")?,
                        hash: r.try_get("hash")?,
                        prefix: r.try_get("prefix")?,
                        name: r.try_get("name")?,
                        team: r.try_get("team")?,
                        models: r.try_get::<Option<String>, _>("models")?.map(|m| list(&m)),
                        limits: limits_from_row!(r),
                        expires_at: r.try_get("expires_at")?,
                        revoked_at: r.try_get("revoked_at")?,
                        rotated_to: r.try_get("rotated_to")?,
                        created_at: r.try_get("created_at")?,
                        last_used_at: r.try_get("last_used_at")?,
                    };
                    let team = match r.try_get::<Option<String>, _>("t_models")? {
                        None => None,
                        Some(models) => Some(TeamRecord {
                            name: key.team.clone(),
                            models: list(&models),
                            limits: limits_from_row!(r, "t_"),
                            created_at: r.try_get("t_created_at")?,
                            updated_at: r.try_get("t_updated_at")?,
                        }),
                    };
                    Some((key, team))
                }
            }
        });
        Ok(found)
    }
}
