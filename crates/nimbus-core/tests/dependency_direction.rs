//! Guards the crate layout: the domain core must not depend on IO crates, and no crate below the
//! HTTP layer may depend on axum (CONVENTIONS.md, "Crate layout").

use std::path::PathBuf;

fn deps(krate: &str) -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(krate).join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    let mut in_deps = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_deps = l == "[dependencies]";
            continue;
        }
        if in_deps {
            if let Some(name) = l.split(['.', '=', ' ']).next().filter(|n| !n.is_empty() && !n.starts_with('#')) {
                out.push(name.to_owned());
            }
        }
    }
    out
}

#[test]
fn dependency_directions_hold() {
    let forbidden: &[(&str, &[&str])] = &[
        ("nimbus-core", &["tokio", "sqlx", "axum", "reqwest", "hyper"]),
        ("nimbus-store", &["axum", "reqwest", "nimbus-control", "nimbus-api"]),
        ("nimbus-control", &["axum", "nimbus-api", "nimbus-api-types"]),
        ("nimbus-api-types", &["axum", "sqlx", "nimbus-control", "tokio"]),
        ("nimbus-proto", &["axum", "sqlx"]),
        ("nimbus-driver", &["nimbus-store", "nimbus-control", "nimbus-api", "axum", "sqlx"]),
        ("nimbus-agent", &["nimbus-store", "nimbus-control", "nimbus-api", "axum", "sqlx"]),
        ("nimbus-client", &["axum", "sqlx", "nimbus-control"]),
        ("nimbus-api", &["sqlx"]),
    ];
    // The parser sees real dependency lists (so the checks below can fail).
    assert!(deps("nimbus-api").iter().any(|d| d == "axum"));
    assert!(deps("nimbus-store").iter().any(|d| d == "sqlx"));
    for (krate, bad) in forbidden {
        let d = deps(krate);
        assert!(!d.is_empty() || *krate == "nimbus-api-types", "{krate}: could not read dependencies");
        for b in *bad {
            assert!(!d.iter().any(|x| x == b), "{krate} must not depend on {b}");
        }
    }
}
