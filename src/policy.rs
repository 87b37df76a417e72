//! Request shaping: what a team may ask for, checked and adjusted on the parsed body.
//!
//! Owns validation of the fields Tollgate reads (`model`, `stream`, `max_tokens`, `temperature`,
//! `n`, `messages`, …) and the team's defaults and caps. Fields it does not know are left
//! untouched in the JSON value and reach the upstream as the client sent them. Odd values get a
//! 400 naming the parameter, never a 5xx.

use serde_json::{Map, Value};

use crate::config::TeamConfig;
use crate::error::ApiError;

/// The OpenAI endpoints Tollgate relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

impl Endpoint {
    /// Path appended to an upstream's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

/// What shaping learned about the request.
#[derive(Debug, Clone)]
pub struct Shaped {
    pub model: String,
    pub stream: bool,
    /// The client asked for the final usage chunk (`stream_options.include_usage`).
    pub client_wants_usage: bool,
    /// `max_tokens` after defaults and caps, if any.
    pub max_tokens: Option<u64>,
}

/// Whether the team may use `model` (`*` allows all).
pub fn model_allowed(team: &TeamConfig, model: &str) -> bool {
    team.models.iter().any(|m| m == "*" || m == model)
}

/// Validate and adjust `body` in place for `team`.
pub fn shape(
    endpoint: Endpoint,
    team: &TeamConfig,
    body: &mut Map<String, Value>,
) -> Result<Shaped, ApiError> {
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() && m.len() <= 256 => m.clone(),
        Some(_) => {
            return Err(ApiError::invalid(
                "'model' must be a non-empty string",
                Some("model"),
            ))
        }
        None => return Err(ApiError::invalid("'model' is required", Some("model"))),
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
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
    let client_wants_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::invalid(
                    "'stream_options.include_usage' must be a boolean",
                    Some("stream_options.include_usage"),
                ))
            }
        },
        Some(_) => {
            return Err(ApiError::invalid(
                "'stream_options' must be an object",
                Some("stream_options"),
            ))
        }
    };

    match endpoint {
        Endpoint::Chat => {
            let messages = match body.get("messages") {
                Some(Value::Array(a)) if !a.is_empty() => a,
                Some(Value::Array(_)) => {
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
            if messages.iter().any(|m| !m.is_object()) {
                return Err(ApiError::invalid(
                    "each message must be an object",
                    Some("messages"),
                ));
            }
            if let Some(max) = team.max_messages {
                if messages.len() > max {
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

    let n = uint_field(body, "n", 1, 128)?;
    let _ = n;
    let mut max_tokens = None;
    if endpoint != Endpoint::Embeddings {
        // `max_completion_tokens` is the newer spelling; both are checked and capped.
        for field in ["max_tokens", "max_completion_tokens"] {
            if let Some(v) = uint_field(body, field, 1, u32::MAX as u64)? {
                max_tokens = Some(max_tokens.map_or(v, |m: u64| m.min(v)));
            }
        }
        if let Some(p) = &team.max_tokens {
            match max_tokens {
                None => {
                    if let Some(d) = p.default {
                        body.insert("max_tokens".into(), Value::from(d));
                        max_tokens = Some(d);
                    }
                }
                Some(v) => {
                    if let Some(cap) = p.max.filter(|cap| v > *cap) {
                        for field in ["max_tokens", "max_completion_tokens"] {
                            if body.contains_key(field) {
                                body.insert(field.into(), Value::from(cap));
                            }
                        }
                        max_tokens = Some(cap);
                    }
                }
            }
        }
        let temperature = float_field(body, "temperature", 0.0, 2.0)?;
        float_field(body, "top_p", 0.0, 1.0)?;
        if let Some(tp) = &team.temperature {
            match temperature {
                None => {
                    if let Some(d) = tp.default {
                        body.insert("temperature".into(), Value::from(d));
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
        }
    }
    Ok(Shaped {
        model,
        stream,
        client_wants_usage,
        max_tokens,
    })
}

fn uint_field(
    body: &Map<String, Value>,
    field: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
            _ => Err(ApiError::invalid(
                format!("'{field}' must be an integer between {min} and {max}"),
                Some(field),
            )),
        },
        Some(_) => Err(ApiError::invalid(
            format!("'{field}' must be an integer"),
            Some(field),
        )),
    }
}

fn float_field(
    body: &Map<String, Value>,
    field: &str,
    min: f64,
    max: f64,
) -> Result<Option<f64>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
            _ => Err(ApiError::invalid(
                format!("'{field}' must be a number between {min} and {max}"),
                Some(field),
            )),
        },
        Some(_) => Err(ApiError::invalid(
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

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
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
            let e = shape(Endpoint::Chat, &team, &mut body(bad.clone()));
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
        let s = shape(Endpoint::Chat, &team, &mut b)
            .map(|s| s.max_tokens)
            .ok()
            .flatten();
        assert_eq!((s, b.get("max_tokens")), (Some(100), Some(&json!(100))));
        let mut b = body(json!({"model":"m","messages":[{}],"max_tokens":9000,"tools":[1]}));
        let s = shape(Endpoint::Chat, &team, &mut b)
            .map(|s| s.max_tokens)
            .ok()
            .flatten();
        assert_eq!((s, b.get("max_tokens")), (Some(500), Some(&json!(500))));
        assert_eq!(b.get("tools"), Some(&json!([1])));
    }
}
