//! Request shaping: what a team may ask for, checked and adjusted on the parsed body.
//!
//! Owns validation of the fields Tollgate reads (`model`, `stream`, `max_tokens`, `temperature`,
//! `n`, `messages`, …), the team's defaults and caps, the model check, the usage chunk asked of
//! streams, and the client's hint headers (`x-tollgate-priority`, `x-tollgate-max-attempts`). Fields it does not know are left
//! untouched in the parsed [`Body`] and reach the upstream as the bytes the client sent. Odd
//! values get a 400 naming the parameter, never a 5xx.
//!
//! It reads a field's kind (noted when the body was parsed) before its value, and parses only the
//! small fields it needs as values (`model`, numbers, flags, `stream_options`): `messages` and
//! `prompt` are checked from their element counts, never walked again.

use http::HeaderMap;
use serde_json::{Map, Number, Value};

use crate::config::{Priority, TeamConfig};
use crate::error::ApiError;
pub use crate::openai::Endpoint;
use crate::openai::{Body, Kind};

/// What shaping learned about the request.
#[derive(Debug, Clone)]
pub struct Shaped {
    pub model: String,
    pub stream: bool,
    /// The client asked for the final usage chunk (`stream_options.include_usage`).
    pub client_wants_usage: bool,
    /// The output cap the upstream receives after defaults and caps, if any: the same number in
    /// every capping field the request carries (see [`OUTPUT_CAP_FIELDS`]).
    pub max_tokens: Option<u64>,
    /// Completions generated per request: `n`, or `best_of` on completions when larger (the
    /// upstream generates, and bills, `best_of` completions), for each prompt of a batched
    /// completions request (`prompt: ["a", "b"]` is two prompts).
    pub completions: u64,
    /// Queue priority: `x-tollgate-priority`, capped by the team's `max_priority`.
    pub priority: Priority,
    /// `x-tollgate-max-attempts`: lowers (never raises) the model's attempt count.
    pub max_attempts: Option<u32>,
}

impl Shaped {
    /// What the limiter estimates from.
    pub fn ask(&self) -> crate::limits::Ask<'_> {
        crate::limits::Ask {
            model: &self.model,
            output_cap: self.max_tokens,
            completions: self.completions,
        }
    }
}

/// The model may be used: it exists (`found`: its route, returned), the team allows it and the
/// key does (`key_allows`). 404 `model_not_found` before 403 `model_not_allowed`.
pub fn check_model<R>(
    model: &str,
    team: &TeamConfig,
    found: Option<R>,
    key_allows: impl Fn(&str) -> bool,
) -> Result<R, ApiError> {
    let Some(route) = found else {
        return Err(ApiError::ModelNotFound {
            model: model.to_owned(),
        });
    };
    if !model_allowed(team, model) || !key_allows(model) {
        return Err(ApiError::ModelNotAllowed {
            model: model.to_owned(),
        });
    }
    Ok(route)
}

/// The fields an upstream may read as the output cap. vLLM and OpenAI read
/// `max_completion_tokens` before `max_tokens`; others read only one of them. Whatever the client
/// sends, all of them that reach the upstream carry the same number, never above the team's cap.
pub const OUTPUT_CAP_FIELDS: [&str; 2] = ["max_tokens", "max_completion_tokens"];

/// Whether the team may use `model` (`*` allows all).
pub fn model_allowed(team: &TeamConfig, model: &str) -> bool {
    team.models.iter().any(|m| m == "*" || m == model)
}

