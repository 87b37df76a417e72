//! Mock OAuth2 token server: `client_credentials` and `refresh_token` grants on
//! `POST /oauth/token` (form body or HTTP Basic client auth) and the Baidu
//! style `GET|POST /oauth/2.0/token?grant_type=…&client_id=…&client_secret=…`.
//! Owns issued-token bookkeeping (lifetime on the server's monotonic clock,
//! revocation), failure knobs (fail_next, hang, delay, odd `expires_in`), the
//! request records, and a [`MockOAuth::bearer_check`] to plug into
//! [`super::MockUpstream::set_auth_check`].

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use http::{header, HeaderMap, Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    basic_auth, bearer_token, form_get, lock, parse_form, sleep_or_cancel, wait_for, AuthCheck,
    ServerHandle,
};

/// One request to a token endpoint, as received.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// Parameters from the form/JSON body and then the query string, decoded.
    pub params: Vec<(String, String)>,
    pub at: Instant,
}

struct TokenInfo {
    expires_at: Instant,
    revoked: bool,
}

struct State_ {
    clients: HashMap<String, String>,
    tokens: HashMap<String, TokenInfo>,
    /// refresh token -> client id it was issued to (if known).
    refresh: HashMap<String, Option<String>>,
    grants: Vec<String>,
    requests: Vec<TokenRequest>,
    lifetime: Duration,
    expires_in_override: Option<Value>,
    issue_refresh: bool,
    delay: Duration,
    fail: (usize, u16),
}

struct Shared {
    state: Mutex<State_>,
    token_requests: AtomicUsize,
    issued: AtomicUsize,
    rejected_expired: AtomicUsize,
    hang: AtomicBool,
    hang_changed: Notify,
    /// Signalled on every token request.
    requested: Notify,
    cancel: CancellationToken,
}

/// What the token server knows of a token (see [`MockOAuth::token_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Valid,
    /// Issued, but expired or revoked.
    Stale,
    Unknown,
}

impl Shared {
    fn token_state(&self, token: &str) -> TokenState {
        match lock(&self.state).tokens.get(token) {
            Some(t) if !t.revoked && Instant::now() < t.expires_at => TokenState::Valid,
            Some(_) => TokenState::Stale,
            None => TokenState::Unknown,
        }
    }
}

/// Handle to a running mock token server. Clones share the same server; it
/// stops when the last clone is dropped or on [`MockOAuth::shutdown`].
#[derive(Clone)]
pub struct MockOAuth {
    shared: Arc<Shared>,
    server: Arc<ServerHandle>,
    /// `https` when started with [`MockOAuth::start_tls`].
    scheme: &'static str,
}

impl MockOAuth {
    /// Starts the mock on `127.0.0.1:0`. Defaults: lifetime 3600 s, no refresh
    /// tokens, no clients.
    pub async fn start() -> io::Result<MockOAuth> {
        MockOAuth::start_with(None).await
    }

