//! The cache key: SHA-256 over everything that changes an answer, written canonically so that
//! two requests that mean the same get the same key however their JSON is spelled.
//!
//! Covered: the endpoint, the client-facing model, the upstream models the model may be served
//! by, the team (unless the model's cache is shared), the answer's form (JSON or SSE), and every
//! request field except `user`, `stream` and `stream_options` (they do not change the answer),
//! after the team's defaults were applied. Fields are written with object keys sorted at every
//! depth and numbers in one spelling (`1`, `1.0` and `1e0` are the same number), strings as
//! serde_json escapes them.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::openai::{Body, Endpoint};

/// Request fields that do not change the answer.
const IGNORED: [&[u8]; 3] = [b"user", b"stream", b"stream_options"];

/// A cache key: 32 bytes of SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 32]);

impl Key {
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// What the key covers besides the body.
pub struct Scope<'a> {
    pub endpoint: Endpoint,
    pub model: &'a str,
    /// The upstream models the client-facing model may be served by, in any order.
    pub upstream_models: &'a [String],
    /// `None` when the model's cache is shared by every team.
    pub team: Option<&'a str>,
    pub stream: bool,
}

/// The key of a shaped request; `None` when a field is not valid JSON (it always is, once
/// parsed: [`Body`] validated it).
pub fn key(scope: &Scope<'_>, body: &Body) -> Option<Key> {
    let mut h = Sha256::new();
    let mut part = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    part(b"tollgate-cache-v1");
    part(scope.endpoint.label().as_bytes());
    part(scope.model.as_bytes());
    let mut ups: Vec<&str> = scope.upstream_models.iter().map(String::as_str).collect();
    ups.sort_unstable();
    ups.dedup();
    part(ups.join("\n").as_bytes());
    match scope.team {
        Some(t) => part(format!("team:{t}").as_bytes()),
        None => part(b"shared"),
    }
    part(if scope.stream { b"sse" } else { b"json" });
    let mut fields: Vec<(&[u8], &[u8])> = body
        .fields()
        .filter(|(k, _)| !IGNORED.contains(k))
        .collect();
    fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(256);
    for (k, raw) in fields {
        let v: Value = serde_json::from_slice(raw).ok()?;
        out.clear();
        canonical(&v, &mut out);
        part(k);
        part(&out);
    }
    Some(Key(h.finalize().into()))
}

/// Whether a request is deterministic: `temperature` 0 or a `seed`, and at most one completion.
pub fn deterministic(endpoint: Endpoint, body: &Body) -> bool {
    if endpoint == Endpoint::Embeddings {
        return true;
    }
    let num = |k: &str| body.get::<Value>(k).and_then(Result::ok);
    let one = |k: &str| match num(k) {
        None | Some(Value::Null) => true,
        Some(v) => v.as_f64().is_some_and(|n| n <= 1.0),
    };
    let zero_temp = num("temperature")
        .and_then(|v| v.as_f64())
        .is_some_and(|t| t == 0.0);
    let seeded = !matches!(num("seed"), None | Some(Value::Null));
    (zero_temp || seeded) && one("n") && one("best_of")
}

/// `v` written canonically: object keys sorted, numbers in one spelling.
fn canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => number(n, out),
        Value::String(s) => {
            // Writing a `str` into a `Vec` cannot fail.
            let _ = serde_json::to_writer(&mut *out, s);
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, e) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(e, out);
            }
            out.push(b']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_unstable();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let _ = serde_json::to_writer(&mut *out, k);
                out.push(b':');
                if let Some(e) = m.get(k) {
                    canonical(e, out);
                }
            }
            out.push(b'}');
        }
    }
}

