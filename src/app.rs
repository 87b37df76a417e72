//! The one route table and the middleware order, written once.
//!
//! [`router`] is the route table tests call; [`service`] is what the server runs: the same
//! router, with the relay endpoints taken straight to their handler when no layer of the
//! router's but the edge pass would see them ([`App`]). Authentication is on for every
//! `/v1` route; the only unauthenticated routes are `/health`, `/ready` and `/metrics` (which
//! takes `server.metrics_key` when set, and can move to its own listener); `/admin` and the web
//! console (`/console`, [`crate::console`]) have their own gates. Unknown
//! routes and wrong methods answer OpenAI-shaped 404/405. This module does not relay anything
//! itself: `/v1` handlers hand off to [`crate::proxy::handle`].

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::ApiError;
use crate::policy::{self, Endpoint};
use crate::proxy::{self, RequestId};
use crate::state::AppState;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The relay endpoints: each path `POST`ed to and the endpoint it runs as, for the route table
/// and for [`App`]'s direct path alike.
const RELAY: [(&str, Endpoint); 3] = [
    ("/v1/chat/completions", Endpoint::Chat),
    ("/v1/completions", Endpoint::Completions),
    ("/v1/embeddings", Endpoint::Embeddings),
];

pub fn router(state: AppState) -> Router {
    let cors = cors_layer(&state);
    let edge = middleware::from_fn_with_state(state.clone(), edge);
    let mut routes = Router::new();
    for (path, endpoint) in RELAY {
        let relay = move |State(s): State<AppState>, req: Request| proxy::handle(s, endpoint, req);
        routes = routes.route(path, post(relay));
    }
    let routes = routes
        .route("/v1/responses", post(crate::fronts::responses::create))
        .route("/v1/messages", post(crate::fronts::messages::create))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(crate::batch::api::router())
        .merge(crate::admin::router(state.clone()))
        .merge(crate::console::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    // Outside-in: the edge pass (request id, framing, admin hiding; one middleware, see
    // [`edge`]), then CORS (answers preflights before anything else runs), then the route
    // table. Admin hiding must run before routing (a route's layers run after the wrong-method
    // answer is chosen and its `Allow` header added), so the route table sits behind the edge
    // as one service.
    let mut app = Router::new().fallback_service(routes);
    if let Some(cors) = cors {
        app = app.layer(cors);
    }
    app.layer(edge)
}

/// What the listener serves: [`router`], with the relay endpoints ([`RELAY`]) handed to
/// [`proxy::handle`] through the same edge pass without the route table's layers (about 10,000
/// instructions per request; docs/BENCHMARKS.md). With CORS on, every request goes through
/// the router, whose CORS layer must see it. The answers are the router's: the socket tests run
/// this, `oneshot` tests the router.
#[derive(Clone)]
pub struct App {
    state: AppState,
    routes: Router,
    /// The relay endpoints skip the route table (no CORS layer to pass).
    direct: bool,
}

/// The service for [`crate::server::serve`].
pub fn service(state: AppState) -> App {
    App {
        direct: cors_layer(&state).is_none(),
        routes: router(state.clone()),
        state,
    }
}

/// The endpoint of a request the direct path takes (one of [`RELAY`]).
fn relay_endpoint(req: &Request) -> Option<Endpoint> {
    if req.method() != Method::POST {
        return None;
    }
    let path = req.uri().path();
    RELAY.iter().find(|(p, _)| *p == path).map(|&(_, e)| e)
}

impl tower::Service<Request> for App {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match relay_endpoint(&req).filter(|_| self.direct) {
            Some(endpoint) => {
                let s = self.state.clone();
                Box::pin(async move {
                    let handler = |req| proxy::handle(s.clone(), endpoint, req);
                    Ok(edge_pass(&s, req, handler).await)
                })
            }
            None => Box::pin(self.routes.call(req)),
        }
    }
}

/// The models the caller's team may use.
async fn models(State(s): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let data: Vec<_> = visible_models(&s, req.headers(), req.extensions())
        .await?
        .into_iter()
        .map(model_object)
        .collect();
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

/// `GET /v1/models/{id}` (the SDKs' `models.retrieve`): a model the caller may use, else the
/// same 404 an unknown model gets on a request.
async fn model(
    State(s): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    if !visible_models(&s, req.headers(), req.extensions())
        .await?
        .contains(&id)
    {
        return Err(ApiError::ModelNotFound { model: id });
    }
    Ok(Json(model_object(id)).into_response())
}

/// The config's models the caller's team and key may use.
async fn visible_models(
    s: &AppState,
    headers: &http::HeaderMap,
    extensions: &http::Extensions,
) -> Result<Vec<String>, ApiError> {
    let snap = s.snapshot.load_full();
    let caller = s.authenticate(&snap, headers, extensions).await?;
    let team = caller
        .team_policy(&snap.config.teams)
        .ok_or(ApiError::Internal)?;
    Ok(snap
        .config
        .models
        .keys()
        .filter(|m| policy::model_allowed(team, m) && caller.key_allows(m))
        .cloned()
        .collect())
}

fn model_object(id: String) -> serde_json::Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "tollgate"})
}

