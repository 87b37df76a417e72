//! Running one batch's lines on this gateway: lease free lines (as many as there are free
//! slots of `batch.concurrency`), send each through the request path ([`super::line`]), and
//! record each result with its `custom_id` in the store before it counts as done.
//!
//! A line refused by the team's limits (the batch's share of them) or by the gateway's load is
//! given back to be tried after the wait it was told, and the whole batch pauses as long, so a
//! batch backs off instead of hammering a limit; an upstream failure is retried up to
//! `batch.max_attempts` times with a doubling wait, then recorded as the line's error.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::line::{self, Outcome};
use super::validate::InputLine;
use super::wire;
use super::worker::{ms, Ctx};
use crate::auth::{Caller, StoreTeam};
use crate::config::Limits;
use crate::policy::Endpoint;
use crate::store::batches::{BatchRecord, LeasedLine};
use crate::store::now_ms;

/// What the lines of one batch share.
struct Batch {
    id: Arc<str>,
    endpoint: Endpoint,
    url: String,
    caller: Caller,
    input: PathBuf,
    /// No new lines are leased before this time (ms): a limit said to wait.
    paused_until: AtomicI64,
    /// Cancelled when this batch must stop taking lines: the gateway stops, or a batch of the
    /// team with a higher priority has the turn.
    turn: CancellationToken,
}

impl Batch {
    /// Sleep `d`, or less if the turn ends; false when it ended.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.turn.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

/// Run `b`'s lines until none is left to lease here, the batch stops running, or `turn` is
/// cancelled (the gateway stops, or another batch of the team has the turn); then wait for the
/// lines in flight.
pub(super) async fn run_batch(ctx: Arc<Ctx>, b: BatchRecord, turn: CancellationToken) {
    let Some(endpoint) = line::endpoint_of(&b.endpoint) else {
        tracing::error!(batch = %b.id, endpoint = %b.endpoint, "a batch with an unknown endpoint");
        return;
    };
    let batch = Arc::new(Batch {
        id: Arc::from(b.id.as_str()),
        endpoint,
        url: b.endpoint.clone(),
        caller: caller(&ctx, &b).await,
        input: super::files::path(&ctx.cfg.files_dir, &b.input_file_id),
        paused_until: AtomicI64::new(0),
        turn,
    });
    // At most the team's concurrency share at once: more would only be refused by its limit.
    let cap = batch
        .caller
        .key_limits
        .max_concurrent
        .map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
    let slots = Arc::new(Semaphore::new(ctx.cfg.concurrency.min(cap).max(1)));
    let mut tasks: JoinSet<()> = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let wait = batch.paused_until.load(Ordering::Relaxed) - now_ms();
        if wait > 0 {
            if !batch.pause(Duration::from_millis(wait as u64)).await {
                break;
            }
            continue;
        }
        let first = tokio::select! {
            _ = batch.turn.cancelled() => break,
            p = slots.clone().acquire_owned() => p,
        };
        let Ok(first) = first else { break };
        let mut permits = vec![first];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        let now = now_ms();
        let leased = ctx
            .db
            .claim_lines(
                &batch.id,
                &ctx.owner,
                permits.len() as i64,
                now,
                now + ctx.lease_ms(),
            )
            .await;
        let lines = match leased {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(batch = %batch.id, error = %e, "cannot lease batch lines");
                drop(permits);
                if !batch.pause(ctx.cfg.poll_interval.0).await {
                    break;
                }
                continue;
            }
        };
        if lines.is_empty() {
            drop(permits);
            if !idle(&ctx, &batch, &mut tasks).await {
                break;
            }
            continue;
        }
        let mut permits = permits.into_iter();
        for l in lines {
            match permits.next() {
                Some(permit) => {
                    tasks.spawn(run_line(ctx.clone(), batch.clone(), l, permit));
                }
                // Never left leased and idle: a line this gateway cannot run now goes back.
                None => give_back(&ctx, &batch, &l, now_ms(), l.attempts).await,
            }
        }
    }
    // The lines in flight finish and are recorded (the worker's stop bounds this).
    while tasks.join_next().await.is_some() {}
}

