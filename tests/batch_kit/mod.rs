//! Helpers of the batch tests: the Batch API spoken over real sockets with reqwest, input
//! files, and the check that an output has exactly one line per input line.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The Batch API of one gateway, as one key.
pub struct Api {
    pub base: String,
    pub key: String,
    pub client: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, key: &str) -> Api {
        Api {
            base: base.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Upload `text` as a batch input file; (status, answer).
    pub async fn upload(&self, name: &str, text: String) -> (u16, Value) {
        self.upload_purpose(name, text, "batch").await
    }

    pub async fn upload_purpose(&self, name: &str, text: String, purpose: &str) -> (u16, Value) {
        let part = reqwest::multipart::Part::bytes(text.into_bytes())
            .file_name(name.to_owned())
            .mime_str("application/jsonl")
            .unwrap_or_else(|e| panic!("mime: {e}"));
        let form = reqwest::multipart::Form::new()
            .text("purpose", purpose.to_owned())
            .part("file", part);
        let resp = self
            .client
            .post(format!("{}/v1/files", self.base))
            .bearer_auth(&self.key)
            .multipart(form)
            .send()
            .await
            .unwrap_or_else(|e| panic!("upload: {e}"));
        read(resp).await
    }

    /// Upload and start a batch over `endpoint`; the batch object.
    pub async fn submit(&self, text: String, endpoint: &str) -> Value {
        let (status, file) = self.upload("input.jsonl", text).await;
        assert_eq!(status, 200, "upload: {file}");
        let (status, batch) = self
            .post(
                "/v1/batches",
                json!({"input_file_id": file["id"], "endpoint": endpoint,
                       "completion_window": "24h"}),
            )
            .await;
        assert_eq!(status, 200, "create: {batch}");
        batch
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        read(resp).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        read(resp).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let resp = self
            .client
            .delete(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DELETE {path}: {e}"));
        read(resp).await
    }

    /// A file's bytes as text.
    pub async fn content(&self, file_id: &str) -> String {
        let resp = self
            .client
            .get(format!("{}/v1/files/{file_id}/content", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("content: {e}"));
        assert_eq!(resp.status().as_u16(), 200, "content of {file_id}");
        resp.text().await.unwrap_or_default()
    }

    /// Poll the batch (every 50 ms, at most `limit`) until `done` holds; the batch then.
    pub async fn wait_for(
        &self,
        id: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let (status, b) = self.get(&format!("/v1/batches/{id}")).await;
            assert_eq!(status, 200, "retrieve: {b}");
            if done(&b) {
                return b;
            }
            assert!(
                start.elapsed() < limit,
                "batch {id} did not get there within {limit:?}: {b}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait for the batch to end (completed, failed, cancelled or expired).
    pub async fn wait_end(&self, id: &str, limit: Duration) -> Value {
        self.wait_for(id, limit, |b| {
            matches!(
                b["status"].as_str(),
                Some("completed" | "failed" | "cancelled" | "expired")
            )
        })
        .await
    }
}

async fn read(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `n` chat lines for `model`: `custom_id` `req-<i>`, the user says `line <i>`.
pub fn chat_lines(n: usize, model: &str) -> String {
    (0..n)
        .map(|i| {
            json!({"custom_id": format!("req-{i}"), "method": "POST",
                   "url": "/v1/chat/completions",
                   "body": {"model": model, "messages": [{"role": "user", "content": format!("line {i}")}]}})
            .to_string()
                + "\n"
        })
        .collect()
}

/// The output and error files' lines by `custom_id`, asserting that no `custom_id` appears
/// twice; each as (status, the answer's text or the error's code).
pub fn results(output: &str, errors: &str) -> BTreeMap<String, (u64, String)> {
    let mut out = BTreeMap::new();
    for line in output.lines().chain(errors.lines()) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let id = v["custom_id"].as_str().unwrap_or_default().to_owned();
        let status = v["response"]["status_code"].as_u64().unwrap_or(0);
        let what = v["response"]["body"]["choices"][0]["message"]["content"]
            .as_str()
            .or_else(|| v["response"]["body"]["error"]["code"].as_str())
            .or_else(|| v["error"]["code"].as_str())
            .unwrap_or_default()
            .to_owned();
        assert!(
            out.insert(id.clone(), (status, what)).is_none(),
            "custom_id {id} appears twice"
        );
    }
    out
}

/// What an uninterrupted run of [`chat_lines`] through the mock answers.
pub fn expected(n: usize) -> BTreeMap<String, (u64, String)> {
    (0..n)
        .map(|i| (format!("req-{i}"), (200, format!("mock reply: line {i}"))))
        .collect()
}

/// The output and error files of an ended batch, as text ("" for a file it does not have).
pub async fn files_of(api: &Api, b: &Value) -> (String, String) {
    let output = match b["output_file_id"].as_str() {
        Some(id) => api.content(id).await,
        None => String::new(),
    };
    let errors = match b["error_file_id"].as_str() {
        Some(id) => api.content(id).await,
        None => String::new(),
    };
    (output, errors)
}
