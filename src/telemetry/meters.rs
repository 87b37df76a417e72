//! Metric handles made once, used per request.
//!
//! The `metrics` macros find a series by name and labels in the recorder's registry on every
//! call: a key built (labels copied into a `Vec`), hashed and looked up under a shard's lock.
//! Here every series a request can touch is a handle made when the config snapshot is built: per
//! upstream ([`UpstreamMeters`], in `routing::Upstream`), per model ([`ModelMeters`], in the
//! route), per team and model ([`TeamMeters`], in the snapshot's [`Meters`]). A reload builds new
//! ones; the recorder keeps the counts, since a series is the same series by name and labels.
//!
//! A handle registers its series on first use, not when it is made: `/metrics` shows a series
//! only once something happened to it, exactly as when each call registered it. Label sets stay
//! bounded by config: statuses are a fixed table (the ones Tollgate answers with; another status
//! takes the registry path), error kinds and attempt outcomes a small table filled as they occur,
//! models the config's (a client's made-up model is `unknown`), teams the config's and the
//! store's. The one lookup left per request is the caller's team among the store's teams.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, SharedString};

use super::{names, Metrics};

static META: Metadata<'static> = Metadata::new("tollgate", Level::INFO, Some(module_path!()));

/// What a handle is: a counter, gauge or histogram registered with the recorder by its key.
pub trait Handle: Sized {
    fn register(key: &Key) -> Self;
}

fn with_recorder<T>(f: impl FnOnce(&dyn metrics::Recorder) -> T) -> T {
    // The process's recorder is installed before the first series is registered.
    let _ = Metrics::global();
    metrics::with_recorder(f)
}

impl Handle for Counter {
    fn register(key: &Key) -> Self {
        with_recorder(|r| r.register_counter(key, &META))
    }
}
impl Handle for Gauge {
    fn register(key: &Key) -> Self {
        with_recorder(|r| r.register_gauge(key, &META))
    }
}
impl Handle for Histogram {
    fn register(key: &Key) -> Self {
        with_recorder(|r| r.register_histogram(key, &META))
    }
}

fn label(k: &'static str, v: impl Into<SharedString>) -> Label {
    Label::new(k, v)
}

/// One series, registered on its first use.
pub struct Lazy<T> {
    key: Key,
    cell: OnceLock<T>,
}

impl<T: Handle> Lazy<T> {
    pub fn new(name: &'static str, labels: Vec<Label>) -> Lazy<T> {
        Lazy {
            key: Key::from_parts(name, labels),
            cell: OnceLock::new(),
        }
    }
    pub fn get(&self) -> &T {
        self.cell.get_or_init(|| T::register(&self.key))
    }
}

/// The counters of one metric that differ in one label, filled as its values occur: at most
/// [`Table::SLOTS`] values, found by comparing a few short strings; past that (never with the
/// closed vocabularies it serves) a value takes the registry path.
pub struct Table {
    name: &'static str,
    fixed: Vec<Label>,
    label: &'static str,
    slots: Box<[OnceLock<(SharedString, Counter)>]>,
}

impl Table {
    pub const SLOTS: usize = 32;

