//! Finalizing a batch: its recorded lines, in input order, become the output file (answers
//! with status 200) and the error file (other answers, and for an expired batch every line
//! never done, as OpenAI's `batch_expired`); then the batch ends `completed`, `cancelled` or
//! `expired`. One gateway does it, under the batch's lease; a gateway that dies midway leaves
//! only a `.part` file, and another starts over after the lease expires.

use std::sync::Arc;

use super::files::LineFile;
use super::wire;
use super::worker::Ctx;
use crate::store::batches::BatchRecord;
use crate::store::files::FileRecord;
use crate::store::now_ms;

/// Lines read from the store at a time.
const PAGE: i64 = 1000;

pub(super) async fn finalize(ctx: Arc<Ctx>, b: BatchRecord) {
    let now = now_ms();
    match ctx
        .db
        .claim_batch(&b.id, &b.status, &ctx.owner, now, now + ctx.lease_ms())
        .await
    {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!(batch = %b.id, error = %e, "cannot claim a batch to finalize");
            return;
        }
    }
    let status = if b.status == "cancelling" {
        "cancelled"
    } else if b.expired_at.is_some() {
        "expired"
    } else {
        "completed"
    };
    match write_files(&ctx, &b, status == "expired").await {
        Ok((output, errors)) => {
            let r = ctx
                .db
                .end_batch(
                    &b.id,
                    &ctx.owner,
                    status,
                    output.as_deref(),
                    errors.as_deref(),
                    now_ms(),
                )
                .await;
            match r {
                Ok(true) => tracing::info!(batch = %b.id, status, "batch finished"),
                Ok(false) => tracing::warn!(batch = %b.id, "lost a batch's lease while finalizing"),
                Err(e) => tracing::warn!(batch = %b.id, error = %e, "cannot end a batch"),
            }
        }
        Err(e) => tracing::warn!(batch = %b.id, error = %e, "cannot write a batch's files"),
    }
    ctx.wake.notify_one();
}

/// Write the output and error files; their ids (`None` for a file with no line).
async fn write_files(
    ctx: &Ctx,
    b: &BatchRecord,
    expired: bool,
) -> Result<(Option<String>, Option<String>), String> {
    let dir = &ctx.cfg.files_dir;
    let out_id = FileRecord::new_id();
    let err_id = FileRecord::new_id();
    let io = |e: std::io::Error| e.to_string();
    let mut out = LineFile::create(dir, &out_id).await.map_err(io)?;
    let mut err = LineFile::create(dir, &err_id).await.map_err(io)?;
    let mut after = 0i64;
    loop {
        let page = ctx
            .db
            .line_results(&b.id, after, PAGE)
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = page.last() else { break };
        after = last.line;
        for r in &page {
            match (r.failed, &r.result) {
                (Some(false), Some(t)) => out.line(t).await.map_err(io)?,
                (Some(true), Some(t)) => err.line(t).await.map_err(io)?,
                (None, _) if expired => {
                    let t = wire::unanswered(
                        &r.custom_id,
                        "batch_expired",
                        "This request could not be executed before the completion window expired.",
                    );
                    err.line(&t).await.map_err(io)?;
                }
                _ => {}
            }
        }
    }
    let output = keep(ctx, b, out, &out_id, "output").await?;
    let errors = keep(ctx, b, err, &err_id, "error").await?;
    Ok((output, errors))
}

/// Move a written file into place and record it, or drop it if it has no line.
async fn keep(
    ctx: &Ctx,
    b: &BatchRecord,
    f: LineFile,
    id: &str,
    what: &str,
) -> Result<Option<String>, String> {
    if f.lines == 0 {
        f.discard().await;
        return Ok(None);
    }
    let bytes = f.bytes;
    f.finish(&ctx.cfg.files_dir, id)
        .await
        .map_err(|e| e.to_string())?;
    let rec = FileRecord {
        id: id.to_owned(),
        team: b.team.clone(),
        purpose: "batch_output".into(),
        filename: format!("{}_{what}.jsonl", b.id),
        bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
        created_at: now_ms(),
    };
    ctx.db.insert_file(&rec).await.map_err(|e| e.to_string())?;
    Ok(Some(id.to_owned()))
}