/// Validate and adjust `body` in place for `team`, and read the client's hint headers.
pub fn shape(
    endpoint: Endpoint,
    team: &TeamConfig,
    headers: &HeaderMap,
    body: &mut Body,
) -> Result<Shaped, ApiError> {
    let model = model(body)?;
    let stream = match body.kind("stream") {
        None | Some(Kind::Null) => false,
        Some(Kind::Bool) => body.get::<bool>("stream").and_then(Result::ok) == Some(true),
        Some(_) => {
            return Err(ApiError::invalid(
                "'stream' must be a boolean",
                Some("stream"),
            ))
        }
    };
    if stream && endpoint == Endpoint::Embeddings {
        return Err(ApiError::invalid(
            "embeddings cannot be streamed",
            Some("stream"),
        ));
    }
    let stream_options = stream_options(body)?;
    let client_wants_usage = match stream_options.as_ref().and_then(|o| o.get("include_usage")) {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid(
                "'stream_options.include_usage' must be a boolean",
                Some("stream_options.include_usage"),
            ))
        }
    };
    required_input(endpoint, team, body)?;

    let n = uint_field(body, "n", 1, 128)?.unwrap_or(1);
    let (best_of, prompts) = match endpoint {
        Endpoint::Completions => (
            uint_field(body, "best_of", 1, 128)?.unwrap_or(1),
            prompt_count(body.kind("prompt")),
        ),
        _ => (1, 1),
    };
    let mut max_tokens = None;
    if endpoint != Endpoint::Embeddings {
        max_tokens = cap_output(team, body)?;
        temperature(team, body)?;
    }
    if stream && !client_wants_usage {
        ask_for_usage(body, stream_options);
    }
    Ok(Shaped {
        model,
        stream,
        client_wants_usage,
        max_tokens,
        completions: n.max(best_of).saturating_mul(prompts),
        priority: priority(headers, team)?,
        max_attempts: max_attempts(headers)?,
    })
}

/// `model`: a non-empty string of at most 256 bytes.
fn model(body: &Body) -> Result<String, ApiError> {
    let invalid = || ApiError::invalid("'model' must be a non-empty string", Some("model"));
    match body.kind("model") {
        Some(Kind::String) => match body.get::<String>("model") {
            Some(Ok(m)) if !m.is_empty() && m.len() <= 256 => Ok(m),
            _ => Err(invalid()),
        },
        Some(_) => Err(invalid()),
        None => Err(ApiError::invalid("'model' is required", Some("model"))),
    }
}

/// `stream_options`: absent, null or an object (returned, for [`ask_for_usage`]).
fn stream_options(body: &Body) -> Result<Option<Map<String, Value>>, ApiError> {
    let invalid =
        || ApiError::invalid("'stream_options' must be an object", Some("stream_options"));
    match body.kind("stream_options") {
        None | Some(Kind::Null) => Ok(None),
        Some(Kind::Object) => match body.get::<Map<String, Value>>("stream_options") {
            Some(Ok(o)) => Ok(Some(o)),
            _ => Err(invalid()),
        },
        Some(_) => Err(invalid()),
    }
}

/// What each endpoint must carry: `messages` (a non-empty list of objects, within the team's
/// `max_messages`), `prompt`, `input`.
fn required_input(endpoint: Endpoint, team: &TeamConfig, body: &Body) -> Result<(), ApiError> {
    match endpoint {
        Endpoint::Chat => {
            let messages = match body.kind("messages") {
                Some(Kind::Array(a)) if a.len > 0 => a,
                Some(Kind::Array(_)) => {
                    return Err(ApiError::invalid(
                        "'messages' must not be empty",
                        Some("messages"),
                    ))
                }
                Some(_) => {
                    return Err(ApiError::invalid(
                        "'messages' must be an array",
                        Some("messages"),
                    ))
                }
                None => {
                    return Err(ApiError::invalid(
                        "'messages' is required",
                        Some("messages"),
                    ))
                }
            };
            if messages.objects < messages.len {
                return Err(ApiError::invalid(
                    "each message must be an object",
                    Some("messages"),
                ));
            }
            if let Some(max) = team.max_messages {
                if messages.len > max {
                    return Err(ApiError::invalid(
                        format!("at most {max} messages are allowed"),
                        Some("messages"),
                    ));
                }
            }
        }
        Endpoint::Completions if !body.contains_key("prompt") => {
            return Err(ApiError::invalid("'prompt' is required", Some("prompt")));
        }
        Endpoint::Embeddings if !body.contains_key("input") => {
            return Err(ApiError::invalid("'input' is required", Some("input")));
        }
        _ => {}
    }
    Ok(())
}

