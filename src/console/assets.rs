//! The console's files, compiled into the binary (`include_str!`): one HTML page, one style
//! sheet, JavaScript modules (the page shell, the admin API client, the SVG charts, one module
//! per page) and an icon. Nothing is fetched from elsewhere and nothing needs building. They
//! hold no data, so they are served without a session.
//!
//! Adding a page: a module under `assets/pages/`, a line in [`ASSETS`], a line in `app.js`'s page
//! list.

use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

struct Asset {
    path: &'static str,
    mime: &'static str,
    body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

macro_rules! asset {
    ($path:literal, $mime:expr) => {
        Asset {
            path: $path,
            mime: $mime,
            body: include_str!(concat!("assets/", $path)),
        }
    };
}

/// Every file under `/console/assets/`.
const ASSETS: &[Asset] = &[
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("chart.js", JS),
    asset!("pages/keys.js", JS),
    asset!("pages/teams.js", JS),
    asset!("pages/limits.js", JS),
    asset!("pages/spend.js", JS),
    asset!("pages/upstreams.js", JS),
    asset!("pages/credentials.js", JS),
    asset!("pages/errors.js", JS),
    asset!("pages/cache.js", JS),
    asset!("pages/batches.js", JS),
];

const INDEX: &str = include_str!("assets/index.html");

/// Served with `no-cache`: the browser asks again each time, so a new binary's files are used
/// at once (they are small).
fn serve(mime: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(mime)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `/console`: the page shell (it signs in, then draws pages from the admin API).
pub(super) async fn index() -> Response {
    serve("text/html; charset=utf-8", INDEX)
}

/// `/console/assets/{file}`.
pub(super) async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|a| a.path == file)
        .map(|a| serve(a.mime, a.body))
        .ok_or_else(|| ApiError::RouteNotFound {
            path: format!(
                "/console/assets/{}",
                file.chars().take(100).collect::<String>()
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every module an asset imports is served: a missing file would only show in a browser.
    #[test]
    fn every_imported_module_is_an_asset() {
        for a in ASSETS.iter().filter(|a| a.mime == JS) {
            for line in a.body.lines().filter(|l| l.starts_with("import ")) {
                let Some(spec) = line.split(['"', '\'']).nth(1) else {
                    panic!("{}: cannot read {line}", a.path)
                };
                let base = a.path.rsplit_once('/').map_or("", |(d, _)| d);
                let target = match spec.strip_prefix("../") {
                    Some(rest) => rest.to_owned(),
                    None => {
                        let rest = spec.trim_start_matches("./");
                        if base.is_empty() {
                            rest.to_owned()
                        } else {
                            format!("{base}/{rest}")
                        }
                    }
                };
                assert!(
                    ASSETS.iter().any(|x| x.path == target),
                    "{} imports {spec} ({target}), which is not served",
                    a.path
                );
            }
        }
        for a in ["app.js", "console.css", "favicon.svg"] {
            assert!(INDEX.contains(&format!("/console/assets/{a}")), "{a}");
        }
    }
}
