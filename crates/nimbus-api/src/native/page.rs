//! Pagination, filtering and sorting of list endpoints, as pure functions over the rows: the
//! query string is parsed into a `ListQuery` (with errors naming the parameter and its allowed
//! values), then applied.

use nimbus_api_types::native::{ErrorDetails, Pagination};
use nimbus_core::Error;

use super::NativeError;

pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub page: u32,
    pub limit: u32,
    pub sort: String,
    pub desc: bool,
    /// `(field, wanted value)` filters, all of which must hold.
    pub filters: Vec<(String, String)>,
}

fn invalid(field: &str, value: &str, allowed: Option<&[&str]>, message: String) -> NativeError {
    NativeError {
        error: Error::invalid(field, message),
        details: Some(ErrorDetails {
            field: Some(field.to_owned()),
            value: Some(value.to_owned()),
            allowed_values: allowed.map(|a| a.iter().map(|s| (*s).to_owned()).collect()),
        }),
    }
}

/// Parses `page`, `limit`, `sort`, `order` and the filters a resource supports. Unknown
/// parameters are refused, so that a misspelt filter never silently returns everything.
pub fn parse(params: &[(String, String)], sorts: &[&str], filters: &[&str]) -> Result<ListQuery, NativeError> {
    let mut q = ListQuery { page: 1, limit: DEFAULT_LIMIT, sort: sorts[0].to_owned(), desc: false, filters: Vec::new() };
    for (k, v) in params {
        match k.as_str() {
            "page" => {
                q.page = v.parse().ok().filter(|p| *p >= 1).ok_or_else(|| invalid("page", v, None, "must be an integer >= 1".into()))?;
            }
            "limit" => {
                q.limit = v
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| invalid("limit", v, None, format!("must be an integer from 1 to {MAX_LIMIT}")))?;
            }
            "sort" => {
                if !sorts.contains(&v.as_str()) {
                    return Err(invalid("sort", v, Some(sorts), format!("cannot sort by {v:?}")));
                }
                q.sort = v.clone();
            }
            "order" => {
                q.desc = match v.as_str() {
                    "asc" => false,
                    "desc" => true,
                    _ => return Err(invalid("order", v, Some(&["asc", "desc"]), "must be asc or desc".into())),
                }
            }
            f if filters.contains(&f) => q.filters.push((k.clone(), v.clone())),
            other => {
                let mut allowed: Vec<&str> = vec!["page", "limit", "sort", "order"];
                allowed.extend_from_slice(filters);
                return Err(invalid(other, v, Some(&allowed), format!("unknown query parameter {other:?}")));
            }
        }
    }
    Ok(q)
}

/// Filters with `field_of`, sorts with `key_of` (ties broken by `id_of`, so pages are stable),
/// and cuts the requested page.
pub fn apply<T>(
    mut rows: Vec<T>,
    q: &ListQuery,
    field_of: impl Fn(&T, &str) -> Option<String>,
    key_of: impl Fn(&T, &str) -> String,
    id_of: impl Fn(&T) -> String,
) -> (Vec<T>, Pagination) {
    rows.retain(|r| q.filters.iter().all(|(f, want)| field_of(r, f).as_deref() == Some(want.as_str())));
    rows.sort_by(|a, b| {
        let o = key_of(a, &q.sort).cmp(&key_of(b, &q.sort)).then_with(|| id_of(a).cmp(&id_of(b)));
        if q.desc {
            o.reverse()
        } else {
            o
        }
    });
    let total = rows.len() as u64;
    let limit = u64::from(q.limit);
    let total_pages = total.div_ceil(limit);
    let start = (u64::from(q.page) - 1) * limit;
    let items: Vec<T> = rows.into_iter().skip(start as usize).take(q.limit as usize).collect();
    let page = Pagination {
        page: q.page,
        limit: q.limit,
        total_items: total,
        total_pages,
        has_next: u64::from(q.page) < total_pages,
        has_prev: q.page > 1,
    };
    (items, page)
}

/// The lists of named objects (API keys, service accounts): `?name=` filters, `sort` is
/// `created_at` (the default) or `name`.
pub const BY_NAME_SORTS: &[&str] = &["created_at", "name"];
pub const BY_NAME_FILTERS: &[&str] = &["name"];

/// `apply` for a list of named objects (see `BY_NAME_SORTS`).
pub fn apply_by_name<T>(
    rows: Vec<T>,
    q: &ListQuery,
    name: impl Fn(&T) -> &str,
    created_at: impl Fn(&T) -> i64,
    id: impl Fn(&T) -> String,
) -> (Vec<T>, Pagination) {
    apply(
        rows,
        q,
        |r, f| (f == "name").then(|| name(r).to_owned()),
        |r, key| if key == "name" { name(r).to_owned() } else { format!("{:020}", created_at(r)) },
        id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    #[test]
    fn parse_validates_every_parameter() {
        let q = parse(
            &p(&[("page", "2"), ("limit", "5"), ("sort", "name"), ("order", "desc"), ("status", "running")]),
            &["created_at", "name"],
            &["status"],
        )
        .expect("valid");
        assert_eq!(q, ListQuery { page: 2, limit: 5, sort: "name".into(), desc: true, filters: vec![("status".into(), "running".into())] });
        for bad in [("page", "0"), ("page", "x"), ("limit", "101"), ("limit", "0"), ("sort", "ssn"), ("order", "up"), ("colour", "red")] {
            let e = parse(&p(&[bad]), &["created_at", "name"], &["status"]).expect_err(bad.0);
            assert_eq!(e.details.and_then(|d| d.field).as_deref(), Some(bad.0));
        }
    }

    #[test]
    fn pages_filters_and_stable_sorting() {
        let rows: Vec<(String, &str)> = (0..45).map(|i| (format!("id{i:02}"), if i % 3 == 0 { "stopped" } else { "running" })).collect();
        let q = ListQuery { page: 3, limit: 10, sort: "id".into(), desc: false, filters: vec![("status".into(), "running".into())] };
        let (items, pg) = apply(rows.clone(), &q, |r, _| Some(r.1.to_owned()), |r, _| r.0.clone(), |r| r.0.clone());
        assert_eq!(pg.total_items, 30);
        assert_eq!(pg.total_pages, 3);
        assert!(!pg.has_next && pg.has_prev);
        assert_eq!(items.len(), 10);
        assert_eq!(items[0].0, "id31");
        let q = ListQuery { page: 9, limit: 10, sort: "id".into(), desc: true, filters: vec![] };
        let (items, pg) = apply(rows, &q, |r, _| Some(r.1.to_owned()), |r, _| r.0.clone(), |r| r.0.clone());
        assert!(items.is_empty() && pg.total_pages == 5 && !pg.has_next);
    }
}
