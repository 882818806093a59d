//! The checked-in OpenAPI documents are current, well formed, and cover every path and method of
//! the upstream Lambda reference.

use std::collections::HashSet;
use std::path::PathBuf;

use nimbus_api::openapi::{documents, render};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn openapi_documents_are_current() {
    for (name, doc) in documents() {
        let path = root().join(format!("openapi/{name}.json"));
        let want = render(&doc);
        if std::env::var("NIMBUS_BLESS_OPENAPI").is_ok_and(|v| v == "1") {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &want).unwrap();
            continue;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "openapi/{name}.json is stale; regenerate with NIMBUS_BLESS_OPENAPI=1 cargo test -p nimbus-api --test openapi"
        );
    }
}

#[test]
fn operations_have_one_tag_a_summary_and_unique_resource_verb_ids() {
    for (name, doc) in documents() {
        let v: serde_json::Value = serde_json::from_str(&render(&doc)).unwrap();
        let mut ids = HashSet::new();
        for (path, item) in v["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let at = format!("{name} {method} {path}");
                assert_eq!(op["tags"].as_array().map(Vec::len), Some(1), "{at}: exactly one tag");
                assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()), "{at}: summary");
                let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{at}: operationId"));
                assert!(id.contains('_') && id.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{at}: {id} is not resource_verb");
                assert!(ids.insert(id.to_owned()), "{at}: duplicate operationId {id}");
                // Voltage Park's deletes answer 202 or 204 as its seed documents them.
                let success = ["200", "201", "202", "204"].iter().any(|st| op["responses"][*st].is_object());
                assert!(success, "{at}: documents its success");
            }
        }
    }
}

/// Every `| METHOD `/path` |` row of the reference's endpoint table exists in our document (the
/// two spellings of file systems are served under both names; the document lists Lambda's).
#[test]
fn lambda_document_covers_the_reference() {
    let reference = std::fs::read_to_string(root().join("../shared/reference/lambda-cloud-api.md"));
    let Ok(reference) = reference else {
        eprintln!("SKIPPED: ../shared/reference/lambda-cloud-api.md is not next to this checkout");
        return;
    };
    let doc = documents().into_iter().find(|(n, _)| *n == "lambda").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(&render(&doc)).unwrap();
    let mut checked = 0;
    for line in reference.lines() {
        let Some(rest) = line.strip_prefix("| ") else { continue };
        let mut words = rest.split_whitespace();
        let (Some(method), Some(path)) = (words.next(), words.next()) else { continue };
        if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method) {
            continue;
        }
        let path = path.trim_matches('`');
        let item = &v["paths"][path];
        assert!(item[method.to_lowercase()].is_object(), "reference endpoint {method} {path} is missing from openapi/lambda.json");
        checked += 1;
    }
    assert!(checked >= 20, "parsed only {checked} endpoints from the reference");
}
