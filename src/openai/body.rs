//! The request body as Tollgate reads, edits and forwards it: parsed once, each top-level field
//! kept as the span of the client's bytes it came in, so that shaping reads and replaces a few
//! fields and the upstream body is written without walking the rest again.
//!
//! Parsing is two scans of the client's bytes, neither of which builds a `serde_json::Value`:
//! the first validates the whole body exactly as `serde_json::from_slice::<Value>` would (the
//! same parser paths, so the same errors, positions and recursion limit) and notes each field's
//! [`Kind`] and the [`Text`] it holds; the second takes each field's raw JSON as a span.
//! Duplicate keys behave as they did with a `Map`: the last value wins and only one copy goes
//! upstream, so an upstream cannot read a copy the shaping never saw. Serialisation copies untouched fields verbatim; an unedited body
//! goes upstream as the very bytes the client sent.
//!
//! Not owned here: what the fields mean (policy), the token estimate (limits).

use std::collections::HashMap;
use std::ops::Range;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A request body: its top-level fields in the client's order, each the raw JSON the client
/// sent or the JSON Tollgate wrote in its place.
#[derive(Debug, Clone)]
pub struct Body {
    /// The client's bytes; untouched fields are spans of them (shared, never copied).
    src: Bytes,
    fields: Vec<Field>,
    /// A field was replaced, added or dropped, so the upstream body must be written out.
    edited: bool,
}

#[derive(Debug, Clone)]
struct Field {
    key: Key,
    value: Json,
    kind: Kind,
    text: Text,
}

/// A field's name: a span of the source when it had no escapes, else the decoded text.
#[derive(Debug, Clone)]
enum Key {
    Span(Range<usize>),
    Own(Box<str>),
}

/// A field's JSON text: a span of the source, or text Tollgate wrote.
#[derive(Debug, Clone)]
enum Json {
    Span(Range<usize>),
    Own(Box<[u8]>),
}

/// What kind of JSON value a field holds, noted while the body is validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Null,
    Bool,
    Number,
    String,
    Object,
    Array(Items),
}

/// An array's elements, counted by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Items {
    pub len: usize,
    /// Elements that are objects.
    pub objects: usize,
    /// Elements that are strings or arrays.
    pub texts_or_lists: usize,
}

/// The characters and numbers a value holds at every depth, counted as the body is validated
/// (what the token estimate reads, without a second walk of the JSON). Characters are of the
/// decoded text, split into ASCII and the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Text {
    /// In string values.
    pub ascii: u64,
    pub other: u64,
    /// In object keys (the field's own name is not part of its value).
    pub key_ascii: u64,
    pub key_other: u64,
    /// Numbers.
    pub numbers: u64,
}

impl Text {
    fn string(&mut self, s: &str) {
        let (a, o) = chars(s);
        self.ascii += a;
        self.other += o;
    }

    fn key(&mut self, s: &str) {
        let (a, o) = chars(s);
        self.key_ascii += a;
        self.key_other += o;
    }
}

/// (ASCII characters, other characters) of `s`.
fn chars(s: &str) -> (u64, u64) {
    if s.is_ascii() {
        return (s.len() as u64, 0);
    }
    s.chars().fold(
        (0, 0),
        |(a, o), c| {
            if c.is_ascii() {
                (a + 1, o)
            } else {
                (a, o + 1)
            }
        },
    )
}

/// Why a body was refused.
#[derive(Debug)]
pub enum BodyError {
    /// Not JSON; the message is serde_json's, as for a `Value`.
    Invalid(serde_json::Error),
    /// JSON, but not an object.
    NotObject,
}

impl Kind {
    /// The kind of a value Tollgate writes (or of a `Map`'s value) and the text it holds, in one
    /// walk: what the validating scan notes for the client's fields.
    fn of(v: &Value, text: &mut Text) -> Kind {
        match v {
            Value::Null => Kind::Null,
            Value::Bool(_) => Kind::Bool,
            Value::Number(_) => {
                text.numbers += 1;
                Kind::Number
            }
            Value::String(s) => {
                text.string(s);
                Kind::String
            }
            Value::Object(m) => {
                for (k, e) in m {
                    text.key(k);
                    Kind::of(e, text);
                }
                Kind::Object
            }
            Value::Array(a) => Kind::Array(
                a.iter()
                    .fold(Items::default(), |i, e| i.with(Kind::of(e, text))),
            ),
        }
    }

