//! Integration-test harness: a Tollgate started in process on 127.0.0.1:0, reached through real
//! sockets, stopped by dropping or [`Gateway::stop`].
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tollgate::config::Config;
use tollgate::server::{self, ServeOptions};
use tollgate::state::{AppState, Snapshot};

/// The quickstart's demo key.
pub const DEMO_KEY: &str = "sk-tollgate-demo";
/// sha256("sk-tollgate-demo").
pub const DEMO_KEY_SHA256: &str =
    "179510ee3e248a7bfae1a518d344461ddef0e32bbf53b40845f2d3e157c5973f";

pub struct Gateway {
    pub addr: SocketAddr,
    pub state: AppState,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Gateway {
    /// Start with `yaml`; `${VAR}` references resolve from `env`.
    pub async fn start_with_env(yaml: &str, env: HashMap<String, String>) -> Gateway {
        let config = match Config::parse(yaml) {
            Ok(c) => c,
            Err(e) => panic!("test config does not parse: {e}"),
        };
        let snapshot = match Snapshot::build(config, &env, None) {
            Ok(s) => s,
            Err(e) => panic!("test config is invalid: {e}"),
        };
        let opts = ServeOptions {
            header_read_timeout: snapshot.config.server.header_read_timeout.0,
            shutdown_grace: snapshot.config.server.shutdown_grace.0,
        };
        let state = AppState::new(snapshot);
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("cannot bind: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("no local addr: {e}"),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let router = tollgate::app::router(state.clone());
        let task = tokio::spawn(server::serve(listener, router, opts, async {
            let _ = rx.await;
        }));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Gateway {
            addr,
            state,
            client,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn start(yaml: &str) -> Gateway {
        Gateway::start_with_env(yaml, HashMap::new()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// POST JSON with the demo key.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.post_with_key(path, DEMO_KEY, body).await
    }

    pub async fn post_with_key(
        &self,
        path: &str,
        key: &str,
        body: serde_json::Value,
    ) -> reqwest::Response {
        match self
            .client
            .post(self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => panic!("request to {path} failed: {e}"),
        }
    }

    /// Begin a graceful shutdown and wait until the server has drained.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Begin a graceful shutdown without waiting.
    pub fn begin_shutdown(&mut self) -> Option<JoinHandle<()>> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.take()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// A config serving `mock-gpt` from the built-in mock with the demo key; `extra_upstreams`,
/// `models` etc. can be appended by tests through string building.
pub fn mock_config(chunks: usize, chunk_delay_ms: u64) -> String {
    format!(
        r#"
upstreams:
  mock:
    provider: mock
    mock: {{ chunks: {chunks}, chunk_delay: {chunk_delay_ms}ms }}
models:
  mock-gpt: {{ targets: [ {{ upstream: mock }} ] }}
teams:
  demo: {{ models: ["*"] }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
"#
    )
}

/// A chat body with one user message.
pub fn chat(model: &str, text: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({"model": model, "stream": stream,
        "messages": [{"role": "user", "content": text}]})
}

/// Read an SSE body and return the `data:` payloads in order.
pub async fn sse_events(resp: reqwest::Response) -> Vec<String> {
    let text = match resp.text().await {
        Ok(t) => t,
        Err(e) => panic!("stream body failed: {e}"),
    };
    text.split("\n\n")
        .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_owned)
        .collect()
}

/// Concatenate `choices[0].delta.content` of chat chunks.
pub fn stream_content(events: &[String]) -> String {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}
