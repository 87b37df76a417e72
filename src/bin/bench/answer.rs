//! What a client of the soak got back, judged: a terminal answer (a complete 2xx response, a
//! complete stream ending in `data: [DONE]`, or an OpenAI-shaped error, as JSON or as the
//! stream's last event) or not. Pure functions over the status and the bytes read, so the rules
//! are unit-tested apart from any socket.

use serde_json::Value;

/// The verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A complete completion, or a complete stream ending in `[DONE]`.
    Complete,
    /// An OpenAI-shaped error: the HTTP status and the error's `code` (`-` when null). A stream
    /// that ends with an error event has status 200.
    Error { status: u16, code: String },
    /// Anything else: no answer, a cut body, a stream without its end, a malformed error.
    Broken(String),
}

impl Answer {
    /// An error a client would read as an authentication failure: 401/403, or a code saying the
    /// gateway's key or the upstream credential was refused or unavailable.
    pub fn is_auth_failure(&self) -> bool {
        match self {
            Answer::Error { status, code } => {
                matches!(status, 401 | 403)
                    || matches!(
                        code.as_str(),
                        "invalid_api_key"
                            | "upstream_credential_rejected"
                            | "upstream_credential_unavailable"
                    )
            }
            _ => false,
        }
    }

    /// Refused before the gateway knew the caller (a wrong client key): no usage row is due.
    pub fn refused_before_auth(&self) -> bool {
        matches!(self, Answer::Error { status: 401, code } if code == "invalid_api_key")
    }
}

/// Judge a whole answer: `stream` is whether the request asked for a stream.
pub fn judge(status: u16, body: &[u8], stream: bool) -> Answer {
    if !(200..300).contains(&status) {
        return match openai_error_code(body) {
            Some(code) => Answer::Error { status, code },
            None => Answer::Broken(format!("status {status} without an OpenAI-shaped error")),
        };
    }
    if stream {
        return judge_stream(body);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.get("choices").is_some_and(Value::is_array) => Answer::Complete,
        _ => Answer::Broken("a 2xx body that is not a whole completion".into()),
    }
}

/// A stream is complete when every event is JSON and the last is `[DONE]`, or when the last
/// event is an OpenAI-shaped error.
fn judge_stream(body: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(body);
    let events: Vec<&str> = text
        .split("\n\n")
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let Some((last, before)) = events.split_last() else {
        return Answer::Broken("an empty stream".into());
    };
    let data = |e: &str| e.strip_prefix("data:").map(str::trim).map(str::to_owned);
    for e in before {
        match data(e) {
            Some(d) if serde_json::from_str::<Value>(&d).is_ok() => {}
            _ => return Answer::Broken(format!("a stream event that is not JSON: {e:.80}")),
        }
    }
    match data(last) {
        Some(d) if d == "[DONE]" => Answer::Complete,
        Some(d) => match openai_error_code(d.as_bytes()) {
            Some(code) => Answer::Error { status: 200, code },
            None => Answer::Broken(format!("a stream that ends without [DONE]: {d:.80}")),
        },
        None => Answer::Broken(format!("a stream that ends in a non-data line: {last:.80}")),
    }
}

/// The `code` of `{"error":{"message": string, "type": string, "param", "code"}}` (all four
/// fields present), `-` when it is null; `None` for anything else.
pub fn openai_error_code(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?.as_object()?;
    e.get("message")?.as_str()?;
    e.get("type")?.as_str()?;
    e.get("param")?;
    match e.get("code")? {
        Value::Null => Some("-".into()),
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ERR: &str =
        r#"{"error":{"message":"m","type":"t","param":null,"code":"upstream_timeout"}}"#;

    #[test]
    fn whole_answers_and_openai_errors_are_terminal() {
        let done = b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n";
        assert_eq!(judge(200, done, true), Answer::Complete);
        assert_eq!(judge(200, br#"{"choices":[]}"#, false), Answer::Complete);
        let timeout = Answer::Error {
            status: 504,
            code: "upstream_timeout".into(),
        };
        assert_eq!(judge(504, ERR.as_bytes(), false), timeout);
        let event = format!("data: {{\"choices\":[]}}\n\ndata: {ERR}\n\n");
        let broken = Answer::Error {
            status: 200,
            code: "upstream_timeout".into(),
        };
        assert_eq!(judge(200, event.as_bytes(), true), broken);
    }

    #[test]
    fn cut_bodies_and_bare_errors_are_not() {
        let cut = b"data: {\"choices\":[]}\n\ndata: {\"choi";
        assert!(matches!(judge(200, cut, true), Answer::Broken(_)));
        let no_done = b"data: {\"choices\":[]}\n\n";
        assert!(matches!(judge(200, no_done, true), Answer::Broken(_)));
        assert!(matches!(judge(200, b"", true), Answer::Broken(_)));
        assert!(matches!(judge(200, b"{\"choi", false), Answer::Broken(_)));
        assert!(matches!(
            judge(502, b"Bad Gateway", false),
            Answer::Broken(_)
        ));
        let no_type = br#"{"error":{"message":"m","param":null,"code":null}}"#;
        assert!(matches!(judge(500, no_type, false), Answer::Broken(_)));
    }

    #[test]
    fn auth_failures_are_named_by_status_or_code() {
        let e = |status: u16, code: &str| Answer::Error {
            status,
            code: code.into(),
        };
        assert!(e(401, "invalid_api_key").is_auth_failure());
        assert!(e(401, "invalid_api_key").refused_before_auth());
        assert!(e(403, "-").is_auth_failure());
        assert!(e(502, "upstream_credential_rejected").is_auth_failure());
        assert!(e(503, "upstream_credential_unavailable").is_auth_failure());
        assert!(!e(503, "upstream_unavailable").is_auth_failure());
        assert!(!e(502, "upstream_credential_rejected").refused_before_auth());
        assert!(!Answer::Complete.is_auth_failure());
    }
}
