//! The top-level `model` field of an OpenAI-shaped answer (a JSON body or one stream chunk's
//! data): where its string lies in the bytes, and the bytes with another name there.
//!
//! Answers are relayed as the upstream's bytes, never parsed into a tree and written again, so the
//! client-facing model name is spliced in place: [`span`] walks the object's top-level keys only
//! (skipping values without looking inside them) and stops at `"model"`, which OpenAI-shaped
//! chunks carry in their first hundred bytes. A whole JSON answer is already read once by serde
//! for its usage; [`ModelStr`] lets that same pass say where the model string is.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Where the contents (between the quotes) of the top-level `"model"` string of the JSON object
/// in `json` lie; `None` when the text is not an object, has no such key, or its value is not a
/// string.
pub fn span(json: &[u8]) -> Option<Range<usize>> {
    let mut i = ws(json, 0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = ws(json, i);
        if json.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(json, i)?;
        let key = json.get(i + 1..key_end)?;
        i = ws(json, key_end + 1);
        if json.get(i) != Some(&b':') {
            return None;
        }
        i = ws(json, i + 1);
        if key == b"model" {
            if json.get(i) != Some(&b'"') {
                return None;
            }
            return Some(i + 1..string_end(json, i)?);
        }
        i = ws(json, value_end(json, i)?);
        if json.get(i) != Some(&b',') {
            return None;
        }
        i += 1;
    }
}

/// `json` with `at` (a [`span`]) holding `name` instead: `name` is the contents of a JSON string,
/// already escaped ([`escape`]).
pub fn replace(json: &[u8], at: Range<usize>, name: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(json.len() + name.len());
    splice_into(&mut out, json, at, name);
    out.freeze()
}

/// Append `json` with `at` replaced by `name` to `out`.
pub fn splice_into(out: &mut BytesMut, json: &[u8], at: Range<usize>, name: &[u8]) {
    out.put_slice(&json[..at.start]);
    out.put_slice(name);
    out.put_slice(&json[at.end..]);
}

/// `name` as the contents of a JSON string (quotes, backslashes and control characters escaped).
pub fn escape(name: &str) -> Bytes {
    let quoted = serde_json::Value::from(name).to_string();
    let inner = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or_default();
    Bytes::copy_from_slice(inner.as_bytes())
}