    pub fn new(name: &'static str, fixed: Vec<Label>, label: &'static str) -> Table {
        Table {
            name,
            fixed,
            label,
            slots: (0..Self::SLOTS).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Add `n` to the series whose label is `value`.
    pub fn increment(&self, value: &'static str, n: u64) {
        self.increment_with(value, || SharedString::const_str(value), n);
    }

    /// As [`Table::increment`] for a value that is not static (a config name): it is copied
    /// once, when its series is first used.
    pub fn increment_owned(&self, value: &str, n: u64) {
        self.increment_with(value, || SharedString::from(value.to_owned()), n);
    }

    fn increment_with(&self, value: &str, owned: impl Fn() -> SharedString, n: u64) {
        for slot in self.slots.iter() {
            // A slot is filled once, with the value of whoever gets there first; a thread that
            // loses the race to another value goes on to the next slot.
            let (v, c) = slot.get_or_init(|| {
                let v = owned();
                (v.clone(), Counter::register(&self.key(v)))
            });
            if v.as_ref() == value {
                c.increment(n);
                return;
            }
        }
        self.increment_slow(value, n);
    }

    fn increment_slow(&self, value: &str, n: u64) {
        Counter::register(&self.key(SharedString::from(value.to_owned()))).increment(n);
    }

    fn key(&self, value: SharedString) -> Key {
        let mut labels = self.fixed.clone();
        labels.push(Label::new(self.label, value));
        Key::from_parts(self.name, labels)
    }
}

/// The statuses Tollgate answers with, each a series of `tollgate_requests_total` per team and
/// model; any other status (an upstream's own) takes the registry path.
const STATUSES: [u16; 14] = [
    200, 400, 401, 403, 404, 405, 408, 413, 429, 499, 500, 502, 503, 504,
];

fn status_index(status: u16) -> Option<usize> {
    STATUSES.iter().position(|s| *s == status)
}

/// An HTTP status as a label: the ones Tollgate answers with are static strings.
fn status_label(status: u16) -> SharedString {
    const LABELS: [&str; 14] = [
        "200", "400", "401", "403", "404", "405", "408", "413", "429", "499", "500", "502", "503",
        "504",
    ];
    match status_index(status) {
        Some(i) => SharedString::const_str(LABELS[i]),
        None => status.to_string().into(),
    }
}

/// One upstream's series (made with its `routing::Upstream`).
pub struct UpstreamMeters {
    attempts: Table,
    breaker: Lazy<Gauge>,
}

impl UpstreamMeters {
    pub fn new(upstream: &Arc<str>) -> UpstreamMeters {
        let name = || label("upstream", upstream.clone());
        UpstreamMeters {
            attempts: Table::new(names::ATTEMPTS, vec![name()], "outcome"),
            breaker: Lazy::new(names::BREAKER_STATE, vec![name()]),
        }
    }
    /// One attempt ended with `outcome` (`ok` or an error kind).
    pub fn attempt(&self, outcome: &'static str) {
        self.attempts.increment(outcome, 1);
    }
    /// The breaker's state as its gauge value.
    pub fn breaker_state(&self, value: f64) {
        self.breaker.get().set(value);
    }
}

/// One upstream's queue series (made with its gate).
pub struct QueueMeters {
    pub depth: Lazy<Gauge>,
    pub wait: Lazy<Histogram>,
}

impl QueueMeters {
    pub fn new(upstream: &Arc<str>) -> QueueMeters {
        QueueMeters {
            depth: Lazy::new(
                names::QUEUE_DEPTH,
                vec![label("upstream", upstream.clone())],
            ),
            wait: Lazy::new(names::QUEUE_WAIT, vec![label("upstream", upstream.clone())]),
        }
    }
}

/// One model's series: a route of the snapshot, or `unknown` (a model the config does not
/// have), or `-` (no model: the request ended before one was read).
pub struct ModelMeters {
    /// Where this model's cells sit in every [`TeamMeters`] of the same snapshot.
    index: usize,
    label: SharedString,
    latency: Lazy<Histogram>,
    ttfb: Lazy<Histogram>,
    ttft: Lazy<Histogram>,
    output_rate: Lazy<Histogram>,
    retry_budget_exhausted: Lazy<Counter>,
    /// By the model fallen back to.
    fallbacks: Table,
}

impl ModelMeters {
    fn new(index: usize, name: SharedString) -> ModelMeters {
        let model = || vec![label("model", name.clone())];
        ModelMeters {
            index,
            latency: Lazy::new(names::LATENCY, model()),
            ttfb: Lazy::new(names::TTFB, model()),
            ttft: Lazy::new(names::TTFT, model()),
            output_rate: Lazy::new(names::OUTPUT_RATE, model()),
            retry_budget_exhausted: Lazy::new(names::RETRY_BUDGET_EXHAUSTED, model()),
            fallbacks: Table::new(names::FALLBACKS, vec![label("from", name.clone())], "to"),
            label: name,
        }
    }
    /// A request's whole time and its time to first byte.
    pub fn latency(&self, whole: Duration, first_byte: Option<Duration>) {
        self.latency.get().record(whole);
        if let Some(t) = first_byte {
            self.ttfb.get().record(t);
        }
    }
    /// A stream's time to its first content event, and its output tokens per second after it.
    pub fn generation(&self, first_token: Duration, tokens_per_second: Option<f64>) {
        self.ttft.get().record(first_token);
        if let Some(r) = tokens_per_second {
            self.output_rate.get().record(r);
        }
    }
    pub fn retry_budget_exhausted(&self) {
        self.retry_budget_exhausted.get().increment(1);
    }
    /// A request fell back from this model to `to`.
    pub fn fallback(&self, to: &str) {
        self.fallbacks.increment_owned(to, 1);
    }
}

/// One team's series, per model of the snapshot (made on the team's first request with that
/// model, so teams × models costs only the pairs that occur).
pub struct TeamMeters {
    team: SharedString,
    models: Box<[OnceLock<Box<TeamModel>>]>,
}

/// One team's series for one model.
struct TeamModel {
    model: SharedString,
    /// `tollgate_requests_total` by status, in [`STATUSES`] order.
    requests: [OnceLock<Counter>; STATUSES.len()],
    tokens_in: Lazy<Counter>,
    tokens_out: Lazy<Counter>,
    /// `tollgate_spend_usd_total` ([`super::spend`]), made on the first spend.
    spend: OnceLock<super::spend::Cell>,
}

impl TeamMeters {
    fn new(team: SharedString, models: usize) -> TeamMeters {
        TeamMeters {
            team,
            models: (0..models).map(|_| OnceLock::new()).collect(),
        }
    }

    fn cells(&self, model: &ModelMeters) -> Option<&TeamModel> {
        let cell = self.models.get(model.index)?;
        Some(cell.get_or_init(|| {
            let labels = |direction: &'static str| {
                vec![
                    label("model", model.label.clone()),
                    label("team", self.team.clone()),
                    label("direction", direction),
                ]
            };
            Box::new(TeamModel {
                model: model.label.clone(),
                requests: std::array::from_fn(|_| OnceLock::new()),
                tokens_in: Lazy::new(names::TOKENS, labels("in")),
                tokens_out: Lazy::new(names::TOKENS, labels("out")),
                spend: OnceLock::new(),
            })
        }))
    }

    fn request_key(&self, model: SharedString, status: u16) -> Key {
        Key::from_parts(
            names::REQUESTS,
            vec![
                label("model", model),
                label("team", self.team.clone()),
                label("status", status_label(status)),
            ],
        )
    }

    /// One request of this team for `model` answered `status`.
    pub fn request(&self, model: &ModelMeters, status: u16) {
        let cells = self.cells(model);
        match (cells, status_index(status)) {
            (Some(c), Some(i)) => c.requests[i]
                .get_or_init(|| Counter::register(&self.request_key(c.model.clone(), status)))
                .increment(1),
            _ => Counter::register(&self.request_key(model.label.clone(), status)).increment(1),
        }
    }

    /// US dollars this team's request for `model` cost.
    pub fn spend(&self, model: &ModelMeters, usd: f64) {
        if let Some(c) = self.cells(model) {
            let cell = c
                .spend
                .get_or_init(|| super::spend::cell(&self.team, &c.model));
            super::spend::add(cell, usd);
        }
    }

    /// Tokens read and written for this team with `model`.
    pub fn tokens(&self, model: &ModelMeters, prompt: u64, completion: u64) {
        if let Some(c) = self.cells(model) {
            c.tokens_in.get().increment(prompt);
            c.tokens_out.get().increment(completion);
        }
    }
}

/// The series of one config snapshot that are not an upstream's: its models and teams.
pub struct Meters {
    models: usize,
    /// A model the config does not have: one label, so clients cannot grow the label set.
    unknown: ModelMeters,
    /// No model (the request ended before its body was read).
    none: ModelMeters,
    /// The config's teams, made with the snapshot.
    teams: HashMap<Arc<str>, Arc<TeamMeters>>,
    /// The store's teams, made on their first request under this snapshot.
    store_teams: DashMap<Arc<str>, Arc<TeamMeters>>,
    /// No caller (the request was refused before its key was known).
    no_team: TeamMeters,
}

impl Meters {
    /// The series of a snapshot with `models` routes and these config teams.
    pub fn new<'a>(models: usize, teams: impl IntoIterator<Item = &'a str>) -> Meters {
        let cells = models + 2;
        Meters {
            models,
            unknown: ModelMeters::new(models, SharedString::const_str("unknown")),
            none: ModelMeters::new(models + 1, SharedString::const_str("-")),
            teams: teams
                .into_iter()
                .map(|t| {
                    let name: Arc<str> = Arc::from(t);
                    let meters = TeamMeters::new(name.clone().into(), cells);
                    (name, Arc::new(meters))
                })
                .collect(),
            store_teams: DashMap::new(),
            no_team: TeamMeters::new(SharedString::const_str("-"), cells),
        }
    }

