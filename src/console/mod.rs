//! The web console: `/console`, served by the binary itself, signed into with the admin key.
//!
//! What this owns: the console's route table, its embedded assets ([`assets`]: plain HTML, CSS
//! and JavaScript modules compiled into the binary with `include_str!`; no build step, no CDN),
//! and signing in and out ([`login`]: the session cookie and its attributes). The pages are
//! drawn in the browser from the admin API (`/admin/*`): the console is a client of that API and
//! implements no admin operation itself. What this must not touch: the sessions themselves and
//! the check on each admin request ([`crate::auth::session`], called by the admin API's gate),
//! and the admin operations ([`crate::admin`]).
//!
//! Off unless `admin.console.enabled` (and an admin key) is configured: then every `/console`
//! path is an unknown route ([`hidden`]), whatever the method. The assets need no session (they
//! hold no data); everything with data does: `/console/session` and the admin API.

mod assets;
mod login;

use axum::http::{HeaderName, HeaderValue};
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::state::{AppState, Snapshot};

/// The console's routes; [`crate::app::router`] merges them.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(assets::index))
        .route("/console/", get(assets::index))
        .route("/console/assets/{*file}", get(assets::asset))
        .route(
            "/console/login",
            post(login::login).layer(axum::extract::DefaultBodyLimit::max(login::MAX_LOGIN_BYTES)),
        )
        .route("/console/logout", post(login::logout))
        .route("/console/session", get(login::session))
        .layer(middleware::map_response(security_headers))
}

/// Whether the console is served: `admin.console.enabled` and an admin key.
pub fn enabled(snap: &Snapshot) -> bool {
    snap.admin.is_some()
        && snap
            .config
            .admin
            .as_ref()
            .is_some_and(|a| a.console.enabled)
}

/// Whether `path` is a console path that must look unknown (the console is off). The app asks
/// before routing, so no 405 tells that a route exists.
pub fn hidden(state: &AppState, path: &str) -> bool {
    (path == "/console" || path.starts_with("/console/")) && !enabled(&state.snapshot.load())
}

/// On every console answer: no framing by other sites, no MIME sniffing, no referrer, and a
/// content security policy that allows the console's own scripts and styles only (no inline
/// script, no other origin).
async fn security_headers(mut resp: Response) -> Response {
    const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
        img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
        frame-ancestors 'none'";
    let h = resp.headers_mut();
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ] {
        h.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    resp
}