    /// Starts the mock over TLS with `tls`: its URLs are then `https://`.
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> io::Result<MockOAuth> {
        MockOAuth::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> io::Result<MockOAuth> {
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            state: Mutex::new(State_ {
                clients: HashMap::new(),
                tokens: HashMap::new(),
                refresh: HashMap::new(),
                grants: Vec::new(),
                requests: Vec::new(),
                lifetime: Duration::from_secs(3600),
                expires_in_override: None,
                issue_refresh: false,
                delay: Duration::ZERO,
                fail: (0, 500),
            }),
            token_requests: AtomicUsize::new(0),
            issued: AtomicUsize::new(0),
            rejected_expired: AtomicUsize::new(0),
            hang: AtomicBool::new(false),
            hang_changed: Notify::new(),
            requested: Notify::new(),
            cancel: cancel.clone(),
        });
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let (server, scheme) = match tls {
            None => (ServerHandle::spawn(router, cancel).await?, "http"),
            Some(tls) => (ServerHandle::spawn_tls(router, cancel, tls).await?, "https"),
        };
        Ok(MockOAuth {
            shared,
            server: Arc::new(server),
            scheme,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT/oauth/token`
    pub fn token_url(&self) -> String {
        format!("{}://{}/oauth/token", self.scheme, self.addr())
    }

    /// `http://127.0.0.1:PORT/oauth/2.0/token` (Baidu style, params in query).
    pub fn baidu_url(&self) -> String {
        format!("{}://{}/oauth/2.0/token", self.scheme, self.addr())
    }

    /// Stops the server; hanging token requests end.
    pub async fn shutdown(&self) {
        self.server.shutdown().await;
    }

    // ---- knobs ----

    pub fn add_client(&self, id: &str, secret: &str) {
        lock(&self.shared.state)
            .clients
            .insert(id.to_owned(), secret.to_owned());
    }

    /// Include a `refresh_token` in successful answers.
    pub fn set_issue_refresh_tokens(&self, on: bool) {
        lock(&self.shared.state).issue_refresh = on;
    }

    /// Real lifetime of tokens issued from now on (default 3600 s).
    pub fn set_lifetime(&self, d: Duration) {
        lock(&self.shared.state).lifetime = d;
    }

    /// Report this as `expires_in` instead of the lifetime in seconds;
    /// `Some(Value::Null)` omits the field. The real lifetime is unchanged.
    pub fn set_expires_in_override(&self, v: Option<Value>) {
        lock(&self.shared.state).expires_in_override = v;
    }

    /// The next `n` token requests answer `status` with `{"error":"server_error"}`.
    pub fn fail_next(&self, n: usize, status: u16) {
        lock(&self.shared.state).fail = (n, status);
    }

    /// While set, token requests get no answer (they proceed once cleared).
    pub fn set_hang(&self, on: bool) {
        self.shared.hang.store(on, Ordering::SeqCst);
        self.shared.hang_changed.notify_waiters();
    }

    /// Delay before every token answer.
    pub fn set_delay(&self, d: Duration) {
        lock(&self.shared.state).delay = d;
    }

    /// Revokes an access or refresh token; false if it was never issued.
    pub fn revoke(&self, token: &str) -> bool {
        let mut st = lock(&self.shared.state);
        let refresh = st.refresh.remove(token).is_some();
        match st.tokens.get_mut(token) {
            Some(t) => {
                t.revoked = true;
                true
            }
            None => refresh,
        }
    }

    /// Revokes every access and refresh token issued so far.
    pub fn revoke_all(&self) {
        let mut st = lock(&self.shared.state);
        st.tokens.values_mut().for_each(|t| t.revoked = true);
        st.refresh.clear();
    }

    /// Issues an access token directly (no request, not counted in `issued`).
    pub fn mint(&self) -> String {
        let mut st = lock(&self.shared.state);
        let token = format!("mock-at-{}", uuid::Uuid::new_v4().simple());
        let expires_at = Instant::now() + st.lifetime;
        st.tokens.insert(
            token.clone(),
            TokenInfo {
                expires_at,
                revoked: false,
            },
        );
        token
    }

    // ---- records ----

    /// Requests to a token endpoint, including failed, hanging and rejected ones.
    pub fn token_requests(&self) -> usize {
        self.shared.token_requests.load(Ordering::SeqCst)
    }

    /// Waits until `token_requests() >= n`; false on timeout.
    pub async fn wait_token_requests(&self, n: usize, timeout: Duration) -> bool {
        wait_for(&self.shared.requested, timeout, || {
            self.token_requests() >= n
        })
        .await
    }

    /// Access tokens issued through the endpoints.
    pub fn issued(&self) -> usize {
        self.shared.issued.load(Ordering::SeqCst)
    }

    /// `grant_type` of every token request (as received, in arrival order).
    pub fn grants(&self) -> Vec<String> {
        lock(&self.shared.state).grants.clone()
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        lock(&self.shared.state).requests.clone()
    }

    /// Issued, not revoked, not expired.
    pub fn is_valid(&self, token: &str) -> bool {
        matches!(self.shared.token_state(token), TokenState::Valid)
    }

    /// What the server knows of `token` now: valid, issued but expired or revoked, or
    /// unknown. A stale token counts in [`MockOAuth::rejected_expired`] (a fake upstream
    /// checking its tokens here refuses it).
    pub fn token_state(&self, token: &str) -> TokenState {
        let state = self.shared.token_state(token);
        if state == TokenState::Stale {
            self.shared.rejected_expired.fetch_add(1, Ordering::SeqCst);
        }
        state
    }

    /// Requests rejected by [`MockOAuth::bearer_check`] whose token had been
    /// issued but was expired or revoked.
    pub fn rejected_expired(&self) -> usize {
        self.shared.rejected_expired.load(Ordering::SeqCst)
    }

    /// A check for [`super::MockUpstream::set_auth_check`]: accepts a request
    /// whose bearer token, or `access_token` query parameter, is valid now.
    pub fn bearer_check(&self) -> AuthCheck {
        let shared = self.shared.clone();
        Arc::new(move |headers: &HeaderMap, query: Option<&str>| {
            let token = bearer_token(headers)
                .map(str::to_owned)
                .or_else(|| query.and_then(|q| form_get(q, "access_token")));
            let Some(token) = token else {
                return false;
            };
            match shared.token_state(&token) {
                TokenState::Valid => true,
                TokenState::Stale => {
                    shared.rejected_expired.fetch_add(1, Ordering::SeqCst);
                    false
                }
                TokenState::Unknown => false,
            }
        })
    }
}

// ---- request handling ----

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = json!({"error": error, "error_description": description});
    (status, Json(body)).into_response()
}

/// Body parameters (form, or a JSON object), then query parameters.
fn request_params(headers: &HeaderMap, body: &Bytes, query: Option<&str>) -> Vec<(String, String)> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("json"));
    let mut params = if is_json {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => map
                .into_iter()
                .map(|(k, v)| {
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                    (k, v)
                })
                .collect(),
            _ => Vec::new(),
        }
    } else {
        parse_form(&String::from_utf8_lossy(body))
    };
    if let Some(q) = query {
        params.extend(parse_form(q));
    }
    params
}