/// Nothing to lease: wait for a line in flight, or (none in flight) finish the batch if all its
/// lines are done, or wait for lines backing off or held by another gateway. False: stop
/// running this batch.
async fn idle(ctx: &Ctx, batch: &Batch, tasks: &mut JoinSet<()>) -> bool {
    if !tasks.is_empty() {
        tokio::select! {
            _ = batch.turn.cancelled() => return false,
            _ = tasks.join_next() => return true,
        }
    }
    if let Ok(true) = ctx.db.to_finalizing(&batch.id, now_ms()).await {
        ctx.wake.notify_one();
        return false;
    }
    match ctx.db.get_batch(None, &batch.id).await {
        Ok(Some(b)) if b.status == "in_progress" => batch.pause(ctx.cfg.poll_interval.0).await,
        _ => false,
    }
}

/// The caller a batch's lines run as: its team (config or store), named by the key that made
/// the batch (usage rows carry it). Two counts hold batch lines to their share: the team's own
/// limits, counted with its interactive requests, and the same limits cut to `batch.share`,
/// counted apart under `batch:<team>` (the key scope of the limiter). So batch lines stop at
/// their share while interactive requests keep the rest of the team's room. The key's own limits
/// do not apply to batch lines; the team's budget does (once, in the team scope).
async fn caller(ctx: &Ctx, b: &BatchRecord) -> Caller {
    let share = ctx.cfg.share;
    let mut c = Caller {
        key_id: Arc::from(b.key_id.as_str()),
        team: Arc::from(b.team.as_str()),
        limit_id: Some(Arc::from(format!("batch:{}", b.team))),
        ..Caller::default()
    };
    // A store key's models narrow the lines as they narrow its requests; once it is revoked or
    // expired its lines are refused (401) and end in the error file.
    if let Ok(k) = ctx.db.get_key(&b.key_id).await {
        c.models = k.models.map(Arc::from);
        c.expires_at = match (k.expires_at, k.revoked_at) {
            (Some(e), Some(r)) => Some(e.min(r)),
            (e, r) => e.or(r),
        };
    }
    if let Some(t) = ctx.state.snapshot.load().config.teams.get(&b.team) {
        c.team_limits = t.limits;
        c.key_limits = scaled(t.limits, share);
        return c;
    }
    match ctx.db.get_team(&b.team).await {
        Ok(Some(rec)) => {
            c.team_limits = rec.limits;
            c.key_limits = scaled(rec.limits, share);
            c.store_team = Some(Arc::new(StoreTeam::from(rec)));
        }
        // A team that is gone: the request path refuses its lines, which end as errors.
        Ok(None) => tracing::warn!(batch = %b.id, team = %b.team, "the batch's team is gone"),
        Err(e) => tracing::warn!(batch = %b.id, error = %e, "cannot read the batch's team"),
    }
    c
}

/// `l`'s rates and concurrency cut to `share` (at least 1 each), without its budget (the team
/// scope carries that).
fn scaled(mut l: Limits, share: f64) -> Limits {
    let cut = |v: Option<u64>| v.map(|v| ((v as f64 * share).floor() as u64).max(1));
    l.requests_per_minute = cut(l.requests_per_minute);
    l.tokens_per_minute = cut(l.tokens_per_minute);
    l.max_concurrent = cut(l.max_concurrent);
    l.budget = None;
    l
}

