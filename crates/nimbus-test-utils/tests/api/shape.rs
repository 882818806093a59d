//! Comparing the shape of a JSON answer with a documented example: the same keys at every level
//! and the same JSON types, with stated exceptions.

use serde_json::Value;

pub struct Rules<'a> {
    /// Fields that may be `null` where the example has a value.
    pub may_be_null: &'a [&'a str],
    /// Maps keyed by data (GPU model slugs), not by field names: each value is compared with
    /// the example's first.
    pub data_keyed: &'a [&'a str],
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Differences between the example `want` and our `got` at `path` (`field` is the last key).
pub fn diff(want: &Value, got: &Value, rules: &Rules<'_>, path: &str, field: &str, out: &mut Vec<String>) {
    if got.is_null() && rules.may_be_null.contains(&field) {
        return;
    }
    if kind(want) != kind(got) {
        out.push(format!("{path}: the example has {}, Nimbus {} ({got})", kind(want), kind(got)));
        return;
    }
    match (want, got) {
        (Value::Object(w), Value::Object(g)) if rules.data_keyed.contains(&field) => {
            if let Some(wv) = w.values().next() {
                for (k, gv) in g {
                    diff(wv, gv, rules, &format!("{path}.{k}"), k, out);
                }
            }
        }
        (Value::Object(w), Value::Object(g)) => {
            for k in w.keys().filter(|k| !g.contains_key(*k)) {
                out.push(format!("{path}: missing field {k}"));
            }
            for k in g.keys().filter(|k| !w.contains_key(*k)) {
                out.push(format!("{path}: extra field {k}"));
            }
            for (k, wv) in w {
                if let Some(gv) = g.get(k) {
                    diff(wv, gv, rules, &format!("{path}.{k}"), k, out);
                }
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            if let Some(wv) = w.first() {
                for (i, gv) in g.iter().enumerate() {
                    diff(wv, gv, rules, &format!("{path}[{i}]"), field, out);
                }
            }
        }
        _ => {}
    }
}
