//! Rows of the files uploaded for batches and written by the batch worker: who owns each file
//! and what it is. The bytes live on disk (`batch.files_dir`, handled by `batch`); this module
//! only stores and queries the metadata. Every query takes the owning team, so a file of another
//! team is simply not found.

use serde::Serialize;
use sqlx::Row;

use super::{on_pool, Store, StoreError};

/// One file's metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileRecord {
    /// `file-` + a time-ordered hex id.
    pub id: String,
    pub team: String,
    /// `batch` (uploaded input) or `batch_output` (written by the worker).
    pub purpose: String,
    pub filename: String,
    pub bytes: i64,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

impl FileRecord {
    /// A new time-ordered file id (later files sort after earlier ones).
    pub fn new_id() -> String {
        format!("file-{}", uuid::Uuid::now_v7().simple())
    }
}

const COLS: &str = "id, team, purpose, filename, bytes, created_at";

macro_rules! file_from_row {
    ($r:expr) => {
        FileRecord {
            id: $r.try_get("id")?,
            team: $r.try_get("team")?,
            purpose: $r.try_get("purpose")?,
            filename: $r.try_get("filename")?,
            bytes: $r.try_get("bytes")?,
            created_at: $r.try_get("created_at")?,
        }
    };
}

impl Store {
    pub async fn insert_file(&self, f: &FileRecord) -> Result<(), StoreError> {
        on_pool!(self, p => {
            sqlx::query(
                "INSERT INTO files (id, team, purpose, filename, bytes, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&f.id)
            .bind(&f.team)
            .bind(&f.purpose)
            .bind(&f.filename)
            .bind(f.bytes)
            .bind(f.created_at)
            .execute(p)
            .await?;
            Ok(())
        })
    }

    /// The file `id` if `team` owns it (`None` team: any owner, for the worker and admin).
    pub async fn get_file(
        &self,
        team: Option<&str>,
        id: &str,
    ) -> Result<Option<FileRecord>, StoreError> {
        let sql = format!("SELECT {COLS} FROM files WHERE id = $1 AND ($2 IS NULL OR team = $2)");
        on_pool!(self, p => {
            match sqlx::query(&sql).bind(id).bind(team).fetch_optional(p).await? {
                Some(r) => Ok(Some(file_from_row!(r))),
                None => Ok(None),
            }
        })
    }

    /// A team's files, newest first, after the cursor `after` (a file id), at most `limit`.
    pub async fn list_files(
        &self,
        team: &str,
        purpose: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<FileRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLS} FROM files WHERE team = $1 AND ($2 IS NULL OR purpose = $2) \
             AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
        );
        on_pool!(self, p => {
            let rows = sqlx::query(&sql)
                .bind(team)
                .bind(purpose)
                .bind(after)
                .bind(limit)
                .fetch_all(p)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(file_from_row!(r));
            }
            Ok(out)
        })
    }

    /// Delete `team`'s file `id`; whether it existed. A file that is the input of a batch not
    /// yet finished is refused (the worker still reads it).
    pub async fn delete_file(&self, team: &str, id: &str) -> Result<bool, StoreError> {
        on_pool!(self, p => {
            let busy: i64 = sqlx::query_scalar(
                "SELECT CAST(COUNT(*) AS BIGINT) FROM batches WHERE input_file_id = $1 \
                 AND status IN ('validating', 'in_progress', 'finalizing', 'cancelling')",
            )
            .bind(id)
            .fetch_one(p)
            .await?;
            if busy > 0 {
                return Err(StoreError::Conflict(format!(
                    "file {id} is the input of a batch that has not finished"
                )));
            }
            let done = sqlx::query("DELETE FROM files WHERE id = $1 AND team = $2")
                .bind(id)
                .bind(team)
                .execute(p)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }
}
