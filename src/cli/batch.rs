//! `tollgate batch`: submit, follow, cancel and download batches of a running gateway over its
//! HTTP API (the OpenAI Batch API), as a Tollgate key. The gateway is `--url` or
//! `TOLLGATE_URL` (default `http://127.0.0.1:8080`), the key `--key` or `TOLLGATE_API_KEY`.
//!
//! `submit` takes a JSONL file in OpenAI's batch format, or a plain text file of one prompt per
//! line, which it turns into requests (`custom_id` `line-<n>`) for `--model`; with `--model` a
//! JSONL line without a model gets that one. Files are streamed: a conversion is written to a
//! temporary file first, never held in memory. `--wait` follows the batch with a progress bar
//! (done, failed, rate, ETA), or plain lines when stdout is not a terminal, and downloads the
//! output with `-o`. This module only speaks HTTP; it does not touch the store.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::EXIT_CONFIG;

#[derive(Args, Debug)]
pub struct BatchArgs {
    /// The gateway's base URL.
    #[arg(
        long,
        env = "TOLLGATE_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// A Tollgate key of the team the batch belongs to.
    #[arg(long, env = "TOLLGATE_API_KEY", hide_env_values = true, global = true)]
    key: Option<String>,
    #[command(subcommand)]
    command: BatchCommand,
}

#[derive(Subcommand, Debug)]
pub enum BatchCommand {
    /// Upload a file and start a batch; prints the batch id (or follows it with --wait).
    Submit {
        /// JSONL in OpenAI's batch format, or plain text: one prompt per line.
        file: PathBuf,
        /// The model of plain-text prompts and of JSONL lines that name none.
        #[arg(long)]
        model: Option<String>,
        /// /v1/chat/completions, /v1/completions or /v1/embeddings.
        #[arg(long, default_value = "/v1/chat/completions")]
        endpoint: String,
        /// Follow the batch until it ends.
        #[arg(long)]
        wait: bool,
        /// With --wait: write the output file here when the batch ends.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Among the team's batches, higher runs first (-1000..=1000; sent as
        /// `metadata.priority`). Default 0.
        #[arg(long, allow_hyphen_values = true)]
        priority: Option<i64>,
    },
    /// Print a batch (OpenAI's batch object, JSON).
    Status {
        /// The batch id (`batch_…`).
        id: String,
    },
    /// Ask a batch to stop; lines already done stay in its output.
    Cancel {
        /// The batch id (`batch_…`).
        id: String,
    },
    /// Write a batch's output file (and with --errors its error file).
    Download {
        /// The batch id (`batch_…`).
        id: String,
        /// Where the output file (answers with status 200) goes.
        #[arg(long, short)]
        output: PathBuf,
        /// Where the error file (failed lines) goes, if the batch has one.
        #[arg(long)]
        errors: Option<PathBuf>,
    },
}

/// A failure to report: the message, and the exit code.
struct Failed(String, u8);

impl<E: std::fmt::Display> From<E> for Failed {
    fn from(e: E) -> Self {
        Failed(e.to_string(), 1)
    }
}

pub async fn run(args: BatchArgs) -> u8 {
    let Some(key) = args.key.clone().filter(|k| !k.is_empty()) else {
        eprintln!("tollgate batch: a key is needed: --key or TOLLGATE_API_KEY");
        return EXIT_CONFIG;
    };
    let api = Client {
        base: args.url.trim_end_matches('/').to_owned(),
        key,
        http: reqwest::Client::new(),
    };
    let r = match args.command {
        BatchCommand::Submit {
            file,
            model,
            endpoint,
            wait,
            output,
            priority,
        } => {
            submit(
                &api,
                &file,
                model.as_deref(),
                &endpoint,
                (wait, output.as_deref()),
                priority,
            )
            .await
        }
        BatchCommand::Status { id } => api.get(&format!("/v1/batches/{id}")).await.map(print_json),
        BatchCommand::Cancel { id } => api
            .post(&format!("/v1/batches/{id}/cancel"), json!({}))
            .await
            .map(print_json),
        BatchCommand::Download { id, output, errors } => {
            download(&api, &id, &output, errors.as_deref()).await
        }
    };
    match r {
        Ok(code) => code,
        Err(Failed(message, code)) => {
            eprintln!("tollgate batch: {message}");
            code
        }
    }
}

