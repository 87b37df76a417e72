//! `tollgate serve`: load and check the config, open the store, bind, serve until a signal,
//! then drain and flush (limits, cache writes, usage rows) in that order.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::secret::ProcessEnv;
use crate::server::{self, ServeOptions};
use crate::state::{AppState, Snapshot};

use super::EXIT_CONFIG;

pub(super) async fn serve(
    path: &std::path::Path,
    listen: Option<SocketAddr>,
    addr_file: Option<PathBuf>,
) -> u8 {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(config = %path.display(), error = %e, "invalid config");
            return EXIT_CONFIG;
        }
    };
    // The warnings `check-config` gives, in the log of the server that runs with them.
    match super::config_warnings(&config) {
        Ok(warnings) => {
            for w in warnings {
                tracing::warn!(config = %path.display(), warning = %w, "config warning");
            }
        }
        Err(e) => {
            tracing::error!(config = %path.display(), error = %e, "invalid config");
            return EXIT_CONFIG;
        }
    }
    let snapshot = match Snapshot::build(config, &ProcessEnv, None) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(config = %path.display(), error = %e, "invalid config");
            return EXIT_CONFIG;
        }
    };
    // The listener's certificate before the port, too.
    let opts = match ServeOptions::from_config(&snapshot.config.server)
        .with_tls(&snapshot.config.server)
    {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(config = %path.display(), error = %e, "invalid config");
            return EXIT_CONFIG;
        }
    };
    // The store before the port: a gateway that cannot reach it must not look ready; and the
    // signal handler before the address is published, so a SIGTERM is never the default kill.
    let shutdown = server::shutdown_signal();
    let (store, writer) = match &snapshot.config.store {
        None => {
            tracing::warn!("no store configured (store.url): config keys only, no usage rows");
            (None, None)
        }
        Some(cfg) => match crate::store::open(cfg, &ProcessEnv).await {
            Ok((h, w)) => (Some(h), Some(w)),
            Err(e) => {
                tracing::error!(error = %e, "cannot open the store");
                return 1;
            }
        },
    };
    let server_cfg = snapshot.config.server.clone();
    let addr = listen.unwrap_or(server_cfg.listen);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot listen");
            return 1;
        }
    };
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(addr = %bound, config = %path.display(), "listening");
    let state = AppState::with_store(snapshot, store.clone());
    let stop_watch = tokio_util::sync::CancellationToken::new();
    crate::reload::spawn_watcher(state.clone(), path.to_path_buf(), stop_watch.clone());
    let upkeep = state
        .metrics
        .spawn_upkeep(Duration::from_secs(5), stop_watch.clone());
    // `/metrics` on its own listener, stopped when the main one has drained.
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = match server_cfg.metrics_listen {
        None => None,
        Some(maddr) => match tokio::net::TcpListener::bind(maddr).await {
            Ok(l) => {
                tracing::info!(addr = %maddr, "metrics listening");
                Some(tokio::spawn(server::serve(
                    l,
                    crate::app::metrics_router(state.clone()),
                    ServeOptions {
                        // A scraper or two: no need for the main listener's budget.
                        max_connections: 64,
                        ..ServeOptions::from_config(&server_cfg)
                    },
                    async {
                        let _ = metrics_stopped.await;
                    },
                )))
            }
            Err(e) => {
                tracing::error!(addr = %maddr, error = %e, "cannot listen (server.metrics_listen)");
                return 1;
            }
        },
    };
    if let Some(f) = addr_file {
        if let Err(e) = std::fs::write(&f, &bound) {
            tracing::error!(file = %f.display(), error = %e, "cannot write addr file");
            return 1;
        }
    }
    // The batch worker (with a store): it takes no new lines from the moment shutdown begins;
    // its lines in flight finish within the grace and are recorded before the store closes.
    let worker = crate::batch::start(&state);
    let worker_stop = worker.as_ref().map(crate::batch::Worker::stop_token);
    let shutdown = async move {
        shutdown.await;
        if let Some(t) = worker_stop {
            t.cancel();
        }
    };
    server::serve(listener, crate::app::service(state.clone()), opts, shutdown).await;
    if let Some(w) = worker {
        w.stop(server_cfg.shutdown_grace.0).await;
    }
    let _ = metrics_stop.send(());
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    stop_watch.cancel();
    if let Some(t) = upkeep {
        let _ = t.await;
    }
    // Connections are drained: wait for the limiter's last settlements (spend), then save.
    state
        .snapshot
        .load()
        .limiter
        .close(server_cfg.shutdown_grace.0)
        .await;
    if let Err(e) = state.snapshot.load().limiter.flush() {
        tracing::warn!(error = %e, "limits state not saved");
    }
    // The response cache's queued disk and Redis writes (bounded by the shutdown grace).
    let cache = state.snapshot.load().cache.clone();
    if !cache.flush(server_cfg.shutdown_grace.0).await {
        tracing::warn!("response cache writes still queued at shutdown were dropped");
    }
    // The spans of the last requests, still queued for the collector (bounded by the grace).
    let traces = state.snapshot.load().tracing.clone();
    if let Some(t) = traces {
        if !t.flush(server_cfg.shutdown_grace.0).await {
            tracing::warn!("trace spans still queued at shutdown were dropped");
        }
    }
    // Connections are drained: write the usage rows still queued, then close the pool.
    if let Some(w) = writer {
        w.close().await;
    }
    if let Some(h) = store {
        h.db.close().await;
    }
    tracing::info!("stopped");
    0
}
