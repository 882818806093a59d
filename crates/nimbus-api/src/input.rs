//! Path parameters, query strings and JSON object bodies, parsed for the dialects' extractors
//! (`LambdaPath`, `NativeJson`, `VpPath`, `ClJson`…). A failure is an [`InputError`] saying
//! where the input was wrong (`path`, `query`, `body`), which field, the value sent and the
//! values that would have been accepted; each dialect renders it in its own error shape. Nothing
//! here answers a client itself.

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, Request};
use axum::http::request::Parts;
use nimbus_core::Error;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Longest echo of a sent value in an error: the client has the rest.
const MAX_VALUE_ECHO: usize = 200;

/// What was wrong with a request's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// `path`, `query` or `body`: FastAPI's `loc` root, which the Voltage Park dialect shows.
    pub loc: &'static str,
    /// The parameter or field at fault, when one is: dotted for nested body fields
    /// (`spec.dedicated.machine_type`, `tags[0].key`).
    pub field: Option<String>,
    /// The value sent, when it can be shown (not for text that is not UTF-8).
    pub value: Option<String>,
    /// The values that would have been accepted (an enum's variants, a struct's fields).
    pub allowed_values: Option<Vec<String>>,
    /// For the client; names no internal detail.
    pub message: String,
    /// Not the client's fault: the route's parameters do not match its extractor. A 500.
    pub internal: bool,
}

impl InputError {
    fn new(loc: &'static str, field: Option<String>, message: impl Into<String>) -> Self {
        InputError { loc, field, value: None, allowed_values: None, message: message.into(), internal: false }
    }

    /// The domain error: `InvalidValue` naming the field, `InvalidRequest` when no single
    /// field is at fault, `Internal` for a programming error.
    pub fn to_error(&self) -> Error {
        if self.internal {
            return Error::internal(self.message.clone());
        }
        match &self.field {
            Some(f) => Error::invalid(f.clone(), self.message.clone()),
            None => Error::InvalidRequest { message: self.message.clone() },
        }
    }
}

/// Longest message: serde quotes the value sent in some (`invalid type: string "…"`).
const MAX_MESSAGE: usize = 500;

fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn echo(s: &str) -> String {
    cut(s, MAX_VALUE_ECHO)
}

/// The route's path parameters as `T` (`String`, `(String, String)`).
pub async fn path_params<T: DeserializeOwned + Send>(parts: &mut Parts) -> Result<T, InputError> {
    match Path::<T>::from_request_parts(parts, &()).await {
        Ok(Path(v)) => Ok(v),
        Err(rejection) => Err(path_rejection(rejection)),
    }
}

fn path_rejection(rejection: PathRejection) -> InputError {
    use axum::extract::path::ErrorKind as K;
    let e = match rejection {
        PathRejection::FailedToDeserializePathParams(e) => e,
        other => return InputError { internal: true, ..InputError::new("path", None, other.body_text()) },
    };
    let at = |key: &str, value: Option<&str>, message: String| InputError {
        value: value.map(echo),
        ..InputError::new("path", Some(key.to_owned()), message)
    };
    match e.kind() {
        K::InvalidUtf8InPathParam { key } => at(key, None, "is not valid UTF-8 once percent-decoded".into()),
        K::ParseErrorAtKey { key, value, expected_type } => at(key, Some(value), format!("cannot be parsed as {expected_type}")),
        K::DeserializeError { key, value, message } => at(key, Some(value), message.clone()),
        K::ParseErrorAtIndex { value, expected_type, .. } | K::ParseError { value, expected_type } => InputError {
            value: Some(echo(value)),
            ..InputError::new("path", None, format!("path parameter {:?} cannot be parsed as {expected_type}", echo(value)))
        },
        _ if e.status().is_server_error() => InputError { internal: true, ..InputError::new("path", None, e.body_text()) },
        _ => InputError::new("path", None, e.body_text()),
    }
}

/// Decodes one `application/x-www-form-urlencoded` component: `+` is a space, `%XX` a byte,
/// and the result must be UTF-8. `None` for a malformed escape or text that is not UTF-8
/// (which lossy decoding would silently turn into U+FFFD).
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `a=1&b=2` decoded into pairs, in order (a key may repeat); `a` alone is `("a", "")`.
pub fn query_pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, InputError> {
    let mut out = Vec::new();
    for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(k).ok_or_else(|| {
            InputError::new("query", None, "the query string has a parameter name that is not valid percent-encoded UTF-8")
        })?;
        let value = percent_decode(v).ok_or_else(|| InputError {
            value: Some(echo(v)),
            ..InputError::new("query", Some(key.clone()), "is not valid percent-encoded UTF-8")
        })?;
        out.push((key, value));
    }
    Ok(out)
}

