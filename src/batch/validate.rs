//! Validation of a batch's input file, read as a stream: every line must be a JSON object with
//! a unique `custom_id`, `method: POST`, the batch's `url` and a JSON object `body`; no line may
//! be longer than `batch.max_line_bytes`, and the file may hold at most `batch.max_lines` lines.
//! A bad file fails the batch with OpenAI-shaped errors naming the line (at most
//! [`MAX_ERRORS`] of them). Blank lines are skipped.
//!
//! Memory is bounded by the line limit (one offset and `custom_id` per line, a `custom_id` at
//! most [`MAX_CUSTOM_ID`] bytes) and one line's buffer; the file is never held whole.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use super::wire::input_error;
use crate::store::batches::NewLine;

/// Errors reported for one file; the rest are counted in the last message.
pub const MAX_ERRORS: usize = 100;
/// Longest `custom_id`, in bytes.
pub const MAX_CUSTOM_ID: usize = 512;

/// One input line as OpenAI defines it. `body` stays raw: it is forwarded as written.
#[derive(Deserialize)]
pub struct InputLine<'a> {
    pub custom_id: Option<Value>,
    pub method: Option<Value>,
    pub url: Option<Value>,
    #[serde(borrow)]
    pub body: Option<&'a RawValue>,
}

/// Limits of a validation.
pub struct Rules<'a> {
    pub endpoint: &'a str,
    pub max_lines: usize,
    pub max_line_bytes: usize,
}

/// The lines of a valid file, or the errors of a bad one.
pub enum Checked {
    Valid(Vec<NewLine>),
    Invalid(Vec<Value>),
}

/// Read and check the file at `p`.
pub async fn check(p: &Path, rules: &Rules<'_>) -> std::io::Result<Checked> {
    let file = tokio::fs::File::open(p).await?;
    check_reader(BufReader::with_capacity(64 * 1024, file), rules).await
}

async fn check_reader<R: AsyncBufRead + Unpin>(
    mut r: R,
    rules: &Rules<'_>,
) -> std::io::Result<Checked> {
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    let mut more_errors = 0usize;
    let mut seen: HashSet<String> = HashSet::new();
    let mut buf = Vec::new();
    let mut offset: u64 = 0;
    let mut number: i64 = 0;
    let mut count = 0usize;
    loop {
        let read = read_line_bounded(&mut r, &mut buf, rules.max_line_bytes).await?;
        let Some((consumed, too_long)) = read else {
            break;
        };
        number += 1;
        let start = offset;
        offset += consumed as u64;
        let mut push = |e: Value| {
            if errors.len() < MAX_ERRORS {
                errors.push(e);
            } else {
                more_errors += 1;
            }
        };
        if too_long {
            push(input_error(
                "line_too_large",
                format!(
                    "Line {number} is longer than the limit of {} bytes.",
                    rules.max_line_bytes
                ),
                Some(number),
                None,
            ));
            continue;
        }
        let text = trim_line(&buf);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        count += 1;
        if count > rules.max_lines {
            push(input_error(
                "too_many_requests",
                format!(
                    "The file has more than {} requests (line {number}).",
                    rules.max_lines
                ),
                Some(number),
                None,
            ));
            break;
        }
        match check_line(text, number, rules.endpoint, &mut seen) {
            Ok(custom_id) => lines.push(NewLine {
                line: number,
                custom_id,
                offset: start as i64,
                len: text.len() as i64,
            }),
            Err(e) => push(e),
        }
    }
    if more_errors > 0 {
        errors.push(input_error(
            "too_many_errors",
            format!("{more_errors} more lines have errors."),
            None,
            None,
        ));
    }
    if errors.is_empty() && lines.is_empty() {
        errors.push(input_error(
            "empty_file",
            "The input file has no requests.".into(),
            None,
            None,
        ));
    }
    Ok(if errors.is_empty() {
        Checked::Valid(lines)
    } else {
        Checked::Invalid(errors)
    })
}

/// The line without its line end (`\n` or `\r\n`).
fn trim_line(buf: &[u8]) -> &[u8] {
    let b = buf.strip_suffix(b"\n").unwrap_or(buf);
    b.strip_suffix(b"\r").unwrap_or(b)
}

/// One line into `buf` (at most `max` bytes kept, line end included), the bytes it took in the
/// file and whether it was longer than `max`; `None` at the end of the file.
async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<(usize, bool)>> {
    buf.clear();
    let mut consumed = 0usize;
    let mut too_long = false;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok((consumed > 0).then_some((consumed, too_long)));
        }
        let (take, end) = match memchr::memchr(b'\n', avail) {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        // The limit is on the line's content; its line end may come on top.
        if !too_long && buf.len() + take > max + 2 {
            too_long = true;
            buf.clear();
        }
        if !too_long {
            buf.extend_from_slice(&avail[..take]);
        }
        r.consume(take);
        consumed += take;
        if end {
            if !too_long && trim_line(buf).len() > max {
                too_long = true;
            }
            return Ok(Some((consumed, too_long)));
        }
    }
}

