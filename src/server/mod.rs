//! The listener: accept loop, per-connection settings, graceful shutdown.
//!
//! Every accepted socket gets `TCP_NODELAY`, the framing guard ([`framing`]) and a watcher
//! ([`conn`]) that closes it when it does nothing: no first request within
//! `header_read_timeout` of accept, or no request in flight for `idle_timeout`. A write blocked
//! past `write_timeout` (a client that stopped reading) fails its connection. Open connections
//! are capped (`max_connections`): at the cap the loop stops accepting until one closes, so a
//! flood of idle sockets queues in the kernel's backlog instead of exhausting file descriptors.
//! On shutdown the listener closes at once; connections in flight, streams included, get the
//! grace period to finish, then the rest are dropped. With `server.tls` the handshake ([`tls`])
//! runs in the connection's own task, bounded by `header_read_timeout`, before the framing
//! guard and hyper see the decrypted bytes.

pub mod conn;
pub mod framing;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::{Http2Config, ServerConfig};
use crate::telemetry::meters;

pub struct ServeOptions {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// One write to a client may stay blocked this long before the connection is failed.
    pub write_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Open connections at most (resolved: never 0).
    pub max_connections: usize,
    pub http2: Http2Config,
    /// TLS on the listener, loaded by [`ServeOptions::with_tls`]; `None`: plain HTTP.
    pub tls: Option<Arc<tls::ListenerTls>>,
}

impl ServeOptions {
    /// The listener's settings from the config; an unset `max_connections` becomes half the
    /// process's open-file limit.
    pub fn from_config(s: &ServerConfig) -> ServeOptions {
        ServeOptions {
            header_read_timeout: s.header_read_timeout.0,
            idle_timeout: s.idle_timeout.0,
            write_timeout: s.write_timeout.0,
            shutdown_grace: s.shutdown_grace.0,
            max_connections: s
                .max_connections
                .unwrap_or_else(|| default_max_connections(open_file_limit())),
            http2: s.http2.clone(),
            tls: None,
        }
    }

    /// With the listener's TLS from `server.tls` (its files read now), if configured.
    pub fn with_tls(mut self, s: &ServerConfig) -> Result<ServeOptions, String> {
        if let Some(cfg) = &s.tls {
            self.tls = Some(Arc::new(tls::ListenerTls::from_config(cfg)?));
        }
        Ok(self)
    }
}

/// Half the open-file limit (the rest is for upstream connections, the store, logs), at least 1.
fn default_max_connections(nofile: Option<u64>) -> usize {
    let half = nofile.unwrap_or(1024) / 2;
    usize::try_from(half).unwrap_or(usize::MAX).max(1)
}

/// The soft `RLIMIT_NOFILE`; `None` when unlimited or unknown.
fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Serve `app` on `listener` until `shutdown` resolves, then drain for the grace period.
pub async fn serve<A: conn::Serves>(
    listener: TcpListener,
    app: A,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(opts.http2.max_concurrent_streams)
        .keep_alive_interval(opts.http2.keep_alive_interval.0)
        .keep_alive_timeout(opts.http2.keep_alive_timeout.0)
        .max_header_list_size(opts.http2.max_header_list_size);
    // Shared by the connections' tasks (each serves through it).
    let builder = Arc::new(builder);
    let nofile = open_file_limit();
    tracing::info!(
        max_connections = opts.max_connections,
        open_file_limit = nofile.unwrap_or(0),
        "connection cap"
    );
    if nofile.is_some_and(|n| opts.max_connections as u64 >= n) {
        tracing::warn!(
            max_connections = opts.max_connections,
            open_file_limit = nofile.unwrap_or(0),
            "server.max_connections is not below the open-file limit: accept may fail with EMFILE"
        );
    }
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    let graceful = GracefulShutdown::new();
    // Aborted when the loop ends.
    let reloader = opts.tls.as_ref().and_then(|t| t.spawn_reloader());
    tokio::pin!(shutdown);
    loop {
        // At the cap, stop accepting until a connection closes: new sockets wait in the backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: log, breathe, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let activity = conn::Activity::new();
        let service = conn::Tracked::new(app.clone(), activity.clone()).with_addr(peer);
        let (header_read_timeout, idle_timeout, write_timeout) = (
            opts.header_read_timeout,
            opts.idle_timeout,
            opts.write_timeout,
        );
        meters::process().connections_open.get().increment(1.0);
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), opts.tls.clone());
        tokio::spawn(async move {
            let limits = Deadlines {
                header_read_timeout,
                idle_timeout,
                write_timeout,
            };
            match tls {
                // Boxed, like the connection inside it: the task then holds a pointer, not a
                // second copy of everything moved into `run` (see `run`).
                None => Box::pin(run(stream, builder, watcher, service, activity, limits)).await,
                // Boxed: a TLS stream and its handshake are several KiB that every plain
                // connection's task would otherwise carry too (the task is as large as its
                // largest branch).
                Some(tls) => {
                    Box::pin(async move {
                        // The handshake counts against the first request's deadline.
                        let accept = tls.acceptor().accept(stream);
                        match tokio::time::timeout(header_read_timeout, accept).await {
                            Ok(Ok(stream)) => {
                                let service =
                                    service.with_peer(tls::peer_certificate(stream.get_ref().1));
                                run(stream, builder, watcher, service, activity, limits).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake with a client failed");
                            }
                            Err(_) => conn::CloseReason::NoRequest.count(),
                        }
                    })
                    .await
                }
            }
            meters::process().connections_open.get().decrement(1.0);
            drop(permit);
        });
    }
    if let Some(r) = reloader {
        r.abort();
    }
    drop(listener);
    tracing::info!(
        grace_secs = opts.shutdown_grace.as_secs_f64(),
        "shutting down: draining connections"
    );
    if tokio::time::timeout(opts.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over; dropping remaining connections");
    }
}

/// A connection's deadlines (see [`conn::watch`]).
#[derive(Clone, Copy)]
struct Deadlines {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    write_timeout: Duration,
}

/// Serve one connection (plain TCP or TLS) through the framing guard until it ends, is closed
/// by its watcher, or the grace period after shutdown ends.
async fn run<S, A: conn::Serves>(
    stream: S,
    builder: Arc<Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    service: conn::Tracked<A>,
    activity: Arc<conn::Activity>,
    d: Deadlines,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = framing::Guarded::new(stream).with_write_timeout(d.write_timeout);
    let served =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    // Boxed: an async fn keeps room for a value both where it was made and in the future it
    // was moved into, so an inline connection made this task 12.5 KiB (6 KiB of it `run`); with
    // the boxes the three allocations come to about 3 KiB, each written in full when moved in
    // (docs/BENCHMARKS.md, "Memory per waiting stream").
    let served = Box::pin(watcher.watch(served.into_owned()));
    conn::watch(
        served,
        activity,
        d.header_read_timeout,
        d.idle_timeout,
        d.write_timeout,
    )
    .await;
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called (not when the
/// future is first polled), so a signal right after start-up is never lost.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    #[cfg(unix)]
    let int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    async move {
        #[cfg(unix)]
        {
            async fn recv(s: Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = recv(term) => {},
                () = recv(int) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_connection_cap_is_half_the_open_file_limit() {
        assert_eq!(default_max_connections(Some(20_000)), 10_000);
        assert_eq!(default_max_connections(Some(256)), 128);
        assert_eq!(default_max_connections(Some(1)), 1);
        assert_eq!(default_max_connections(None), 512);
    }
}