    /// [`Kind::of`] with a fresh count.
    fn with_text(v: &Value) -> (Kind, Text) {
        let mut text = Text::default();
        (Kind::of(v, &mut text), text)
    }
}

impl Items {
    fn with(mut self, element: Kind) -> Items {
        self.len += 1;
        match element {
            Kind::Object => self.objects += 1,
            Kind::String | Kind::Array(_) => self.texts_or_lists += 1,
            _ => {}
        }
        self
    }
}

impl Body {
    /// Parse a request body: a JSON object, validated whole, its fields kept as spans.
    pub fn parse(src: Bytes) -> Result<Body, BodyError> {
        let surveyed = match serde_json::from_slice::<Survey>(&src) {
            Ok(Survey::Object(kinds)) => kinds,
            Ok(Survey::Other) => return Err(BodyError::NotObject),
            Err(e) => return Err(BodyError::Invalid(e)),
        };
        // Cannot fail where the validation above passed: it is the laxer scan of the same text.
        let spans = serde_json::from_slice::<Spans<'_>>(&src).map_err(BodyError::Invalid)?;
        let mut fields = Vec::with_capacity(spans.0.len());
        for ((key, raw), (kind, text)) in spans.0.into_iter().zip(surveyed) {
            let key = match key {
                KeyRef::Borrowed(k) => {
                    span_of(&src, k.as_bytes()).map_or_else(|| Key::Own(k.into()), Key::Span)
                }
                KeyRef::Own(k) => Key::Own(k),
            };
            let raw = raw.get().as_bytes();
            let value = span_of(&src, raw).map_or_else(|| Json::Own(raw.into()), Json::Span);
            fields.push(Field {
                key,
                value,
                kind,
                text,
            });
        }
        let mut body = Body {
            src,
            fields,
            edited: false,
        };
        body.dedupe();
        Ok(body)
    }