    /// The series of route `index` (0 ≤ index < the `models` this was made with; past that its
    /// team series are not kept).
    pub fn model(&self, index: usize, name: &Arc<str>) -> Arc<ModelMeters> {
        let index = if index < self.models {
            index
        } else {
            usize::MAX
        };
        Arc::new(ModelMeters::new(index, name.clone().into()))
    }

    /// The series of a team: the config's, else the store's (made on first use).
    pub fn team(&self, name: &Arc<str>) -> Arc<TeamMeters> {
        if let Some(t) = self.teams.get(name) {
            return t.clone();
        }
        if let Some(t) = self.store_teams.get(name) {
            return t.clone();
        }
        self.store_teams
            .entry(name.clone())
            .or_insert_with(|| Arc::new(TeamMeters::new(name.clone().into(), self.models + 2)))
            .clone()
    }

    pub fn unknown_model(&self) -> &ModelMeters {
        &self.unknown
    }
    pub fn no_model(&self) -> &ModelMeters {
        &self.none
    }
    pub fn no_team(&self) -> &TeamMeters {
        &self.no_team
    }

    /// For a request that never saw a snapshot: no models, no config teams.
    pub fn fallback() -> &'static Arc<Meters> {
        static FALLBACK: OnceLock<Arc<Meters>> = OnceLock::new();
        FALLBACK.get_or_init(|| Arc::new(Meters::new(0, [])))
    }
}