fn print_json(v: Value) -> u8 {
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    0
}

struct Client {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Client {
    async fn answer(resp: reqwest::Response) -> Result<Value, Failed> {
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        let msg = v["error"]["message"].as_str().unwrap_or("no message");
        Err(Failed(format!("the gateway answered {status}: {msg}"), 1))
    }
    async fn get(&self, path: &str) -> Result<Value, Failed> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        Self::answer(resp).await
    }
    async fn post(&self, path: &str, body: Value) -> Result<Value, Failed> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .timeout(Duration::from_secs(30))
            .json(&body)
            .send()
            .await?;
        Self::answer(resp).await
    }
    /// Upload `path` as a batch input file, streamed.
    async fn upload(&self, path: &Path, name: &str) -> Result<Value, Failed> {
        let file = tokio::fs::File::open(path).await?;
        let len = file.metadata().await?.len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let part = reqwest::multipart::Part::stream_with_length(body, len)
            .file_name(name.to_owned())
            .mime_str("application/jsonl")?;
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part("file", part);
        let resp = self
            .http
            .post(format!("{}/v1/files", self.base))
            .bearer_auth(&self.key)
            .multipart(form)
            .send()
            .await?;
        Self::answer(resp).await
    }
    /// Stream file `id`'s content into `to`.
    async fn save(&self, id: &str, to: &Path) -> Result<u64, Failed> {
        use futures_util::StreamExt;
        let resp = self
            .http
            .get(format!("{}/v1/files/{id}/content", self.base))
            .bearer_auth(&self.key)
            .send()
            .await?;
        if !resp.status().is_success() {
            return Self::answer(resp).await.map(|_| 0);
        }
        let mut out = tokio::io::BufWriter::new(tokio::fs::File::create(to).await?);
        let mut body = resp.bytes_stream();
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            n += chunk.len() as u64;
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        Ok(n)
    }
}

async fn submit(
    api: &Client,
    file: &Path,
    model: Option<&str>,
    endpoint: &str,
    (wait, output): (bool, Option<&Path>),
    priority: Option<i64>,
) -> Result<u8, Failed> {
    let name = file
        .file_name()
        .map_or("input.jsonl".into(), |n| n.to_string_lossy().into_owned());
    let converted = prepare(file, model, endpoint).await?;
    let up = api
        .upload(converted.as_deref().unwrap_or(file), &name)
        .await;
    if let Some(tmp) = &converted {
        let _ = tokio::fs::remove_file(tmp).await;
    }
    let up = up?;
    let mut new =
        json!({"input_file_id": up["id"], "endpoint": endpoint, "completion_window": "24h"});
    if let Some(p) = priority {
        new["metadata"] = json!({"priority": p.to_string()});
    }
    let b = api.post("/v1/batches", new).await?;
    let id = b["id"].as_str().unwrap_or_default().to_owned();
    println!("{id}");
    if !wait {
        return Ok(0);
    }
    let b = follow(api, &id).await?;
    let status = b["status"].as_str().unwrap_or("");
    if let (Some(out), Some(fid)) = (output, b["output_file_id"].as_str()) {
        let n = api.save(fid, out).await?;
        eprintln!("output: {} ({n} bytes)", out.display());
    }
    if let Some(errs) = b["errors"]["data"].as_array() {
        for e in errs {
            eprintln!("error: {}", e["message"].as_str().unwrap_or(""));
        }
    }
    Ok(if status == "completed" { 0 } else { 1 })
}

