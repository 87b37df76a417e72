//! Signing in and out of the console: `POST /console/login` (the admin key in, a session cookie
//! out), `GET /console/session` (the page asks whether it is signed in and gets its CSRF token),
//! `POST /console/logout`.
//!
//! The cookie: `tollgate_console=<random token>; HttpOnly; SameSite=Strict; Path=/; Max-Age=<ttl>`,
//! plus `Secure` when the listener is TLS. `Path=/` because the pages call `/admin/*` with it.
//! The admin key is compared in constant time (by its SHA-256, as the admin API does) and never
//! stored in the session or the cookie; a refused login is logged without the key.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::auth::hash_key;
use crate::auth::session::{self, COOKIE};
use crate::error::ApiError;
use crate::state::AppState;

/// A sign-in body is one key: anything longer is refused (the route's body limit stops reading
/// past it).
pub(super) const MAX_LOGIN_BYTES: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    key: String,
}

/// The `Set-Cookie` value for `token`, living `max_age` seconds (0 clears it).
fn cookie(token: &str, max_age: u64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    ))
    .ok()
}

/// A JSON answer that no cache keeps, with a cookie when one is set.
fn private(status: StatusCode, body: serde_json::Value, cookie: Option<HeaderValue>) -> Response {
    let mut resp = (status, Json(body)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(c) = cookie {
        h.insert(header::SET_COOKIE, c);
    }
    resp
}

/// `{"key": "<admin key>"}` → a session: its cookie and `{"csrf", "expires_in_secs"}`.
pub(super) async fn login(
    State(s): State<AppState>,
    b: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    // Past the route's body limit the body is not read on: the same 413 as any body too large.
    let b = b.map_err(|_| ApiError::BodyTooLarge {
        limit: MAX_LOGIN_BYTES,
    })?;
    let snap = s.snapshot.load();
    let (Some(admin), Some(cfg)) = (&snap.admin, snap.config.admin.as_ref()) else {
        return Err(ApiError::RouteNotFound {
            path: "/console/login".into(),
        });
    };
    if b.len() > MAX_LOGIN_BYTES {
        return Err(ApiError::BodyTooLarge {
            limit: MAX_LOGIN_BYTES,
        });
    }
    let l: Login = serde_json::from_slice(&b).map_err(|_| {
        ApiError::invalid(r#"the body must be {"key": "<admin key>"}"#, Some("key"))
    })?;
    let hash = hash_key(l.key.trim());
    if admin.lookup(&hash).is_none() {
        tracing::warn!("console login refused: not the admin key");
        return Err(ApiError::Unauthorized);
    }
    let ttl = cfg.console.session_ttl.0;
    let opened = s.sessions.open(hash, ttl, cfg.console.max_sessions);
    let secure = snap.config.server.tls.is_some();
    tracing::info!(sessions = s.sessions.len(), "console login");
    Ok(private(
        StatusCode::OK,
        json!({"csrf": opened.csrf, "expires_in_secs": ttl.as_secs()}),
        cookie(&opened.token, ttl.as_secs(), secure),
    ))
}

/// The session this request's cookie names: `{"csrf", "expires_in_secs"}`, or 401.
pub(super) async fn session(State(s): State<AppState>, h: HeaderMap) -> Result<Response, ApiError> {
    let snap = s.snapshot.load();
    let admin = snap.admin.as_ref().ok_or(ApiError::Unauthorized)?;
    let live = session::live(&s.sessions, admin, &h).ok_or(ApiError::Unauthorized)?;
    Ok(private(
        StatusCode::OK,
        json!({"csrf": live.csrf, "expires_in_secs": live.expires_in.as_secs()}),
        None,
    ))
}

/// End the session (its CSRF token required, as for every cookie-authenticated write) and clear
/// the cookie. Without a live session there is nothing to end: the cookie is cleared all the same.
pub(super) async fn logout(State(s): State<AppState>, h: HeaderMap) -> Result<Response, ApiError> {
    let snap = s.snapshot.load();
    let secure = snap.config.server.tls.is_some();
    if let Some(admin) = &snap.admin {
        if let Some(live) = session::live(&s.sessions, admin, &h) {
            if !session::csrf_matches(&live, &h) {
                return Err(ApiError::CsrfRejected);
            }
            if let Some(token) = session::cookie_token(&h) {
                s.sessions.close(token);
            }
        }
    }
    Ok(private(
        StatusCode::OK,
        json!({"signed_out": true}),
        cookie("", 0, secure),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_carries_its_flags() {
        let c = cookie("abc", 60, false).unwrap_or_else(|| panic!("no cookie"));
        assert_eq!(
            c.to_str().unwrap_or_default(),
            "tollgate_console=abc; HttpOnly; SameSite=Strict; Path=/; Max-Age=60"
        );
        let c = cookie("abc", 60, true).unwrap_or_else(|| panic!("no cookie"));
        assert!(c.to_str().unwrap_or_default().ends_with("; Secure"));
    }
}