/// Index of the first byte at or after `i` that is not JSON whitespace.
fn ws(json: &[u8], mut i: usize) -> usize {
    while matches!(json.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Index of the closing quote of the string opening at `open`.
fn string_end(json: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', json.get(i..)?)?;
        if json[i] == b'\\' {
            i += 2;
        } else {
            return Some(i);
        }
    }
}

/// Index just past the value starting at `i` (not checked beyond its extent).
fn value_end(json: &[u8], i: usize) -> Option<usize> {
    match json.get(i)? {
        b'"' => string_end(json, i).map(|e| e + 1),
        b'{' | b'[' => {
            // One pass, strings skipped whole: linear whatever the nesting.
            let mut depth = 0usize;
            let mut j = i;
            while let Some(b) = json.get(j) {
                match b {
                    b'"' => j = string_end(json, j)?,
                    b'[' | b'{' => depth += 1,
                    b']' | b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let rest = json.get(i..)?;
            let len = rest
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(rest.len());
            Some(i + len)
        }
    }
}

/// The `model` field as serde reads a whole answer for its usage: the string borrowed from the
/// answer's bytes (so its place is known, [`ModelStr::span_in`]), [`ModelStr::Escaped`] when it
/// holds escapes (then [`span`] finds it), [`ModelStr::Other`] for any other value, which is
/// accepted and ignored as it was before this field was read.
#[derive(Debug, Default)]
pub enum ModelStr<'a> {
    #[default]
    Absent,
    Borrowed(&'a str),
    Escaped,
    Other,
}

impl ModelStr<'_> {
    /// The place of the model string's contents in `json` (the bytes it was read from).
    pub fn span_in(&self, json: &[u8]) -> Option<Range<usize>> {
        match self {
            ModelStr::Borrowed(s) => {
                let start = (s.as_ptr() as usize).checked_sub(json.as_ptr() as usize)?;
                let at = start..start + s.len();
                (json.get(at.clone())? == s.as_bytes()).then_some(at)
            }
            ModelStr::Escaped => span(json),
            ModelStr::Absent | ModelStr::Other => None,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for ModelStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ModelVisitor)
    }
}

struct ModelVisitor;

impl<'de> Visitor<'de> for ModelVisitor {
    type Value = ModelStr<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(ModelStr::Borrowed(v))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(ModelStr::Escaped)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(ModelStr::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(ModelStr::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(ModelStr::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(ModelStr::Other)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(ModelStr::Other)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(ModelStr::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(ModelStr::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(ModelStr::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn model_of(json: &str) -> Option<&str> {
        span(json.as_bytes()).map(|r| &json[r])
    }

    #[test]
    fn finds_the_top_level_model_only() {
        assert_eq!(model_of(r#"{"id":"x","model":"up"}"#), Some("up"));
        assert_eq!(
            model_of(r#" { "choices" : [{"model":"no","x":"}\"]"}], "model" : "up" } "#),
            Some("up")
        );
        assert_eq!(
            model_of(r#"{"a":{"model":"no"},"b":1.5e3,"model":"up"}"#),
            Some("up")
        );
        assert_eq!(model_of(r#"{"model":"a\"b"}"#), Some(r#"a\"b"#));
        assert_eq!(model_of(r#"{"role":"model"}"#), None);
        assert_eq!(model_of(r#"{"model":null}"#), None);
        assert_eq!(model_of(r#"{"x":[1,2"#), None);
        assert_eq!(model_of("[DONE]"), None);
        assert_eq!(model_of(r#"{"model":"cut"#), None);
    }

    #[test]
    fn replaces_in_place() {
        let j = br#"{"id":"1","model":"upstream-name","choices":[]}"#;
        let at = span(j).unwrap_or_default();
        let out = replace(j, at, &escape("gpt \"4\""));
        assert_eq!(&out[..], br#"{"id":"1","model":"gpt \"4\"","choices":[]}"#);
    }

    #[test]
    fn the_serde_pass_points_at_the_same_place() {
        #[derive(serde::Deserialize)]
        struct Probe<'a> {
            #[serde(borrow, default)]
            model: ModelStr<'a>,
        }
        for j in [
            r#"{"data":[{"model":"no"}],"model":"emb","usage":{}}"#,
            r#"{"model":"a\u0041"}"#,
            r#"{"model":7}"#,
            r#"{"x":1}"#,
        ] {
            let p: Probe = serde_json::from_str(j).unwrap_or_else(|e| panic!("{j}: {e}"));
            assert_eq!(p.model.span_in(j.as_bytes()), span(j.as_bytes()), "{j}");
        }
    }

    proptest! {
        /// Whatever comes before it, the top-level model string is found where serde finds it.
        #[test]
        fn agrees_with_serde(
            before in prop::collection::vec(("[a-z]{1,6}", any::<Option<String>>(), any::<i32>()), 0..5),
            model in any::<String>(),
        ) {
            let mut obj = serde_json::Map::new();
            for (k, s, n) in before {
                if k == "model" { continue; }
                let v = match s {
                    Some(s) => serde_json::json!({"model": s, "list": [n, {"a": "]}"}]}),
                    None => serde_json::json!(n),
                };
                obj.insert(k, v);
            }
            obj.insert("model".into(), serde_json::Value::from(model.clone()));
            let text = serde_json::Value::Object(obj).to_string();
            let at = span(text.as_bytes());
            prop_assert!(at.is_some());
            let inner = &text[at.unwrap_or_default()];
            let back: String = serde_json::from_str(&format!("\"{inner}\"")).unwrap_or_default();
            prop_assert_eq!(back, model);
        }
    }
}