/// A number as an integer when it is one (exactly, within ±2^53), else its shortest float.
fn number(n: &serde_json::Number, out: &mut Vec<u8>) {
    if let Some(i) = n.as_i64() {
        out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
        return;
    }
    if let Some(u) = n.as_u64() {
        out.extend_from_slice(itoa::Buffer::new().format(u).as_bytes());
        return;
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if f.fract() == 0.0 && f.abs() <= EXACT {
        out.extend_from_slice(itoa::Buffer::new().format(f as i64).as_bytes());
    } else {
        out.extend_from_slice(ryu::Buffer::new().format(f).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn k(body: &str, team: Option<&str>) -> Key {
        let b = Body::parse(Bytes::from(body.to_owned())).unwrap();
        let ups = vec!["up-model".to_owned()];
        let scope = Scope {
            endpoint: Endpoint::Chat,
            model: "m",
            upstream_models: &ups,
            team,
            stream: false,
        };
        key(&scope, &b).unwrap()
    }

    #[test]
    fn key_order_and_number_spelling_do_not_matter() {
        let a = k(
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#,
            None,
        );
        let b = k(
            r#"{"messages":[{"content":"hi","role":"user"}],"temperature":0.0,"model":"m"}"#,
            None,
        );
        let c = k(
            r#"{"messages":[{"content":"hi","role":"user"}],"temperature":0e3,"model":"m"}"#,
            None,
        );
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn user_stream_and_stream_options_do_not_matter_but_other_fields_do() {
        let a = k(r#"{"model":"m","messages":[]}"#, None);
        let b = k(
            r#"{"model":"m","messages":[],"user":"u1","stream":false,"stream_options":{"include_usage":true}}"#,
            None,
        );
        assert_eq!(a, b);
        assert_ne!(a, k(r#"{"model":"m","messages":[],"max_tokens":5}"#, None));
        assert_ne!(a, k(r#"{"model":"m","messages":[" "]}"#, None));
    }

    #[test]
    fn teams_get_their_own_keys_unless_shared() {
        let body = r#"{"model":"m","messages":[]}"#;
        assert_ne!(k(body, Some("a")), k(body, Some("b")));
        assert_ne!(k(body, Some("a")), k(body, None));
    }

    #[test]
    fn deterministic_needs_zero_temperature_or_a_seed_and_one_completion() {
        let d = |s: &str| {
            deterministic(
                Endpoint::Chat,
                &Body::parse(Bytes::from(s.to_owned())).unwrap(),
            )
        };
        assert!(d(r#"{"temperature":0}"#));
        assert!(d(r#"{"seed":7,"temperature":0.9}"#));
        assert!(!d(r#"{"temperature":0.2}"#));
        assert!(!d(r#"{}"#));
        assert!(!d(r#"{"temperature":0,"n":2}"#));
        assert!(d(r#"{"temperature":0,"n":1}"#));
    }

    mod respelled {
        use super::*;
        use proptest::prelude::*;

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i32>().prop_map(Value::from),
                (-1e6f64..1e6).prop_map(Value::from),
                "[a-z \"\\\\\u{7f}-\u{3000}\u{1F600}]{0,12}".prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                    proptest::collection::btree_map("[a-z\u{e9}\"]{0,6}", inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// `v` as JSON text spelled another way: object keys in reverse order, whole numbers
        /// as `N.0`, spaces after separators.
        fn respell(v: &Value, out: &mut String) {
            match v {
                Value::Number(n) if n.as_i64().is_some() => {
                    out.push_str(&format!("{}.0", n.as_i64().unwrap_or(0)));
                }
                Value::Array(a) => {
                    out.push_str("[ ");
                    for (i, e) in a.iter().enumerate() {
                        if i > 0 {
                            out.push_str(" , ");
                        }
                        respell(e, out);
                    }
                    out.push_str(" ]");
                }
                Value::Object(m) => {
                    out.push('{');
                    let mut entries: Vec<_> = m.iter().collect();
                    entries.sort_by(|a, b| b.0.cmp(a.0));
                    for (i, (k, e)) in entries.into_iter().enumerate() {
                        if i > 0 {
                            out.push_str(", ");
                        }
                        out.push_str(&Value::from(k.as_str()).to_string());
                        out.push_str(" : ");
                        respell(e, out);
                    }
                    out.push('}');
                }
                other => out.push_str(&other.to_string()),
            }
        }

        proptest! {
            /// However a body is spelled (key order at every depth, number spelling,
            /// whitespace), its key is the same; a changed value changes it.
            #[test]
            fn the_key_ignores_spelling_only(
                fields in proptest::collection::btree_map("[a-z_]{1,8}", json(), 0..6),
            ) {
                let plain = Value::Object(fields.clone().into_iter().collect()).to_string();
                let mut other = String::new();
                respell(&Value::Object(fields.into_iter().collect()), &mut other);
                let a = Body::parse(Bytes::from(plain.clone()));
                let b = Body::parse(Bytes::from(other.clone()));
                prop_assert!(a.is_ok() && b.is_ok(), "{} / {}", plain, other);
                let ups = vec!["u".to_owned()];
                let scope = Scope {
                    endpoint: Endpoint::Chat,
                    model: "m",
                    upstream_models: &ups,
                    team: Some("t"),
                    stream: true,
                };
                if let (Ok(a), Ok(b)) = (a, b) {
                    prop_assert_eq!(key(&scope, &a), key(&scope, &b), "{} / {}", plain, other);
                    let mut changed = a.clone();
                    changed.insert("extra_field_never_generated", Value::from(1));
                    prop_assert_ne!(key(&scope, &a), key(&scope, &changed));
                }
            }
        }
    }
}
