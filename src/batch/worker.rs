//! The worker inside the gateway: one scheduler task that finds batches with work in the store
//! and runs, for each, the step it needs: validation, its lines ([`super::run`]), or
//! finalization ([`super::finalize`]). Every gateway sharing a store runs one; they coordinate
//! only through leases in the store (see `store::batches`), renewed here every third of
//! `batch.lease`.
//!
//! Order: of one team's running batches only one has its lines run: the one with the highest
//! `metadata.priority`, the oldest of equals. A batch that loses the turn to a newer one of
//! higher priority stops taking lines (those in flight finish) and goes on when its turn comes
//! back. On stop the worker takes no new lines, lets the lines in
//! flight finish (bounded by the caller's grace), then gives back every lease it holds, so
//! another gateway (or this one restarted) takes the rest at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::validate::{self, Checked, Rules};
use crate::config::BatchConfig;
use crate::state::AppState;
use crate::store::batches::BatchRecord;
use crate::store::{now_ms, Store};

/// What every task of the worker shares.
pub(super) struct Ctx {
    pub state: AppState,
    pub db: Store,
    /// This gateway's name in leases: unique per process start.
    pub owner: Arc<str>,
    /// `batch:` as it was when the worker started (a reload does not change it).
    pub cfg: BatchConfig,
    /// Cancelled when the gateway stops: no new lines are taken.
    pub stop: CancellationToken,
    /// Rung when a batch is made or changes state on this gateway.
    pub wake: Arc<Notify>,
}

impl Ctx {
    pub fn lease_ms(&self) -> i64 {
        ms(self.cfg.lease.0)
    }
}

pub(super) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The running worker; [`Worker::stop`] it before the store closes.
pub struct Worker {
    ctx: Arc<Ctx>,
    task: tokio::task::JoinHandle<()>,
}

/// Start the worker if the gateway has a store (batches live there); `None` otherwise.
pub fn start(state: &AppState) -> Option<Worker> {
    let db = state.store.as_ref()?.db.clone();
    let cfg = state.snapshot.load().config.batch.clone();
    let ctx = Arc::new(Ctx {
        state: state.clone(),
        db,
        owner: Arc::from(format!("gw-{}", uuid::Uuid::new_v4().simple())),
        cfg,
        stop: CancellationToken::new(),
        wake: state.batch_wake.clone(),
    });
    let task = tokio::spawn(schedule(ctx.clone()));
    tracing::info!(owner = %ctx.owner, "batch worker started");
    Some(Worker { ctx, task })
}

impl Worker {
    /// Take no new lines now (call as soon as shutdown begins).
    pub fn begin_stop(&self) {
        self.ctx.stop.cancel();
    }

    /// The token that stops the worker taking new lines, for a shutdown signal to cancel.
    pub fn stop_token(&self) -> CancellationToken {
        self.ctx.stop.clone()
    }

    /// Stop: no new lines; lines in flight get up to `grace` to finish and be recorded; then
    /// every lease this gateway holds is given back. Progress is in the store line by line, so
    /// nothing recorded is lost and a line cut off is done again by whoever takes it.
    pub async fn stop(self, grace: Duration) {
        self.ctx.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            tracing::warn!("batch lines still in flight at the end of the shutdown grace");
            task.abort();
            let _ = task.await;
        }
        if let Err(e) = self.ctx.db.release_all(&self.ctx.owner).await {
            tracing::warn!(error = %e, "batch leases not given back; they expire by themselves");
        }
    }
}

/// A task of the worker: the batch it works on and, for one running lines, the token that
/// ends its turn.
struct Running {
    batch: String,
    turn: Option<CancellationToken>,
}

type Tasks = HashMap<tokio::task::Id, Running>;

/// The scheduler: look for work, start what is not running, renew leases; on stop, wait for the
/// running tasks (renewing their leases meanwhile).
async fn schedule(ctx: Arc<Ctx>) {
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut running: Tasks = HashMap::new();
    let mut renew = tokio::time::interval((ctx.cfg.lease.0 / 3).max(Duration::from_millis(100)));
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        while let Some(r) = tasks.try_join_next_with_id() {
            forget(&mut running, r);
        }
        dispatch(&ctx, &mut tasks, &mut running).await;
        tokio::select! {
            _ = ctx.stop.cancelled() => break,
            _ = ctx.wake.notified() => {}
            _ = tokio::time::sleep(ctx.cfg.poll_interval.0) => {}
            _ = renew.tick() => renew_leases(&ctx).await,
            Some(r) = tasks.join_next_with_id() => forget(&mut running, r),
        }
    }
    // Stopping: the tasks see the stop and finish their lines in flight.
    loop {
        tokio::select! {
            r = tasks.join_next_with_id() => match r {
                Some(r) => forget(&mut running, r),
                None => break,
            },
            _ = renew.tick() => renew_leases(&ctx).await,
        }
    }
}