    /// The kind of a field's value; `None` when the field is absent.
    pub fn kind(&self, key: &str) -> Option<Kind> {
        self.find(key).map(|i| self.fields[i].kind)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// A field's raw JSON text.
    pub fn raw(&self, key: &str) -> Option<&[u8]> {
        self.find(key).map(|i| self.json(&self.fields[i].value))
    }

    /// A field read as `T` (meant for small fields: numbers, flags, names).
    pub fn get<'a, T: Deserialize<'a>>(&'a self, key: &str) -> Option<serde_json::Result<T>> {
        self.raw(key).map(serde_json::from_slice)
    }

    /// Set a field: replaced where it stands, or added at the end.
    pub fn insert(&mut self, key: &str, value: Value) {
        let json = Json::Own(value.to_string().into_bytes().into_boxed_slice());
        let (kind, text) = Kind::with_text(&value);
        self.edited = true;
        match self.find(key) {
            Some(i) => {
                self.fields[i].value = json;
                self.fields[i].kind = kind;
                self.fields[i].text = text;
            }
            None => self.fields.push(Field {
                key: Key::Own(key.into()),
                value: json,
                kind,
                text,
            }),
        }
    }

    /// Remove a field; whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        let Some(i) = self.find(key) else {
            return false;
        };
        self.fields.remove(i);
        self.edited = true;
        true
    }

    /// The body to send upstream: the client's own bytes when nothing was edited, else the
    /// fields written in order, untouched ones copied verbatim.
    pub fn to_bytes(&self) -> Bytes {
        if !self.edited {
            return self.src.clone();
        }
        let size = self.fields.iter().map(|f| self.field_len(f)).sum::<usize>();
        let mut out = Vec::with_capacity(size + 2);
        out.push(b'{');
        for (i, f) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            self.write_key(&f.key, &mut out);
            out.push(b':');
            out.extend_from_slice(self.json(&f.value));
        }
        out.push(b'}');
        Bytes::from(out)
    }

    /// The named fields as values, for readers that want a `Value` (the in-process mock).
    pub fn pick(&self, keys: &[&str]) -> Map<String, Value> {
        keys.iter()
            .filter_map(|k| Some(((*k).to_owned(), self.get::<Value>(k)?.ok()?)))
            .collect()
    }

    /// Every field as (name, raw JSON text), in order (the response cache's key reads them all).
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields
            .iter()
            .map(|f| (self.key(&f.key), self.json(&f.value)))
    }

    fn find(&self, key: &str) -> Option<usize> {
        let key = key.as_bytes();
        self.fields.iter().position(|f| self.key(&f.key) == key)
    }

    fn key<'a>(&'a self, k: &'a Key) -> &'a [u8] {
        match k {
            Key::Span(r) => &self.src[r.clone()],
            Key::Own(s) => s.as_bytes(),
        }
    }

    fn json<'a>(&'a self, j: &'a Json) -> &'a [u8] {
        match j {
            Json::Span(r) => &self.src[r.clone()],
            Json::Own(b) => b,
        }
    }

    fn field_len(&self, f: &Field) -> usize {
        // Quotes, colon, comma; an owned key may grow when escaped, which `Vec` absorbs.
        self.key(&f.key).len() + self.json(&f.value).len() + 4
    }

    fn write_key(&self, k: &Key, out: &mut Vec<u8>) {
        match k {
            // A span is a key that had no escapes: it is written as it came.
            Key::Span(r) => {
                out.push(b'"');
                out.extend_from_slice(&self.src[r.clone()]);
                out.push(b'"');
            }
            Key::Own(s) => {
                // Writing a `str` into a `Vec` cannot fail.
                let _ = serde_json::to_writer(&mut *out, &**s);
            }
        }
    }

    /// Keep one field per key: the last value, at the first one's place (as a `Map` does).
    fn dedupe(&mut self) {
        let moves = self.duplicates();
        if moves.is_empty() {
            return;
        }
        let mut keep = vec![true; self.fields.len()];
        for (at, i) in moves {
            self.fields[at].value = self.fields[i].value.clone();
            self.fields[at].kind = self.fields[i].kind;
            self.fields[at].text = self.fields[i].text;
            keep[i] = false;
        }
        let mut keep = keep.into_iter();
        self.fields.retain(|_| keep.next().unwrap_or(true));
        self.edited = true;
    }

    /// `(first, later)` for every later occurrence of a key. A handful of fields are compared
    /// pairwise (no allocation); many go through a hash map, so a body of a hundred thousand keys
    /// costs no more than it did as a `Map`.
    fn duplicates(&self) -> Vec<(usize, usize)> {
        let keys = || self.fields.iter().map(|f| self.key(&f.key)).enumerate();
        let mut moves = Vec::new();
        if self.fields.len() <= 16 {
            for (i, k) in keys() {
                if let Some((at, _)) = keys().take(i).find(|(_, e)| *e == k) {
                    moves.push((at, i));
                }
            }
        } else {
            let mut first: HashMap<&[u8], usize> = HashMap::with_capacity(self.fields.len());
            for (i, k) in keys() {
                if let Some(&at) = first.get(k) {
                    moves.push((at, i));
                } else {
                    first.insert(k, i);
                }
            }
        }
        moves
    }
}

/// Where `part` lies in `src`, when it is a slice of it.
fn span_of(src: &[u8], part: &[u8]) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(src.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= src.len()).then_some(start..end)
}

/// A body's fields as kind and text: a reader (the token estimate) works on a parsed [`Body`]
/// (counted as it was validated) and on a `Map` of values (counted on demand) alike.
pub trait JsonFields {
    /// The kind and text of the field `key`; `None` when it is absent.
    fn field_text(&self, key: &str) -> Option<(Kind, Text)>;
}

impl JsonFields for Body {
    fn field_text(&self, key: &str) -> Option<(Kind, Text)> {
        self.find(key)
            .map(|i| (self.fields[i].kind, self.fields[i].text))
    }
}

impl JsonFields for Map<String, Value> {
    fn field_text(&self, key: &str) -> Option<(Kind, Text)> {
        self.get(key).map(Kind::with_text)
    }
}

// ---- the validating scan: the same parser paths as a `Value`, nothing kept but kinds ----

/// The top level of a body: an object's field kinds in order, or something else (still
/// validated whole, so a bad number in an array is reported as such).
enum Survey {
    Object(Vec<(Kind, Text)>),
    Other,
}