/// The process's series without a config label (the recorder's own handles, like the recorder
/// itself the one global).
pub struct Process {
    pub overhead: Lazy<Histogram>,
    pub in_flight: Lazy<Gauge>,
    pub errors: Table,
    pub connections_open: Lazy<Gauge>,
    pub connections_closed: Table,
    pub usage_rows: Table,
    pub usage_queue: Lazy<Gauge>,
    pub usage_write_errors: Lazy<Counter>,
}

/// The process's series (see [`Process`]).
pub fn process() -> &'static Process {
    static PROCESS: OnceLock<Process> = OnceLock::new();
    PROCESS.get_or_init(|| Process {
        overhead: Lazy::new(names::OVERHEAD, vec![]),
        in_flight: Lazy::new(names::IN_FLIGHT, vec![]),
        errors: Table::new(names::ERRORS, vec![], "kind"),
        connections_open: Lazy::new(names::CONNECTIONS_OPEN, vec![]),
        connections_closed: Table::new(names::CONNECTIONS_CLOSED, vec![], "reason"),
        usage_rows: Table::new(names::USAGE_ROWS, vec![], "outcome"),
        usage_queue: Lazy::new(names::USAGE_QUEUE, vec![]),
        usage_write_errors: Lazy::new(names::USAGE_WRITE_ERRORS, vec![]),
    })
}

impl std::fmt::Debug for ModelMeters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ModelMeters").field(&self.label).finish()
    }
}
impl std::fmt::Debug for TeamMeters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TeamMeters").field(&self.team).finish()
    }
}
impl std::fmt::Debug for Meters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meters")
            .field("models", &self.models)
            .field("teams", &self.teams.len())
            .finish()
    }
}