fn forget(running: &mut Tasks, r: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
    let id = match r {
        Ok((id, ())) => id,
        Err(e) => {
            if e.is_panic() {
                tracing::error!("a batch task panicked");
            }
            e.id()
        }
    };
    running.remove(&id);
}

async fn renew_leases(ctx: &Ctx) {
    if let Err(e) = ctx
        .db
        .renew_leases(&ctx.owner, now_ms() + ctx.lease_ms())
        .await
    {
        tracing::warn!(error = %e, "batch leases not renewed");
    }
}

/// Start the step each active batch needs, unless a task of this gateway already runs it.
async fn dispatch(ctx: &Arc<Ctx>, tasks: &mut JoinSet<()>, running: &mut Tasks) {
    if ctx.stop.is_cancelled() {
        return;
    }
    let mut batches = match ctx.db.active_batches().await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the batches");
            return;
        }
    };
    // Highest priority first, then oldest (ids are time-ordered): the first running batch of a
    // team seen below has the team's turn.
    batches.sort_by_cached_key(|b| {
        (
            std::cmp::Reverse(super::wire::priority(b.metadata.as_deref())),
            b.id.clone(),
        )
    });
    let mut teams: HashSet<String> = HashSet::new();
    let mut start: Vec<BatchRecord> = Vec::new();
    let now = now_ms();
    for b in batches {
        let task = running.values().find(|r| r.batch == b.id);
        if b.status == "in_progress" {
            if b.expires_at < now {
                if let Ok(true) = ctx.db.to_expiring(&b.id, now).await {
                    ctx.wake.notify_one();
                }
                continue;
            }
            if !teams.insert(b.team.clone()) {
                // Another batch of the team has the turn: this one yields it.
                if let Some(turn) = task.and_then(|t| t.turn.as_ref()) {
                    turn.cancel();
                }
                continue;
            }
        }
        if task.is_none() {
            start.push(b);
        }
    }
    for b in start {
        let batch = b.id.clone();
        let (handle, turn) = match b.status.as_str() {
            "validating" => (tasks.spawn(validate_batch(ctx.clone(), b)), None),
            "in_progress" => {
                let turn = ctx.stop.child_token();
                let run = super::run::run_batch(ctx.clone(), b, turn.clone());
                (tasks.spawn(run), Some(turn))
            }
            _ => (tasks.spawn(super::finalize::finalize(ctx.clone(), b)), None),
        };
        running.insert(handle.id(), Running { batch, turn });
    }
}

/// Validate a batch's input file and record its lines (or its errors).
async fn validate_batch(ctx: Arc<Ctx>, b: BatchRecord) {
    let now = now_ms();
    match ctx
        .db
        .claim_batch(&b.id, "validating", &ctx.owner, now, now + ctx.lease_ms())
        .await
    {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!(batch = %b.id, error = %e, "cannot claim a batch to validate");
            return;
        }
    }
    let input = super::files::path(&ctx.cfg.files_dir, &b.input_file_id);
    let rules = Rules {
        endpoint: &b.endpoint,
        max_lines: ctx.cfg.max_lines,
        max_line_bytes: ctx.cfg.max_line_bytes,
    };
    let checked = validate::check(&input, &rules).await;
    let now = now_ms();
    let r = match checked {
        Ok(Checked::Valid(lines)) => ctx.db.start_batch(&b.id, &ctx.owner, &lines, now).await,
        Ok(Checked::Invalid(errors)) => {
            let text = serde_json::Value::Array(errors).to_string();
            ctx.db.fail_batch(&b.id, &ctx.owner, &text, now).await
        }
        Err(e) => {
            tracing::warn!(batch = %b.id, error = %e, "cannot read a batch's input file");
            let text = serde_json::json!([super::wire::input_error(
                "file_unavailable",
                "The input file could not be read.".into(),
                None,
                None
            )])
            .to_string();
            ctx.db.fail_batch(&b.id, &ctx.owner, &text, now).await
        }
    };
    if let Err(e) = r {
        tracing::warn!(batch = %b.id, error = %e, "cannot record a batch's validation");
    }
    ctx.wake.notify_one();
}