/// The query string as `T` (serde's derive: unknown parameters are ignored unless `T` denies
/// them, a repeated one is refused), after checking that it decodes strictly.
pub fn query<T: DeserializeOwned>(raw: Option<&str>) -> Result<T, InputError> {
    query_pairs(raw)?;
    let uri: axum::http::Uri =
        format!("/?{}", raw.unwrap_or_default()).parse().map_err(|_| InputError::new("query", None, "the query string is malformed"))?;
    axum::extract::Query::<T>::try_from_uri(&uri).map(|q| q.0).map_err(|e| {
        let text = e.body_text();
        let message = text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text).to_owned();
        let field = backticked(&message).into_iter().next().filter(|_| message.contains("field"));
        InputError::new("query", field, message)
    })
}

/// A JSON object body as `T`, whatever the Content-Type says (Lambda's own curl recipes
/// and SkyPilot send none). Anything but one JSON object is refused: serde would also read
/// a struct from an array, which no client means.
pub async fn json_object<T: DeserializeOwned>(req: Request) -> Result<T, InputError> {
    let bytes = axum::body::to_bytes(req.into_body(), crate::MAX_BODY_BYTES).await.map_err(|_| {
        InputError::new("body", None, format!("the request body is unreadable or larger than {} bytes", crate::MAX_BODY_BYTES))
    })?;
    json_object_from_slice(&bytes)
}

/// [`json_object`] of bytes already read.
pub fn json_object_from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, InputError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(InputError::new("body", None, "a JSON request body is required")),
        Some(b'{') => {}
        Some(_) => return Err(InputError::new("body", None, "the request body must be a JSON object")),
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| body_error(bytes, e))?;
    de.end().map_err(|e| InputError::new("body", None, format!("malformed JSON body: {e}")))?;
    Ok(value)
}

/// The field path of a serde error (`spec.regions[0]`), `None` at the top level.
fn field_path(path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => break,
        }
    }
    (!out.is_empty()).then_some(out)
}

fn join(parent: Option<&str>, child: &str) -> String {
    match parent {
        Some(p) => format!("{p}.{child}"),
        None => child.to_owned(),
    }
}