impl<'de> Deserialize<'de> for Survey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Survey, D::Error> {
        struct Top;
        impl<'de> Visitor<'de> for Top {
            type Value = Survey;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Survey, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while map.next_key::<IgnoredAny>()?.is_some() {
                    let mut text = Text::default();
                    let kind = map.next_value_seed(Check(&mut text))?;
                    fields.push((kind, text));
                }
                Ok(Survey::Object(fields))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Survey, A::Error> {
                Check(&mut Text::default())
                    .visit_seq(seq)
                    .map(|_| Survey::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Survey, E> {
                Ok(Survey::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Survey, E> {
                Ok(Survey::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Survey, E> {
                Ok(Survey::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Survey, E> {
                Ok(Survey::Other)
            }
            fn visit_str<E>(self, _: &str) -> Result<Survey, E> {
                Ok(Survey::Other)
            }
            fn visit_unit<E>(self) -> Result<Survey, E> {
                Ok(Survey::Other)
            }
        }
        d.deserialize_any(Top)
    }
}

/// Validates one value the way a `Value` is parsed (`deserialize_any` all the way down, keys as
/// strings), says what kind it is and counts its [`Text`].
struct Check<'t>(&'t mut Text);

impl Check<'_> {
    fn again(&mut self) -> Check<'_> {
        Check(self.0)
    }
}

impl<'de> DeserializeSeed<'de> for Check<'_> {
    type Value = Kind;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check<'_> {
    type Value = Kind;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Kind, E> {
        Ok(Kind::Bool)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Kind, E> {
        self.0.numbers += 1;
        Ok(Kind::Number)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Kind, E> {
        self.0.numbers += 1;
        Ok(Kind::Number)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Kind, E> {
        self.0.numbers += 1;
        Ok(Kind::Number)
    }
    fn visit_str<E>(self, s: &str) -> Result<Kind, E> {
        self.0.string(s);
        Ok(Kind::String)
    }
    fn visit_unit<E>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Kind, A::Error> {
        let mut items = Items::default();
        while let Some(k) = seq.next_element_seed(self.again())? {
            items = items.with(k);
        }
        Ok(Kind::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        while map.next_key_seed(KeyCount(&mut *self.0))?.is_some() {
            map.next_value_seed(Check(&mut *self.0))?;
        }
        Ok(Kind::Object)
    }
}

/// An object key inside a value: validated as a string (as a `Map`'s key) and counted.
struct KeyCount<'t>(&'t mut Text);

impl<'de> DeserializeSeed<'de> for KeyCount<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyCount<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string key")
    }
    fn visit_str<E>(self, s: &str) -> Result<(), E> {
        self.0.key(s);
        Ok(())
    }
}

// ---- the span scan: each field's name and raw JSON text ----

enum KeyRef<'de> {
    Borrowed(&'de str),
    Own(Box<str>),
}

struct Spans<'de>(Vec<(KeyRef<'de>, &'de RawValue)>);

impl<'de> Deserialize<'de> for Spans<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Spans<'de>, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = Spans<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Spans<'de>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(k) = map.next_key_seed(KeySeed)? {
                    out.push((k, map.next_value::<&'de RawValue>()?));
                }
                Ok(Spans(out))
            }
        }
        d.deserialize_map(Fields)
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = KeyRef<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<KeyRef<'de>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = KeyRef<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<KeyRef<'de>, E> {
        Ok(KeyRef::Borrowed(s))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<KeyRef<'de>, E> {
        Ok(KeyRef::Own(s.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> Result<Body, BodyError> {
        Body::parse(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn sent(b: &Body) -> Value {
        serde_json::from_slice(&b.to_bytes()).unwrap_or(Value::Null)
    }

    #[test]
    fn a_removed_field_is_gone_from_what_is_sent() {
        let mut b = parse(r#"{"model":"m","seed":7,"n":1}"#).unwrap();
        assert!(b.remove("seed"));
        assert!(!b.remove("seed"));
        assert!(!b.contains_key("seed"));
        assert_eq!(sent(&b), json!({"model": "m", "n": 1}));
    }

    #[test]
    fn errors_are_the_ones_a_value_parse_gives() {
        for bad in [
            "",
            "{",
            "{\"a\":1,}",
            "{\"a\": 1e400}",
            "{\"a\": \"\\ud800\"}",
            "{\"a\": [1, 2e999]}",
            "[1e400]",
            "{\"a\": 1} x",
            "{\"\\x\": 1}",
            "{\"a\": tru}",
        ] {
            let want = serde_json::from_str::<Value>(bad)
                .err()
                .map(|e| e.to_string());
            let got = match parse(bad) {
                Err(BodyError::Invalid(e)) => Some(e.to_string()),
                _ => None,
            };
            assert!(want.is_some(), "{bad}");
            assert_eq!(got, want, "{bad}");
        }
        // The recursion limit falls where it does for a `Value`.
        for depth in [126, 127, 128, 200] {
            let deep = format!("{{\"a\":{}{}}}", "[".repeat(depth), "]".repeat(depth));
            let want = serde_json::from_str::<Value>(&deep)
                .err()
                .map(|e| e.to_string());
            let got = parse(&deep).err().map(|e| match e {
                BodyError::Invalid(e) => e.to_string(),
                BodyError::NotObject => "not an object".into(),
            });
            assert_eq!(got, want, "{depth}");
        }
        for other in ["[1, 2]", "3", "\"s\"", "null", "true"] {
            assert!(matches!(parse(other), Err(BodyError::NotObject)), "{other}");
        }
    }

    #[test]
    fn an_untouched_body_goes_out_as_it_came() {
        let text = "{ \"model\" : \"m\",\n \"messages\": [ {\"role\":\"user\"} ], \"x\": 1.50 }";
        let b = parse(text).map_err(|e| format!("{e:?}"));
        assert_eq!(b.map(|b| b.to_bytes()), Ok(Bytes::from(text)));
    }

    #[test]
    fn edits_replace_in_place_and_keep_the_rest_verbatim() {
        let Ok(mut b) = parse("{\"model\":\"m\",\"x\":[1.50, {\"k\":\"v\"}],\"n\":2}") else {
            panic!("parse")
        };
        b.insert("model", json!("up"));
        b.insert("max_tokens", json!(10));
        assert_eq!(
            b.to_bytes(),
            Bytes::from("{\"model\":\"up\",\"x\":[1.50, {\"k\":\"v\"}],\"n\":2,\"max_tokens\":10}")
        );
        assert_eq!(b.kind("x").map(|k| matches!(k, Kind::Array(_))), Some(true));
        assert_eq!(b.get::<u64>("n").and_then(Result::ok), Some(2));
    }

    #[test]
    fn duplicate_keys_keep_the_last_value_once() {
        let Ok(b) = parse("{\"max_tokens\":5,\"a\":1,\"max_tokens\":99999,\"a\":2}") else {
            panic!("parse")
        };
        assert_eq!(b.get::<u64>("max_tokens").and_then(Result::ok), Some(99999));
        assert_eq!(b.to_bytes(), Bytes::from("{\"max_tokens\":99999,\"a\":2}"));
    }

    #[test]
    fn escaped_keys_are_read_decoded_and_written_escaped() {
        let Ok(mut b) = parse("{\"max_tok\\u0065ns\":7,\"q\\\"\":1}") else {
            panic!("parse")
        };
        assert_eq!(b.get::<u64>("max_tokens").and_then(Result::ok), Some(7));
        b.insert("max_tokens", json!(3));
        assert_eq!(sent(&b), json!({"max_tokens": 3, "q\"": 1}));
    }

    #[test]
    fn text_counts_decoded_strings_keys_and_numbers_at_every_depth() {
        let Ok(mut b) = parse(r#"{"t":[{"k\u00e9y":"ab\u4e2d"},1,2.5,null,true],"s":"x"}"#) else {
            panic!("parse")
        };
        let t = Text {
            ascii: 2,
            other: 1,
            key_ascii: 2,
            key_other: 1,
            numbers: 2,
        };
        assert_eq!(b.field_text("t").map(|(_, t)| t), Some(t));
        // The field's own name is not part of its value.
        assert_eq!(
            b.field_text("s").map(|(_, t)| (t.ascii, t.key_ascii)),
            Some((1, 0))
        );
        b.insert("s", json!({"ab": [7, "xyz"]}));
        assert_eq!(
            b.field_text("s").map(|(_, t)| t),
            Some(Text {
                ascii: 3,
                key_ascii: 2,
                numbers: 1,
                ..Text::default()
            })
        );
        assert_eq!(b.field_text("zz"), None);
    }

    #[test]
    fn kinds_count_array_elements() {
        let Ok(b) = parse("{\"m\":[{}, \"s\", [1], 2, null],\"e\":[]}") else {
            panic!("parse")
        };
        let items = Items {
            len: 5,
            objects: 1,
            texts_or_lists: 2,
        };
        assert_eq!(b.kind("m"), Some(Kind::Array(items)));
        assert_eq!(b.kind("e"), Some(Kind::Array(Items::default())));
        assert_eq!(b.kind("zz"), None);
    }
}