/// `temperature` and `top_p` within range; the team's temperature default added, its range
/// enforced.
fn temperature(team: &TeamConfig, body: &mut Body) -> Result<(), ApiError> {
    let temperature = float_field(body, "temperature", 0.0, 2.0)?;
    float_field(body, "top_p", 0.0, 1.0)?;
    let Some(tp) = &team.temperature else {
        return Ok(());
    };
    match temperature {
        None => {
            if let Some(d) = tp.default {
                body.insert("temperature", Value::from(d));
            }
        }
        Some(t) => {
            let lo = tp.min.unwrap_or(0.0);
            let hi = tp.max.unwrap_or(2.0);
            if t < lo || t > hi {
                return Err(ApiError::invalid(
                    format!("'temperature' must be between {lo} and {hi} for this team"),
                    Some("temperature"),
                ));
            }
        }
    }
    Ok(())
}

/// Prompts in a completions request: a list of strings or of token-id lists is a batch, one
/// completion set each; a string or one token-id list is one prompt.
fn prompt_count(prompt: Option<Kind>) -> u64 {
    match prompt {
        Some(Kind::Array(items)) if items.texts_or_lists > 0 => items.len.max(1) as u64,
        _ => 1,
    }
}

/// Ask a stream for its usage chunk, so usage is always recorded (the relay strips it again for
/// a client that did not ask). Other stream options the client sent are kept.
fn ask_for_usage(body: &mut Body, stream_options: Option<Map<String, Value>>) {
    let mut options = stream_options.unwrap_or_default();
    options.insert("include_usage".into(), Value::Bool(true));
    body.insert("stream_options", Value::Object(options));
}

/// `x-tollgate-priority: high|normal|low`, capped by the team's `max_priority`.
fn priority(headers: &HeaderMap, team: &TeamConfig) -> Result<Priority, ApiError> {
    let asked = match headers.get("x-tollgate-priority") {
        None => Priority::Normal,
        Some(v) => v.to_str().ok().and_then(Priority::parse).ok_or_else(|| {
            ApiError::invalid(
                "x-tollgate-priority must be high, normal or low",
                Some("x-tollgate-priority"),
            )
        })?,
    };
    Ok(match team.max_priority {
        Some(cap) if asked < cap => cap,
        _ => asked,
    })
}

/// `x-tollgate-max-attempts: N` lowers (never raises) the model's attempt count.
fn max_attempts(headers: &HeaderMap) -> Result<Option<u32>, ApiError> {
    let Some(v) = headers.get("x-tollgate-max-attempts") else {
        return Ok(None);
    };
    match v.to_str().ok().and_then(|s| s.trim().parse::<u32>().ok()) {
        Some(n) if n >= 1 => Ok(Some(n)),
        _ => Err(ApiError::invalid(
            "x-tollgate-max-attempts must be a whole number of at least 1",
            Some("x-tollgate-max-attempts"),
        )),
    }
}

/// The one output cap of a request: the smallest the client asked for in any capping field, or
/// the team's default, never above the team's `max_tokens.max`. Every capping field present is
/// rewritten to it (so an upstream reading either field sees the same number), and when the
/// client sent none but the team has a default or a cap, `max_tokens` is added. `None`: no cap
/// from anyone (the limiter estimates with `limits.default_max_tokens`).
fn cap_output(team: &TeamConfig, body: &mut Body) -> Result<Option<u64>, ApiError> {
    let mut asked: Option<u64> = None;
    let mut present = 0;
    for field in OUTPUT_CAP_FIELDS {
        if let Some(v) = uint_field(body, field, 1, u32::MAX as u64)? {
            asked = Some(asked.map_or(v, |m| m.min(v)));
            present += 1;
        }
    }
    let policy = team.max_tokens.as_ref();
    let cap = policy.and_then(|p| p.max);
    let wanted = asked.or_else(|| policy.and_then(|p| p.default));
    let effective = match (wanted, cap) {
        (Some(w), Some(c)) => Some(w.min(c)),
        (w, c) => w.or(c),
    };
    let Some(effective) = effective else {
        return Ok(None);
    };
    for field in OUTPUT_CAP_FIELDS {
        if body.kind(field).is_some_and(|k| k != Kind::Null) {
            body.insert(field, Value::from(effective));
        }
    }
    if present == 0 {
        body.insert("max_tokens", Value::from(effective));
    }
    Ok(Some(effective))
}