/// The `` `quoted` `` words of a serde message, in order.
fn backticked(message: &str) -> Vec<String> {
    message.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

/// The value at `path` in `body`, for the echo of a wrong value.
fn value_at(body: &[u8], path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let mut v: Value = serde_json::from_slice(body).ok()?;
    for seg in path.iter() {
        v = match seg {
            Segment::Seq { index } => v.get_mut(*index)?.take(),
            Segment::Map { key } | Segment::Enum { variant: key } => v.get_mut(key.as_str())?.take(),
            Segment::Unknown => return None,
        };
    }
    Some(echo(&match v {
        Value::String(s) => s,
        other => other.to_string(),
    }))
}

/// A body that is JSON but not a `T` names the field (serde's "missing field `x`" is `x`
/// under the path), the value sent, and for an unknown variant or field what is allowed.
fn body_error(bytes: &[u8], e: serde_path_to_error::Error<serde_json::Error>) -> InputError {
    let path = e.path().clone();
    let inner = e.into_inner();
    if !inner.is_data() {
        return InputError::new("body", None, format!("malformed JSON body: {inner}"));
    }
    // serde_json appends " at line L column C"; the field path says more.
    let text = inner.to_string();
    let message = cut(text.rfind(" at line ").map_or(text.as_str(), |i| &text[..i]), MAX_MESSAGE);
    let at = field_path(&path);
    let words = backticked(&message);
    // The path of a missing field is its struct; that of an unknown field is the field.
    let (field, value, allowed_values) = if message.starts_with("missing field ") {
        (words.first().map(|f| join(at.as_deref(), f)), None, None)
    } else if message.starts_with("unknown field ") {
        (at.or_else(|| words.first().cloned()), None, words.get(1..).map(<[String]>::to_vec).filter(|w| !w.is_empty()))
    } else if message.starts_with("unknown variant ") {
        (at, words.first().map(|w| echo(w)), words.get(1..).map(<[String]>::to_vec).filter(|w| !w.is_empty()))
    } else {
        let value = value_at(bytes, &path);
        (at, value, None)
    };
    InputError { value, allowed_values, ..InputError::new("body", field, message) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)] // read only through Debug
    struct Body {
        name: String,
        #[serde(default)]
        size: Option<u32>,
        #[serde(default)]
        kind: Option<Kind>,
        #[serde(default)]
        spec: Option<Spec>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        Tcp,
        Udp,
        Icmp,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // read only through Debug
    struct Spec {
        regions: Vec<String>,
        #[serde(default)]
        tags: BTreeMap<String, String>,
    }

    fn err(body: &str) -> InputError {
        json_object_from_slice::<Body>(body.as_bytes()).expect_err(body)
    }

    #[test]
    fn bodies_name_the_field_the_value_and_the_choices() {
        let e = err(r#"{"size": 1}"#);
        assert_eq!((e.field.as_deref(), e.value.as_deref()), (Some("name"), None));
        assert_eq!(e.message, "missing field `name`");
        let e = err(r#"{"name": 5}"#);
        assert_eq!((e.field.as_deref(), e.value.as_deref()), (Some("name"), Some("5")));
        let e = err(r#"{"name": "x", "size": -1}"#);
        assert_eq!((e.field.as_deref(), e.value.as_deref()), (Some("size"), Some("-1")));
        let e = err(r#"{"name": "x", "kind": "sctp"}"#);
        assert_eq!((e.field.as_deref(), e.value.as_deref()), (Some("kind"), Some("sctp")));
        assert_eq!(e.allowed_values, Some(vec!["tcp".into(), "udp".into(), "icmp".into()]));
        let e = err(r#"{"name": "x", "spec": {}}"#);
        assert_eq!(e.field.as_deref(), Some("spec.regions"));
        let e = err(r#"{"name": "x", "spec": {"regions": ["a", 7]}}"#);
        assert_eq!((e.field.as_deref(), e.value.as_deref()), (Some("spec.regions[1]"), Some("7")));
        let e = err(r#"{"name": "x", "spec": {"regions": [], "colour": 1}}"#);
        assert_eq!(e.field.as_deref(), Some("spec.colour"));
        assert_eq!(e.allowed_values, Some(vec!["regions".into(), "tags".into()]));
        let e = err(r#"{"name": "x", "spec": {"regions": [], "tags": {"k": 1}}}"#);
        assert_eq!(e.field.as_deref(), Some("spec.tags.k"));
        assert!(err(r#"{"name": "x", "size": 99999999999999999999}"#).field.as_deref() == Some("size"));
    }

    #[test]
    fn malformed_bodies_name_no_field() {
        for body in ["", "  ", "[]", "null", "\"x\"", "{", r#"{"name": "x"} trailing"#, r#"{"name": "x"}{}"#, "{\"name\": \"\u{0}\""] {
            let e = err(body);
            assert_eq!((e.loc, e.internal), ("body", false), "{body}");
            assert!(e.field.is_none(), "{body}: {e:?}");
        }
        // Nesting past serde_json's recursion limit is refused, not a stack overflow.
        let deep = format!("{{\"name\": \"x\", \"extra\": {}}}", "[".repeat(100_000));
        assert!(err(&deep).field.is_none());
        assert!(json_object_from_slice::<Body>(b"{\"name\": \"\xff\"}").is_err());
    }

    #[test]
    fn query_strings_decode_strictly() {
        assert_eq!(
            query_pairs(Some("a=1&b=x+y%2Cz&c&&d=%C3%A9")).expect("valid"),
            vec![("a".into(), "1".into()), ("b".into(), "x y,z".into()), ("c".into(), "".into()), ("d".into(), "é".into())]
        );
        for bad in ["a=%ff", "a=%zz", "a=%4", "a=%c0%af", "a=%+f", "a=%-1"] {
            let e = query_pairs(Some(bad)).expect_err(bad);
            assert_eq!((e.loc, e.field.as_deref()), ("query", Some("a")), "{bad}");
        }
        assert_eq!(query_pairs(Some("%ff=1")).expect_err("key").field, None);
        assert_eq!(query_pairs(None).expect("empty"), vec![]);

        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)] // read only through Debug
        struct Q {
            cluster_id: Option<String>,
        }
        assert!(query::<Q>(Some("cluster_id=a&other=1")).is_ok());
        assert_eq!(query::<Q>(Some("cluster_id=a&cluster_id=b")).expect_err("dup").field.as_deref(), Some("cluster_id"));
        assert_eq!(query::<Q>(Some("cluster_id=%ff")).expect_err("utf8").field.as_deref(), Some("cluster_id"));
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_VALUE_ECHO + 10);
        let e = query_pairs(Some(&format!("a={long}%zz"))).expect_err("bad escape");
        let v = e.value.expect("value");
        assert!(v.ends_with('…') && v.chars().count() == MAX_VALUE_ECHO + 1);
        let huge = format!("{{\"name\": \"x\", \"size\": \"{}\"}}", "9".repeat(100_000));
        let e = err(&huge);
        assert!(e.message.chars().count() <= MAX_MESSAGE + 1 && e.value.is_some_and(|v| v.chars().count() <= MAX_VALUE_ECHO + 1));
    }
}
