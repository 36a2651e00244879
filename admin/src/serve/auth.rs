//! Who may call what: the bearer tokens (one bare token, or named ones whose names the audit log
//! records), checked in constant time, and the two middlewares — reads (only with
//! `auth_reads`) and writes (always; refused outright when no token is configured).

use super::http::ApiError;
use super::state::AdminState;
use axum::extract::{Request, State as Ext};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Who sent a request, as the audit log names them: the name of the token it carried.
#[derive(Clone, Debug)]
pub(crate) struct Identity(pub String);

/// The name of the token the request carries: `token` for `Options::token`, else the name of
/// the matching `Options::tokens` entry. Every token is compared, matching or not.
fn identify(headers: &HeaderMap, options: &super::Options) -> Option<String> {
    let single = options.token.iter().map(|t| ("token", t.as_str()));
    let named = options.tokens.iter().map(|(n, t)| (n.as_str(), t.as_str()));
    single.chain(named).fold(None, |found, (name, token)| {
        let ok = token_matches(headers, token);
        found.or(ok.then(|| name.to_owned()))
    })
}

fn has_tokens(options: &super::Options) -> bool {
    options.token.is_some() || !options.tokens.is_empty()
}

/// The credentials of an `Authorization: Bearer ...` header.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        // The scheme is case-insensitive (RFC 9110, 11.1): `bearer` and `BEARER` too.
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, credentials)| credentials.trim())
}

/// Constant-time comparison: a token must not leak through timing.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn token_matches(headers: &HeaderMap, token: &str) -> bool {
    bearer(headers).is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

/// Whether the request carries an operator's token (the bare one or a named one).
pub(super) fn is_operator(headers: &HeaderMap, options: &super::Options) -> bool {
    identify(headers, options).is_some()
}

pub(super) async fn auth_reads(Ext(state): Ext<AdminState>, req: Request, next: Next) -> Response {
    let options = state.options();
    match (has_tokens(options), options.auth_reads) {
        (true, true) if identify(req.headers(), options).is_none() => {
            ApiError::new(StatusCode::UNAUTHORIZED, "a valid bearer token is required")
                .into_response()
        }
        // Reads must be authenticated but there is no token to check against: fail closed.
        (false, true) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "reads require a token, and the server has none configured (--token-file)",
        )
        .into_response(),
        _ => next.run(req).await,
    }
}

pub(super) async fn auth_writes(
    Ext(state): Ext<AdminState>,
    mut req: Request,
    next: Next,
) -> Response {
    let options = state.options();
    if !has_tokens(options) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "changes are disabled: the server has no token configured (--token-file)",
        )
        .into_response();
    }
    match identify(req.headers(), options) {
        None => ApiError::new(StatusCode::UNAUTHORIZED, "a valid bearer token is required")
            .into_response(),
        Some(name) => {
            req.extensions_mut().insert(Identity(name));
            next.run(req).await
        }
    }
}