/// One line: read it, send it, and record its result or give it back.
async fn run_line(ctx: Arc<Ctx>, batch: Arc<Batch>, l: LeasedLine, _slot: OwnedSemaphorePermit) {
    let request_id = format!("req_{}", uuid::Uuid::new_v4().simple());
    let outcome = match body_of(&batch, &l).await {
        Ok(body) => {
            line::execute(
                &ctx.state,
                &batch.caller,
                &batch.id,
                batch.endpoint,
                &batch.url,
                &request_id,
                body,
            )
            .await
        }
        Err(why) => {
            tracing::warn!(batch = %batch.id, line = l.line, error = %why, "cannot read a batch line");
            Outcome::Answer {
                status: 500,
                body: serde_json::json!({"error": {"message": "the input line could not be read",
                    "type": "api_error", "param": null, "code": "file_unavailable"}}),
                kind: Some("file_unavailable".into()),
            }
        }
    };
    let now = now_ms();
    match outcome {
        Outcome::Answer { status, body, kind } => {
            let text = wire::answered(&l.custom_id, &request_id, status, body);
            record(&ctx, &batch, &l, status != 200, kind.as_deref(), &text).await;
        }
        Outcome::Limited { wait } => {
            let until = now + ms(wait);
            batch.paused_until.fetch_max(until, Ordering::Relaxed);
            give_back(&ctx, &batch, &l, until, l.attempts).await;
        }
        Outcome::Transient {
            status,
            body,
            kind,
            wait,
        } => {
            let attempts = l.attempts + 1;
            if attempts >= i64::from(ctx.cfg.max_attempts) {
                let text = wire::answered(&l.custom_id, &request_id, status, body);
                record(&ctx, &batch, &l, true, kind.as_deref(), &text).await;
            } else {
                let exp = 1u32 << (attempts - 1).clamp(0, 6);
                let backoff = (ctx.cfg.retry_backoff.0 * exp).min(Duration::from_secs(30));
                let backoff = backoff.max(wait.unwrap_or_default());
                give_back(&ctx, &batch, &l, now + ms(backoff), attempts).await;
            }
        }
    }
}

/// The line's `body`, as written in the input file.
async fn body_of(batch: &Batch, l: &LeasedLine) -> Result<Bytes, String> {
    let raw = super::files::read_at(&batch.input, l.offset as u64, l.len as usize)
        .await
        .map_err(|e| e.to_string())?;
    let parsed: InputLine<'_> = serde_json::from_slice(&raw).map_err(|e| e.to_string())?;
    let body = parsed.body.ok_or("the line has no body")?;
    Ok(Bytes::copy_from_slice(body.get().as_bytes()))
}

/// Record a result, retrying a store error a few times; a result the store refuses (the lease
/// moved on) is dropped: whoever holds the line now records it.
async fn record(
    ctx: &Ctx,
    batch: &Batch,
    l: &LeasedLine,
    failed: bool,
    kind: Option<&str>,
    text: &str,
) {
    for attempt in 0..5u32 {
        let r = ctx
            .db
            .finish_line(&batch.id, l.line, &ctx.owner, now_ms(), failed, kind, text)
            .await;
        match r {
            Ok(true) => {
                let outcome = if failed { "failed" } else { "completed" };
                metrics::counter!(crate::telemetry::names::BATCH_LINES, "outcome" => outcome)
                    .increment(1);
                return;
            }
            Ok(false) => {
                tracing::debug!(batch = %batch.id, line = l.line, "a line's lease moved on; result dropped");
                return;
            }
            Err(e) => {
                tracing::warn!(batch = %batch.id, line = l.line, error = %e, "cannot record a line");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
    give_back(ctx, batch, l, now_ms(), l.attempts).await;
}

/// Give a line back, retrying a store error for about a minute: the worker renews every lease
/// it holds, so a line it failed to give back would stay with it. If the store stays down that
/// long, renewals fail too and the lease expires by itself.
async fn give_back(ctx: &Ctx, batch: &Batch, l: &LeasedLine, not_before: i64, attempts: i64) {
    for attempt in 0..8u32 {
        match ctx
            .db
            .release_line(&batch.id, l.line, &ctx.owner, not_before, attempts)
            .await
        {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(batch = %batch.id, line = l.line, error = %e,
                    "cannot give a line back; retrying");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
}