async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Ready when a config is loaded and at least one upstream is not known to be down.
async fn ready(State(s): State<AppState>) -> Response {
    let snap = s.snapshot.load();
    if snap.upstreams.values().any(|u| u.is_healthy()) {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "no upstream available"})),
        )
            .into_response()
    }
}

/// `/metrics` on the main listener: an unknown route when `server.metrics_listen` moves it.
async fn metrics(State(s): State<AppState>, req: Request) -> Result<Response, ApiError> {
    if s.snapshot.load().config.server.metrics_listen.is_some() {
        return Err(ApiError::RouteNotFound {
            path: "/metrics".into(),
        });
    }
    render_metrics(&s, &req)
}

/// The Prometheus text, behind `server.metrics_key` when one is set.
fn render_metrics(s: &AppState, req: &Request) -> Result<Response, ApiError> {
    if let Some(key) = &s.snapshot.load().metrics_key {
        key.authenticate(req.headers())?;
    }
    Ok((
        [(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        s.metrics.render(),
    )
        .into_response())
}

/// `/metrics` alone, for its own listener (`server.metrics_listen`).
pub fn metrics_router(state: AppState) -> Router {
    async fn own(State(s): State<AppState>, req: Request) -> Result<Response, ApiError> {
        render_metrics(&s, &req)
    }
    let edge = middleware::from_fn_with_state(state.clone(), edge);
    Router::new()
        .route("/metrics", get(own))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(edge)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::RouteNotFound {
        path: req.uri().path().chars().take(200).collect(),
    }
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::MethodNotAllowed {
        method: req.method().to_string(),
    }
}

/// The edge of every request, in one pass (one middleware instead of three):
/// 1. the request id: a sane client `x-request-id` or a new one, on the request and the answer
///    (every answer carries it, even a framing or CORS error);
/// 2. framing: refuse ambiguous framing (request smuggling): both Content-Length and
///    Transfer-Encoding, several Content-Length values, or a head the framing guard marked (bare
///    LF line ends, an overlong line, a Content-Length that is not one plain number; see
///    [`crate::server::framing`]), and close the connection;
/// 3. admin hiding: without an admin key, `/admin/*` is an unknown path for every method; so
///    is `/console/*` with the console off.
async fn edge(State(s): State<AppState>, req: Request, next: Next) -> Response {
    edge_pass(&s, req, |req| next.run(req)).await
}

/// [`edge`]'s work around `inner`, for the middleware and for [`App`]'s direct relay path.
async fn edge_pass<F, Fut>(s: &AppState, mut req: Request, inner: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let id: Arc<str> = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(Arc::from)
        .unwrap_or_else(|| {
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            Arc::from(&*uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf))
        });
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = if ambiguous_framing(req.headers()) {
        let mut resp = ApiError::invalid(
            "ambiguous request framing: conflicting Content-Length / Transfer-Encoding, \
             a bare LF line end or an overlong header line",
            None,
        )
        .into_response();
        // The rest of this connection's bytes cannot be trusted: close it.
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        resp
    } else if crate::admin::hidden(s, req.uri().path())
        || crate::console::hidden(s, req.uri().path())
    {
        not_found(req).await.into_response()
    } else {
        inner(req).await
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(X_REQUEST_ID, v);
    }
    resp
}

fn ambiguous_framing(h: &http::HeaderMap) -> bool {
    let lengths = h.get_all(http::header::CONTENT_LENGTH).iter().count();
    h.contains_key(crate::server::framing::MARK)
        || lengths > 1
        || (lengths == 1 && h.contains_key(http::header::TRANSFER_ENCODING))
}

fn cors_layer(state: &AppState) -> Option<CorsLayer> {
    let snap = state.snapshot.load();
    let cfg = &snap.config.server.cors;
    if cfg.allowed_origins.is_empty() {
        return None;
    }
    let origin = if cfg.allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            cfg.allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([
                http::header::AUTHORIZATION,
                http::header::CONTENT_TYPE,
                HeaderName::from_static("x-api-key"),
                X_REQUEST_ID,
            ])
            .expose_headers([X_REQUEST_ID])
            .allow_credentials(cfg.allow_credentials),
    )
}