async fn handle(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let baidu = path == "/oauth/2.0/token" && matches!(parts.method, Method::GET | Method::POST);
    if !(baidu || (path == "/oauth/token" && parts.method == Method::POST)) {
        return oauth_error(StatusCode::NOT_FOUND, "not_found", "unknown endpoint");
    }
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let query = parts.uri.query().map(str::to_owned);
    let params = request_params(&parts.headers, &bytes, query.as_deref());
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let grant = get("grant_type");
    let delay = {
        let mut st = lock(&s.state);
        if let Some(g) = &grant {
            st.grants.push(g.clone());
        }
        st.requests.push(TokenRequest {
            method: parts.method.as_str().to_owned(),
            path: path.to_owned(),
            query: query.clone(),
            headers: parts.headers.clone(),
            params: params.clone(),
            at: Instant::now(),
        });
        st.delay
    };
    s.token_requests.fetch_add(1, Ordering::SeqCst);
    s.requested.notify_waiters();

    // Hang while the knob is set (or until shutdown).
    loop {
        let changed = s.hang_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if !s.hang.load(Ordering::SeqCst) {
            break;
        }
        tokio::select! {
            _ = changed => {}
            _ = s.cancel.cancelled() => {
                return oauth_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "shutting down");
            }
        }
    }
    if !sleep_or_cancel(delay, &s.cancel).await {
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "shutting down",
        );
    }

    let mut st = lock(&s.state);
    if st.fail.0 > 0 {
        st.fail.0 -= 1;
        let status = StatusCode::from_u16(st.fail.1).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return oauth_error(status, "server_error", "injected failure");
    }

    // Client authentication: HTTP Basic, else client_id/client_secret params.
    let client =
        basic_auth(&parts.headers).or_else(|| Some((get("client_id")?, get("client_secret")?)));
    let client_ok =
        |st: &State_, (id, secret): &(String, String)| st.clients.get(id) == Some(secret);

    let Some(grant) = grant else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "missing grant_type",
        );
    };
    let client_id = match grant.as_str() {
        "client_credentials" => match &client {
            Some(c) if client_ok(&st, c) => Some(c.0.clone()),
            _ => {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "unknown client or bad secret",
                )
            }
        },
        "refresh_token" => {
            if let Some(c) = &client {
                if !client_ok(&st, c) {
                    return oauth_error(
                        StatusCode::UNAUTHORIZED,
                        "invalid_client",
                        "unknown client or bad secret",
                    );
                }
            }
            let owner = get("refresh_token").and_then(|rt| st.refresh.get(&rt).cloned());
            match owner {
                Some(owner)
                    if client.is_none()
                        || owner.is_none()
                        || owner == client.as_ref().map(|c| c.0.clone()) =>
                {
                    owner
                }
                _ => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "unknown, revoked or foreign refresh token",
                    )
                }
            }
        }
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant type not supported",
            )
        }
    };

    let body = issue(&s, &mut st, client_id, baidu);
    drop(st);
    (StatusCode::OK, Json(body)).into_response()
}

/// Issues an access token (and a refresh token if enabled); the answer body.
fn issue(s: &Shared, st: &mut State_, client_id: Option<String>, baidu: bool) -> Value {
    let token = format!("mock-at-{}", uuid::Uuid::new_v4().simple());
    let lifetime = st.lifetime;
    st.tokens.insert(
        token.clone(),
        TokenInfo {
            expires_at: Instant::now() + lifetime,
            revoked: false,
        },
    );
    s.issued.fetch_add(1, Ordering::SeqCst);
    let mut body = json!({"access_token": token, "token_type": "Bearer"});
    match &st.expires_in_override {
        None => body["expires_in"] = json!(lifetime.as_secs().max(1)),
        Some(Value::Null) => {}
        Some(v) => body["expires_in"] = v.clone(),
    }
    if st.issue_refresh {
        let rt = format!("mock-rt-{}", uuid::Uuid::new_v4().simple());
        st.refresh.insert(rt.clone(), client_id);
        body["refresh_token"] = json!(rt);
    }
    if baidu {
        body["scope"] = json!("public");
        body["session_key"] = json!(format!("mock-sk-{}", uuid::Uuid::new_v4().simple()));
    }
    body
}
