//! The OpenAPI documents, generated from the routers' handler annotations. They are checked in
//! under `openapi/` and a test fails when they drift (`NIMBUS_BLESS_OPENAPI=1` rewrites them).

use utoipa::openapi::OpenApi;

/// `(dialect, document)` for every dialect served.
pub fn documents() -> Vec<(&'static str, OpenApi)> {
    vec![
        ("lambda", crate::lambda::api().1),
        ("native", crate::native::api().1),
        ("voltage", crate::voltage::api().1),
        ("clusters", crate::clusters::api().1),
    ]
}

/// Stable, pretty JSON for a document.
pub fn render(doc: &OpenApi) -> String {
    let mut s = doc.to_pretty_json().unwrap_or_default();
    s.push('\n');
    s
}