/// The file to upload: `None` to send `file` as it is; otherwise a converted temporary file
/// (plain-text prompts, or JSONL lines given `model`).
async fn prepare(
    file: &Path,
    model: Option<&str>,
    endpoint: &str,
) -> Result<Option<PathBuf>, Failed> {
    let mut lines = BufReader::new(tokio::fs::File::open(file).await?).lines();
    let mut first = None;
    while let Some(l) = lines.next_line().await? {
        if !l.trim().is_empty() {
            first = Some(l);
            break;
        }
    }
    let jsonl = first
        .as_deref()
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .is_some_and(|v| v.get("custom_id").is_some());
    if jsonl && model.is_none() {
        return Ok(None);
    }
    let Some(model) = model else {
        return Err(Failed(
            "a plain-text file (one prompt per line) needs --model".into(),
            EXIT_CONFIG,
        ));
    };
    let tmp = std::env::temp_dir().join(format!(
        "tollgate-batch-{}.jsonl",
        uuid::Uuid::new_v4().simple()
    ));
    let mut out = tokio::io::BufWriter::new(tokio::fs::File::create(&tmp).await?);
    let mut lines = BufReader::new(tokio::fs::File::open(file).await?).lines();
    let mut n = 0u64;
    while let Some(l) = lines.next_line().await? {
        n += 1;
        if l.trim().is_empty() {
            continue;
        }
        let line = if jsonl {
            let mut v: Value = serde_json::from_str(&l).map_err(|e| format!("line {n}: {e}"))?;
            if v["body"].get("model").is_none() && v["body"].is_object() {
                v["body"]["model"] = json!(model);
            }
            v
        } else {
            let body = match endpoint {
                "/v1/embeddings" => json!({"model": model, "input": l}),
                "/v1/completions" => json!({"model": model, "prompt": l}),
                _ => json!({"model": model, "messages": [{"role": "user", "content": l}]}),
            };
            json!({"custom_id": format!("line-{n}"), "method": "POST", "url": endpoint, "body": body})
        };
        out.write_all(line.to_string().as_bytes()).await?;
        out.write_all(b"\n").await?;
    }
    out.flush().await?;
    Ok(Some(tmp))
}

/// Poll the batch until it ends, showing progress; the ended batch.
async fn follow(api: &Client, id: &str) -> Result<Value, Failed> {
    let tty = std::io::stdout().is_terminal();
    let bar = tty.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} done, {per_sec}, ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    let started = Instant::now();
    let mut last_line = Instant::now() - Duration::from_secs(60);
    let mut last_done = -1i64;
    loop {
        let b = api.get(&format!("/v1/batches/{id}")).await?;
        let status = b["status"].as_str().unwrap_or("").to_owned();
        let c = &b["request_counts"];
        let (total, done, failed) = (
            c["total"].as_i64().unwrap_or(0),
            c["completed"].as_i64().unwrap_or(0),
            c["failed"].as_i64().unwrap_or(0),
        );
        let finished = done + failed;
        let ended = matches!(
            status.as_str(),
            "completed" | "failed" | "cancelled" | "expired"
        );
        if let Some(bar) = &bar {
            bar.set_length(total.max(0) as u64);
            bar.set_position(finished.max(0) as u64);
            bar.set_message(format!("{status}, {failed} failed"));
        } else if ended || (finished != last_done && last_line.elapsed() >= Duration::from_secs(5))
        {
            let secs = started.elapsed().as_secs_f64().max(0.001);
            let rate = finished as f64 / secs;
            let eta = if rate > 0.0 && total > finished {
                format!("{:.0}s", (total - finished) as f64 / rate)
            } else {
                "-".into()
            };
            println!(
                "{id} {status}: {finished}/{total} done, {failed} failed, {rate:.1} lines/s, ETA {eta}"
            );
            let _ = std::io::stdout().flush();
            last_line = Instant::now();
            last_done = finished;
        }
        if ended {
            if let Some(bar) = &bar {
                bar.finish_with_message(format!("{status}, {failed} failed"));
            }
            return Ok(b);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn download(
    api: &Client,
    id: &str,
    output: &Path,
    errors: Option<&Path>,
) -> Result<u8, Failed> {
    let b = api.get(&format!("/v1/batches/{id}")).await?;
    let Some(out_id) = b["output_file_id"].as_str() else {
        return Err(Failed(
            format!(
                "batch {id} has no output file (status {})",
                b["status"].as_str().unwrap_or("?")
            ),
            1,
        ));
    };
    let n = api.save(out_id, output).await?;
    eprintln!("output: {} ({n} bytes)", output.display());
    match (errors, b["error_file_id"].as_str()) {
        (Some(to), Some(eid)) => {
            let n = api.save(eid, to).await?;
            eprintln!("errors: {} ({n} bytes)", to.display());
        }
        (None, Some(_)) => eprintln!(
            "the batch has an error file too ({} failed lines); --errors FILE writes it",
            b["request_counts"]["failed"]
        ),
        _ => {}
    }
    Ok(0)
}
