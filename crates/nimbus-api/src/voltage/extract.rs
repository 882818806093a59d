//! Extractors of the Voltage Park dialect: the actor (`Authorization: Bearer` or `x-api-token`),
//! JSON bodies, path parameters, query strings and `limit`/`offset` pages, with every failure in
//! its (FastAPI) error shape.

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use nimbus_core::auth::Actor;
use nimbus_core::Error;

use super::VpError;
use crate::input;
use crate::ApiState;

pub struct VpActor(pub Actor);

impl FromRequestParts<ApiState> for VpActor {
    type Rejection = VpError;

    async fn from_request_parts(parts: &mut Parts, s: &ApiState) -> Result<Self, Self::Rejection> {
        let actor = crate::auth::plan_limited_actor(&parts.headers, s).await?;
        crate::auth::remember(parts, &actor);
        Ok(VpActor(actor))
    }
}

/// The permission a Voltage Park route needs, checked before its query or body is parsed.
pub type Needs<P> = crate::auth::Need<P, VpError>;

/// A JSON object body, whatever the Content-Type; malformed bodies are 422 as FastAPI does, with
/// `loc` naming the field (`["body", "name"]`) when one is at fault.
pub struct VpJson<T>(pub T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<ApiState> for VpJson<T> {
    type Rejection = VpError;

    async fn from_request(req: Request, _: &ApiState) -> Result<Self, Self::Rejection> {
        Ok(VpJson(input::json_object(req).await?))
    }
}

/// Path parameters; one that is not UTF-8 once percent-decoded is a 422 at `["path", name]`.
pub struct VpPath<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send> FromRequestParts<ApiState> for VpPath<T> {
    type Rejection = VpError;

    async fn from_request_parts(parts: &mut Parts, _: &ApiState) -> Result<Self, Self::Rejection> {
        Ok(VpPath(input::path_params(parts).await?))
    }
}

/// The query string's pairs, strictly percent-decoded; a malformed one is a 422 at
/// `["query", name]`.
pub fn query_pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, VpError> {
    Ok(input::query_pairs(raw)?)
}

/// `limit` and `offset` of a list, within the endpoint's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: usize,
    pub offset: usize,
}

impl Page {
    pub fn parse(raw: Option<&str>, default_limit: usize, max_limit: usize) -> Result<Page, VpError> {
        let mut p = Page { limit: default_limit, offset: 0 };
        for (k, v) in query_pairs(raw)? {
            let bad = |what: &str| VpError::at("query", Error::invalid(k.clone(), what.to_owned()));
            match k.as_str() {
                "limit" => {
                    p.limit = v.parse().map_err(|_| bad("Input should be a valid integer"))?;
                    if p.limit < 1 || p.limit > max_limit {
                        return Err(bad(&format!("Input should be between 1 and {max_limit}")));
                    }
                }
                "offset" => p.offset = v.parse().map_err(|_| bad("Input should be a valid integer, greater than or equal to 0"))?,
                _ => {}
            }
        }
        Ok(p)
    }

    /// `{results, total_result_count, has_previous, has_next}` for `items`.
    pub fn render<T>(self, items: Vec<T>) -> nimbus_api_types::voltage::Page<T> {
        let total = items.len();
        let results: Vec<T> = items.into_iter().skip(self.offset).take(self.limit).collect();
        nimbus_api_types::voltage::Page {
            results,
            total_result_count: u64::try_from(total).unwrap_or(u64::MAX),
            has_previous: self.offset > 0 && total > 0,
            has_next: self.offset.saturating_add(self.limit) < total,
        }
    }
}
