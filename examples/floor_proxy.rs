//! The floor under the gateway's per-request figures: the same proxy hop built from the crates
//! Tollgate's request path stands on (hyper's HTTP/1 server, hyper-util's pooled client, tokio's
//! multi-thread runtime, mimalloc) and nothing else: no routing, keys, JSON, limits, metrics or
//! log line. What it costs per request, and holds per waiting stream, is what Tollgate cannot go
//! below without replacing those crates (docs/BENCHMARKS.md, "The floor").
//!
//! It takes the gateway's command line so the benchmarks run it in the gateway's place:
//!
//! ```sh
//! cargo build --release --example floor_proxy
//! target/release/tollgate-bench --gateway-bin target/release/examples/floor_proxy ...
//! ./scripts/instructions.sh target/release/examples/floor_proxy
//! ```
//!
//! `serve --config FILE --listen ADDR [--addr-file PATH]`: every request is sent to the scheme
//! and authority of FILE's upstream `base_url`, path and headers as they came (but `Host`);
//! `GET /health` answers 200 itself. Not a proxy for anything but a benchmark.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Body = BoxBody<Bytes, hyper::Error>;

struct Args {
    config: String,
    listen: SocketAddr,
    addr_file: Option<String>,
}

fn args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    if it.next().as_deref() != Some("serve") {
        bail!("usage: floor_proxy serve --config FILE --listen ADDR [--addr-file PATH]");
    }
    let (mut config, mut listen, mut addr_file) = (None, None, None);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--config" => config = Some(value),
            "--listen" => listen = Some(value.parse().context("--listen")?),
            "--addr-file" => addr_file = Some(value),
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(Args {
        config: config.context("--config is required")?,
        listen: listen.context("--listen is required")?,
        addr_file,
    })
}

/// Scheme and authority of the gateway config's upstream (the first, by name, with a
/// `base_url`), read by the gateway's own config loader.
fn upstream(config: &str) -> Result<(Scheme, Authority)> {
    let cfg = tollgate::config::Config::load(std::path::Path::new(config))
        .with_context(|| format!("load {config}"))?;
    let url: Uri = cfg
        .upstreams
        .values()
        .find_map(|u| u.base_url.as_deref())
        .context("no upstream with a base_url in the config")?
        .parse()
        .context("base_url")?;
    let parts = url.into_parts();
    Ok((
        parts.scheme.context("base_url has no scheme")?,
        parts.authority.context("base_url has no authority")?,
    ))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let (scheme, authority) = upstream(&args.config)?;
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    if let Some(path) = &args.addr_file {
        std::fs::write(path, listener.local_addr()?.to_string())?;
    }
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (client, scheme, authority) = (client.clone(), scheme.clone(), authority.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                forward(client.clone(), scheme.clone(), authority.clone(), req)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    client: Client<HttpConnector, Incoming>,
    scheme: Scheme,
    authority: Authority,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if req.uri().path() == "/health" {
        return Ok(answer(StatusCode::OK));
    }
    let (mut parts, body) = req.into_parts();
    let mut uri = Uri::builder().scheme(scheme).authority(authority);
    if let Some(pq) = parts.uri.path_and_query() {
        uri = uri.path_and_query(pq.clone());
    }
    let Ok(uri) = uri.build() else {
        return Ok(answer(StatusCode::BAD_REQUEST));
    };
    parts.uri = uri;
    parts.headers.remove(http::header::HOST);
    match client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => Ok(resp.map(BodyExt::boxed)),
        Err(_) => Ok(answer(StatusCode::BAD_GATEWAY)),
    }
}

fn answer(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp
}
