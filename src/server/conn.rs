//! One connection's life: what it is doing (requests in flight, when the last one ended) and the
//! deadline that closes it when it does nothing.
//!
//! hyper bounds a request head once it has started (`header_read_timeout`) but nothing bounds a
//! socket that never sends a byte (hyper-util's auto builder waits for the first bytes to tell
//! HTTP/1 from HTTP/2 with no timeout), a partial HTTP/2 preface, or an HTTP/2 connection with
//! no streams. [`watch`] runs the connection and closes it when:
//! - no request has arrived `header_read_timeout` after accept, or
//! - no request has been in flight for `idle_timeout` since the last one ended.
//!
//! A request is in flight from the moment hyper hands it to the router until its response body
//! has been sent (or dropped), so a long stream, or an upstream slow to answer, is never cut by
//! this; the write deadline (see [`super::framing::Guarded`]) covers a client that stops reading.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use http_body::Frame;
use tokio::time::Instant;
use tower::Service;

use crate::telemetry::names;

/// Why the server closed a connection (the `reason` label of [`names::CONNECTIONS_CLOSED`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No request within `header_read_timeout` of accept.
    NoRequest,
    /// No request in flight for `idle_timeout`.
    Idle,
    /// A write stayed blocked past `write_timeout` (the client stopped reading).
    WriteTimeout,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::NoRequest => "no_request",
            CloseReason::Idle => "idle",
            CloseReason::WriteTimeout => "write_timeout",
        }
    }

    pub fn count(self) {
        metrics::counter!(names::CONNECTIONS_CLOSED, "reason" => self.label()).increment(1);
    }
}

/// What one connection is doing, shared by its requests and its watcher.
#[derive(Debug)]
pub struct Activity {
    accepted: Instant,
    in_flight: AtomicUsize,
    /// Requests seen so far.
    requests: AtomicU64,
    /// When the last request ended, in milliseconds after `accepted`.
    idle_since_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            accepted: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
        })
    }

    /// When the connection is to be closed for doing nothing, as things stand; `None` while a
    /// request is in flight.
    fn close_at(
        &self,
        header_read_timeout: Duration,
        idle_timeout: Duration,
    ) -> Option<(Instant, CloseReason)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if self.requests.load(Ordering::Acquire) == 0 {
            return Some((self.accepted + header_read_timeout, CloseReason::NoRequest));
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some((self.accepted + since + idle_timeout, CloseReason::Idle))
    }
}

/// Held by a request until its response body is done.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: Arc<Activity>) -> InFlight {
        a.requests.fetch_add(1, Ordering::AcqRel);
        a.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(a)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = a.accepted.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
        a.idle_since_ms.fetch_max(ms, Ordering::AcqRel);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The router as one connection's service: every request is counted in flight until its
/// response body ends.
#[derive(Clone)]
pub struct Tracked {
    router: Router,
    activity: Arc<Activity>,
}

impl Tracked {
    pub fn new(router: Router, activity: Arc<Activity>) -> Tracked {
        Tracked { router, activity }
    }
}

impl<B> Service<http::Request<B>> for Tracked
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let guard = InFlight::new(self.activity.clone());
        let fut = self.router.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|inner| {
                Body::new(TrackedBody {
                    inner,
                    _guard: guard,
                })
            }))
        })
    }
}

/// A response body that keeps its request in flight until it ends or is dropped.
struct TrackedBody {
    inner: Body,
    _guard: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Run `conn` until it ends or its activity says it has done nothing for too long; then drop it
/// (which closes the socket) and count why.
pub async fn watch<F: Future>(
    conn: F,
    activity: Arc<Activity>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
) {
    tokio::pin!(conn);
    loop {
        let at = activity
            .close_at(header_read_timeout, idle_timeout)
            .map(|(at, _)| at)
            // A request in flight: look again in a while.
            .unwrap_or_else(|| Instant::now() + idle_timeout);
        tokio::select! {
            _ = &mut conn => return,
            () = tokio::time::sleep_until(at) => {
                if let Some((at, reason)) = activity.close_at(header_read_timeout, idle_timeout) {
                    if at <= Instant::now() {
                        tracing::debug!(reason = reason.label(), "closing a connection that does nothing");
                        reason.count();
                        return;
                    }
                }
            }
        }
    }
}
