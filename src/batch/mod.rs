//! Batch jobs: OpenAI's Batch API (`/v1/files`, `/v1/batches`) and the worker that runs them
//! inside the gateway. See docs/BATCH.md.
//!
//! A batch's lines go through the same request path as interactive requests: the worker sends
//! each one in process to [`crate::proxy::handle`] as the batch's team
//! ([`crate::auth::InProcess`]), so policy, limits (at `batch.share` of the team's), routing,
//! retries, credentials and accounting (usage rows carry the batch id) all apply. Progress lives
//! in the store line by line ([`crate::store::batches`] owns the exactly-once rules); file bytes
//! live in `batch.files_dir` ([`files`]).
//!
//! What is where: [`api`] the HTTP routes; [`wire`] OpenAI's JSON shapes; [`files`] the bytes
//! on disk; [`validate`] the input file's checks; [`worker`] the scheduler and leases; `run` a
//! batch's lines; [`line`] one line through the request path; `finalize` the output and error
//! files. This module does not parse config, authenticate keys or talk to upstreams itself.

pub mod api;
pub mod files;
mod finalize;
pub mod line;
mod run;
pub mod validate;
pub mod wire;
pub mod worker;

pub use worker::{start, Worker};
