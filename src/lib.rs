//! Tollgate: an LLM API gateway.
//!
//! Clients speak the OpenAI API to Tollgate with a Tollgate key that belongs to a team; Tollgate
//! authenticates them, shapes and admits the request by the team's policy, picks an upstream
//! deployment, attaches that upstream's credential and relays the answer back chunk by chunk, then
//! accounts for it (log line, metrics, usage).
//!
//! One request's path, each step owned by one module and called in order from
//! [`proxy::handle`]:
//!
//! ```text
//! accept        (app)          body limit and read deadline, request id, CORS
//! authenticate  (auth)         key -> caller (key id, team)              -> 401
//! shape         (policy)       team defaults and caps, model allowed       -> 400 / 403 / 404
//! admit         (limits)       rate limits, concurrency, budget            -> 429
//! look up       (cache)        exact-match answer -> served; a miss carries its fill to the relay
//! plan          (routing)      model -> ordered attempts over upstreams
//! attempt       (proxy)        credential -> provider request -> send -> first byte
//! relay         (proxy::relay) bytes to the client as they come; usage captured on the way
//! account       (telemetry)    log line, metrics, limits settled, usage row -> async writer (store)
//! ```
//!
//! Shared state lives in [`state::AppState`]: an `ArcSwap`'d [`state::Snapshot`] of the config and
//! everything derived from it, so a request sees one consistent set.
//!
//! Modules stand in layers (`layers.txt`, checked by `tests/layers.rs`); a module uses its own
//! layer or lower ones, and no two modules use each other:
//!
//! ```text
//! ground    secret  server  telemetry  config  error  openai (wire types)  egress
//! domain    credentials  providers  policy  routing (owns Upstream)  limits  store  auth  cache
//! assembly  state (the snapshot built from config and the domain)
//! edges     proxy  fronts  batch  admin  console  app  reload  cli  testkit
//! ```
//!
//! [`cli`] (commands; [`cli::main`] is the program), [`server`] (listener, connection limits,
//! framing guard, shutdown), [`app`] (the route table and middleware order), [`proxy`] (the
//! request path, attempts, SSE events, relay, ledger), [`auth`] (keys, the store key cache), [`policy`],
//! [`limits`] (rate limits, concurrency, budgets; memory and Redis), [`routing`] (upstreams,
//! strategies, breakers, queues, retry budget), [`credentials`] (static, OAuth2, JWT, pools),
//! [`providers`] (`openai`, `mock`, and the one reading of an upstream answer), [`store`] (SQLite/PostgreSQL persistence, usage writer),
//! [`cache`] (the response cache: memory, Redis and disk tiers, single flight), [`fronts`] (client
//! dialects translated to chat at the edge: `/v1/responses`), [`batch`] (the
//! OpenAI Batch API and the worker that runs its lines through the request path), [`admin`], [`console`] (the web console), [`config`], [`reload`], [`state`], [`telemetry`] (request log, metrics, OpenTelemetry traces), [`error`], [`openai`],
//! [`secret`], [`egress`] (outbound TLS and the egress proxy), and [`testkit`] (mock upstream and OAuth2 server, behind the `testkit` feature).

pub mod admin;
pub mod app;
pub mod auth;
pub mod batch;
pub mod cache;
pub mod cli;
pub mod config;
pub mod console;
pub mod credentials;
pub mod egress;
pub mod error;
pub mod fronts;
pub mod limits;
pub mod openai;
pub mod policy;
pub mod providers;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod secret;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