/// A numeric field: `Ok(None)` when absent or null, `Err(())` when it is not a number.
fn number(body: &Body, field: &str) -> Result<Option<Number>, ()> {
    match body.kind(field) {
        None | Some(Kind::Null) => Ok(None),
        Some(Kind::Number) => body.get::<Number>(field).transpose().map_err(|_| ()),
        Some(_) => Err(()),
    }
}

fn uint_field(body: &Body, field: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
    match number(body, field) {
        Ok(None) => Ok(None),
        Ok(Some(n)) => match n.as_u64() {
            Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
            _ => Err(ApiError::invalid(
                format!("'{field}' must be an integer between {min} and {max}"),
                Some(field),
            )),
        },
        Err(()) => Err(ApiError::invalid(
            format!("'{field}' must be an integer"),
            Some(field),
        )),
    }
}

fn float_field(body: &Body, field: &str, min: f64, max: f64) -> Result<Option<f64>, ApiError> {
    match number(body, field) {
        Ok(None) => Ok(None),
        Ok(Some(n)) => match n.as_f64() {
            Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
            _ => Err(ApiError::invalid(
                format!("'{field}' must be a number between {min} and {max}"),
                Some(field),
            )),
        },
        Err(()) => Err(ApiError::invalid(
            format!("'{field}' must be a number"),
            Some(field),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RangeDefault;
    use serde_json::json;

    fn body(v: Value) -> Body {
        match Body::parse(bytes::Bytes::from(v.to_string())) {
            Ok(b) => b,
            Err(e) => panic!("{v}: {e:?}"),
        }
    }

    /// The body as the upstream receives it.
    fn sent(b: &Body) -> Value {
        serde_json::from_slice(&b.to_bytes()).unwrap_or(Value::Null)
    }

    #[test]
    fn odd_numbers_are_client_errors() {
        let team = TeamConfig::default();
        for bad in [
            json!({"model":"m","messages":[{}],"max_tokens":1e30}),
            json!({"model":"m","messages":[{}],"n":-1}),
            json!({"model":"m","messages":[{}],"max_tokens":"12"}),
            json!({"model":"m","messages":[{}],"temperature":"hot"}),
            json!({"model":"m","messages":"hi"}),
            json!({"model":5,"messages":[{}]}),
        ] {
            let e = shape(
                Endpoint::Chat,
                &team,
                &HeaderMap::new(),
                &mut body(bad.clone()),
            );
            assert_eq!(e.map_err(|e| e.status().as_u16()).err(), Some(400), "{bad}");
        }
    }

    #[test]
    fn team_default_and_cap_apply() {
        let team = TeamConfig {
            max_tokens: Some(RangeDefault {
                default: Some(100),
                max: Some(500),
            }),
            ..TeamConfig::default()
        };
        let mut b = body(json!({"model":"m","messages":[{}]}));
        let s = shape(Endpoint::Chat, &team, &HeaderMap::new(), &mut b)
            .map(|s| s.max_tokens)
            .ok()
            .flatten();
        assert_eq!(
            (s, sent(&b).get("max_tokens")),
            (Some(100), Some(&json!(100)))
        );
        let mut b = body(json!({"model":"m","messages":[{}],"max_tokens":9000,"tools":[1]}));
        let s = shape(Endpoint::Chat, &team, &HeaderMap::new(), &mut b)
            .map(|s| s.max_tokens)
            .ok()
            .flatten();
        assert_eq!(
            (s, sent(&b).get("max_tokens")),
            (Some(500), Some(&json!(500)))
        );
        assert_eq!(sent(&b).get("tools"), Some(&json!([1])));
    }

    #[test]
    fn the_larger_capping_field_is_capped_too() {
        let team = TeamConfig {
            max_tokens: Some(RangeDefault {
                default: None,
                max: Some(500),
            }),
            ..TeamConfig::default()
        };
        let mut b = body(json!({"model":"m","messages":[{}],"max_tokens":10,
            "max_completion_tokens":1000000}));
        let s = shape(Endpoint::Chat, &team, &HeaderMap::new(), &mut b).ok();
        assert_eq!(s.and_then(|s| s.max_tokens), Some(10));
        assert_eq!(sent(&b)["max_tokens"], json!(10));
        assert_eq!(sent(&b)["max_completion_tokens"], json!(10));
        // No field from the client: the cap itself goes upstream.
        let mut b = body(json!({"model":"m","messages":[{}]}));
        let s = shape(Endpoint::Chat, &team, &HeaderMap::new(), &mut b).ok();
        assert_eq!(s.and_then(|s| s.max_tokens), Some(500));
        assert_eq!(sent(&b)["max_tokens"], json!(500));
    }

    #[test]
    fn a_batched_prompt_multiplies_the_completions() {
        let team = TeamConfig::default();
        let mut b = body(json!({"model":"m","prompt":["a","b","c"],"n":2}));
        let s = shape(Endpoint::Completions, &team, &HeaderMap::new(), &mut b).ok();
        assert_eq!(s.map(|s| s.completions), Some(6));
        let mut b = body(json!({"model":"m","prompt":[1, 2, 3]}));
        let s = shape(Endpoint::Completions, &team, &HeaderMap::new(), &mut b).ok();
        assert_eq!(s.map(|s| s.completions), Some(1));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn cap_field() -> impl Strategy<Value = Option<Value>> {
            prop_oneof![
                Just(None),
                Just(Some(Value::Null)),
                (1u64..=u32::MAX as u64).prop_map(|v| Some(json!(v))),
                (1u64..5000).prop_map(|v| Some(json!(v))),
            ]
        }

        proptest! {
            /// Whatever the client sends, no capping field reaching the upstream is above the
            /// team's cap, every capping field carries the one number the estimate uses, and a
            /// team with a cap always sends one.
            #[test]
            fn what_reaches_the_upstream_never_exceeds_the_cap(
                mt in cap_field(),
                mct in cap_field(),
                n in proptest::option::of(1u64..=128),
                best_of in proptest::option::of(1u64..=128),
                default in proptest::option::of(1u64..4000),
                max in proptest::option::of(1u64..4000),
                completions in any::<bool>(),
            ) {
                let team = TeamConfig {
                    max_tokens: Some(RangeDefault { default, max }),
                    ..TeamConfig::default()
                };
                let endpoint = if completions { Endpoint::Completions } else { Endpoint::Chat };
                let mut b = body(json!({"model": "m", "messages": [{}], "prompt": [1, 2]}));
                for (f, v) in [("max_tokens", &mt), ("max_completion_tokens", &mct)] {
                    if let Some(v) = v {
                        b.insert(f, v.clone());
                    }
                }
                if let Some(n) = n { b.insert("n", json!(n)); }
                if let Some(k) = best_of { b.insert("best_of", json!(k)); }
                let shaped = match shape(endpoint, &team, &HeaderMap::new(), &mut b) {
                    Ok(s) => s,
                    Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
                };
                let b = sent(&b);
                let sent: Vec<u64> = OUTPUT_CAP_FIELDS
                    .iter()
                    .filter_map(|f| b.get(*f).and_then(Value::as_u64))
                    .collect();
                for v in &sent {
                    prop_assert_eq!(Some(*v), shaped.max_tokens);
                    if let Some(cap) = max {
                        prop_assert!(*v <= cap);
                    }
                }
                if max.is_some() {
                    prop_assert!(!sent.is_empty());
                }
                let want = n.unwrap_or(1).max(if completions { best_of.unwrap_or(1) } else { 1 });
                prop_assert_eq!(shaped.completions, want);
            }
        }
    }
}