/// Check one line; its `custom_id` if it is good.
fn check_line(
    text: &[u8],
    number: i64,
    endpoint: &str,
    seen: &mut HashSet<String>,
) -> Result<String, Value> {
    let bad = |code: &str, message: String, param: Option<&str>| {
        input_error(code, message, Some(number), param)
    };
    let line: InputLine<'_> = serde_json::from_slice(text).map_err(|_| {
        bad(
            "invalid_json_line",
            format!("Line {number} is not a valid JSON object."),
            None,
        )
    })?;
    let custom_id = match &line.custom_id {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_CUSTOM_ID => s.clone(),
        _ => {
            return Err(bad(
                "missing_required_parameter",
                format!("Line {number}: custom_id must be a string of 1 to {MAX_CUSTOM_ID} bytes."),
                Some("custom_id"),
            ))
        }
    };
    if line.method.as_ref().and_then(Value::as_str) != Some("POST") {
        return Err(bad(
            "invalid_method",
            format!("Line {number}: method must be POST."),
            Some("method"),
        ));
    }
    match line.url.as_ref().and_then(Value::as_str) {
        Some(u) if u == endpoint => {}
        Some(u) if super::wire::ENDPOINTS.contains(&u) => {
            return Err(bad(
                "mismatched_url",
                format!("Line {number}: url {u} is not the batch's endpoint {endpoint}."),
                Some("url"),
            ))
        }
        _ => {
            return Err(bad(
                "invalid_url",
                format!(
                    "Line {number}: url must be one of {}.",
                    super::wire::ENDPOINTS.join(", ")
                ),
                Some("url"),
            ))
        }
    }
    match line.body {
        Some(b) if b.get().trim_start().starts_with('{') => {}
        _ => {
            return Err(bad(
                "invalid_body",
                format!("Line {number}: body must be a JSON object."),
                Some("body"),
            ))
        }
    }
    if !seen.insert(custom_id.clone()) {
        return Err(bad(
            "duplicate_custom_id",
            format!("Line {number}: custom_id '{custom_id}' is used by an earlier line."),
            Some("custom_id"),
        ));
    }
    Ok(custom_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(text: &str, max_lines: usize, max_line_bytes: usize) -> Checked {
        let rules = Rules {
            endpoint: "/v1/chat/completions",
            max_lines,
            max_line_bytes,
        };
        match check_reader(text.as_bytes(), &rules).await {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    fn line(id: &str) -> String {
        format!(
            r#"{{"custom_id":"{id}","method":"POST","url":"/v1/chat/completions","body":{{"model":"m"}}}}"#
        )
    }

    fn errors(c: Checked) -> Vec<(String, Option<i64>)> {
        match c {
            Checked::Valid(_) => panic!("expected errors"),
            Checked::Invalid(e) => e
                .iter()
                .map(|e| {
                    (
                        e["code"].as_str().unwrap_or("").to_owned(),
                        e["line"].as_i64(),
                    )
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn good_lines_keep_their_offsets_and_blank_lines_are_skipped() {
        let text = format!("{}\r\n\n{}\n", line("a"), line("b"));
        let Checked::Valid(lines) = run(&text, 10, 1000).await else {
            panic!("expected valid");
        };
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].offset, 0);
        assert_eq!(lines[0].len as usize, line("a").len());
        assert_eq!(lines[1].line, 3);
        assert_eq!(
            &text[lines[1].offset as usize..][..lines[1].len as usize],
            line("b")
        );
    }

    #[tokio::test]
    async fn every_kind_of_bad_line_is_named_with_its_number() {
        let text = [
            line("a"),
            "not json".into(),
            line("a"),
            line("b").replace("/v1/chat/completions", "/v1/embeddings"),
            line("c").replace("/v1/chat/completions", "/v1/images"),
            line("d").replace("POST", "GET"),
            format!("{}{}", line("e"), " ".repeat(200)),
        ]
        .join("\n");
        let got = errors(run(&text, 10, 150).await);
        let want: Vec<(String, Option<i64>)> = [
            ("invalid_json_line", 2),
            ("duplicate_custom_id", 3),
            ("mismatched_url", 4),
            ("invalid_url", 5),
            ("invalid_method", 6),
            ("line_too_large", 7),
        ]
        .iter()
        .map(|(c, l)| ((*c).to_owned(), Some(*l)))
        .collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn more_lines_than_the_limit_fail_at_the_first_extra_line() {
        let text = [line("a"), line("b"), line("c")].join("\n");
        assert_eq!(
            errors(run(&text, 2, 1000).await),
            vec![("too_many_requests".to_owned(), Some(3))]
        );
        assert_eq!(
            errors(run("\n\n", 2, 1000).await),
            vec![("empty_file".to_owned(), None)]
        );
    }
}
