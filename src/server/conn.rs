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
//! this. A client that stops reading is cut by the write deadline: on the socket (see
//! [`super::framing::Guarded`]) and, because HTTP/2 flow control stalls a stream without ever
//! blocking the socket, here too: a response body that has waited on the client for
//! `write_timeout` (hyper has not asked for its next 64 KiB piece) closes the connection.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http_body::Frame;
use tokio::time::Instant;
use tower::Service;

use crate::telemetry::meters;

/// Why the server closed a connection (the `reason` label of [`crate::telemetry::names::CONNECTIONS_CLOSED`]).
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
        meters::process()
            .connections_closed
            .increment(self.label(), 1);
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
    /// One entry per response body in flight: 0 while hyper is not waiting on the client, else
    /// 1 + the millisecond (after `accepted`) a piece was handed to hyper and not yet taken
    /// further. Only the bodies' own writes and the watcher's scans touch it.
    stalls: Mutex<Vec<Weak<AtomicU64>>>,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            accepted: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            stalls: Mutex::new(Vec::new()),
        })
    }

    fn now_ms(&self) -> u64 {
        self.accepted
            .elapsed()
            .as_millis()
            .min(u128::from(u64::MAX - 1)) as u64
    }

    /// A new response body's stall clock.
    fn stall_clock(&self) -> Arc<AtomicU64> {
        let clock = Arc::new(AtomicU64::new(0));
        if let Ok(mut v) = self.stalls.lock() {
            v.retain(|w| w.strong_count() > 0);
            v.push(Arc::downgrade(&clock));
        }
        clock
    }

    /// Since when a response body in flight has been waiting on the client, the oldest.
    fn oldest_stall(&self) -> Option<Instant> {
        let v = self.stalls.lock().ok()?;
        let oldest = v
            .iter()
            .filter_map(Weak::upgrade)
            .map(|c| c.load(Ordering::Acquire))
            .filter(|t| *t > 0)
            .min()?;
        Some(self.accepted + Duration::from_millis(oldest - 1))
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
struct InFlight {
    activity: Arc<Activity>,
    /// See [`Activity::stalls`].
    stall: Arc<AtomicU64>,
}

impl InFlight {
    fn new(a: Arc<Activity>) -> InFlight {
        a.requests.fetch_add(1, Ordering::AcqRel);
        a.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            stall: a.stall_clock(),
            activity: a,
        }
    }

    /// A piece of the body was handed to hyper: from now it waits on the client.
    fn handed(&self) {
        self.stall
            .store(self.activity.now_ms() + 1, Ordering::Release);
    }

    /// hyper asked for more: the client took what it was given.
    fn taken(&self) {
        self.stall.store(0, Ordering::Release);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.activity;
        a.idle_since_ms.fetch_max(a.now_ms(), Ordering::AcqRel);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a listener serves: a service from requests to responses that is always ready and never
/// fails ([`axum::Router`], or the gateway's `crate::app::App`).
pub trait Serves:
    Service<http::Request<Body>, Response = Response, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> Serves for T where
    T: Service<
            http::Request<Body>,
            Response = Response,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// The app's service as one connection's: every request is counted in flight until its
/// response body ends.
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    /// The connection's verified client certificate, put in every request's extensions.
    peer: Option<super::tls::PeerCertificate>,
    /// The client's address, put in every request's extensions.
    addr: Option<ClientAddr>,
}

/// The address a request's connection came from (the TCP peer), in every request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::SocketAddr);

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Tracked<S> {
        Tracked {
            inner,
            activity,
            peer: None,
            addr: None,
        }
    }

    /// Requests on this connection carry `addr` as an extension.
    pub fn with_addr(mut self, addr: std::net::SocketAddr) -> Tracked<S> {
        self.addr = Some(ClientAddr(addr));
        self
    }

    /// Requests on this connection carry `peer` as an extension.
    pub fn with_peer(mut self, peer: Option<super::tls::PeerCertificate>) -> Tracked<S> {
        self.peer = peer;
        self
    }
}

impl<B, S> Service<http::Request<B>> for Tracked<S>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
    S: Serves,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(p) = self.peer {
            req.extensions_mut().insert(p);
        }
        if let Some(a) = self.addr {
            req.extensions_mut().insert(a);
        }
        let guard = InFlight::new(self.activity.clone());
        let fut = self.inner.call(req.map(Body::new));
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|inner| {
                Body::new(TrackedBody {
                    inner,
                    rest: Bytes::new(),
                    guard,
                })
            }))
        })
    }
}

/// Largest piece of a body handed to hyper at once. hyper asks for the next piece only when the
/// previous one is on its way to the client, so small pieces turn "hyper has not asked for more
/// in `write_timeout`" into "the client has not taken 64 KiB in `write_timeout`", over HTTP/1
/// and HTTP/2 (where flow control, not the socket, holds a stalled stream back). Splitting
/// `Bytes` copies nothing.
const PIECE: usize = 64 * 1024;

/// A response body that keeps its request in flight until it ends or is dropped, hands its data
/// to hyper in pieces, and notes when it waits on the client.
struct TrackedBody {
    inner: Body,
    /// The rest of a data frame larger than [`PIECE`].
    rest: Bytes,
    guard: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        this.guard.taken();
        if !this.rest.is_empty() {
            let piece = this.rest.split_to(this.rest.len().min(PIECE));
            this.guard.handed();
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(mut data) => {
                        if data.len() > PIECE {
                            this.rest = data.split_off(PIECE);
                        }
                        Frame::data(data)
                    }
                    Err(frame) => frame,
                };
                this.guard.handed();
                Poll::Ready(Some(Ok(frame)))
            }
            // Pending: waiting on the upstream, not on the client.
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

/// Run `conn` until it ends, or its activity says it has done nothing for too long, or a response
/// body has waited on the client for `write_timeout`; then drop it (which closes the socket and
/// releases the answers it held) and count why.
pub async fn watch<F: Future>(
    conn: F,
    activity: Arc<Activity>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    write_timeout: Duration,
) {
    tokio::pin!(conn);
    // While requests are in flight, look for stalled bodies this often.
    let scan = (write_timeout / 4).max(Duration::from_millis(10));
    loop {
        let at = match activity.close_at(header_read_timeout, idle_timeout) {
            Some((at, _)) => at,
            None => {
                let next = Instant::now() + scan.min(idle_timeout);
                match activity.oldest_stall() {
                    Some(since) => next.min(since + write_timeout),
                    None => next,
                }
            }
        };
        tokio::select! {
            _ = &mut conn => return,
            () = tokio::time::sleep_until(at) => {
                let now = Instant::now();
                let reason = match activity.close_at(header_read_timeout, idle_timeout) {
                    Some((at, reason)) if at <= now => Some(reason),
                    Some(_) => None,
                    None => activity
                        .oldest_stall()
                        .filter(|since| *since + write_timeout <= now)
                        .map(|_| CloseReason::WriteTimeout),
                };
                if let Some(reason) = reason {
                    tracing::debug!(reason = reason.label(), "closing a connection");
                    reason.count();
                    return;
                }
            }
        }
    }
}
