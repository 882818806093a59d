//! The OpenAPI documents, generated from the routers' handler annotations. They are checked in
//! under `openapi/` and a test fails when they drift (`NIMBUS_BLESS_OPENAPI=1` rewrites them).

use utoipa::openapi::security::{SecurityRequirement, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder, ServerBuilder};

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

/// The start of a dialect's document: its title and description, the one server URL its paths
/// are under, and its security schemes by name (any one of them is accepted).
pub fn base(title: &str, description: &str, server: &str, schemes: Vec<(&str, SecurityScheme)>) -> OpenApi {
    let mut doc = OpenApiBuilder::new()
        .info(InfoBuilder::new().title(title).version("1.0.0").description(Some(description)).build())
        .servers(Some(vec![ServerBuilder::new().url(server).build()]))
        .build();
    if !schemes.is_empty() {
        let names: Vec<String> = schemes.iter().map(|(n, _)| (*n).to_owned()).collect();
        let components = doc.components.get_or_insert_with(Default::default);
        for (name, scheme) in schemes {
            components.add_security_scheme(name, scheme);
        }
        doc.security = Some(names.into_iter().map(|n| SecurityRequirement::new(n, Vec::<String>::new())).collect());
    }
    doc
}
