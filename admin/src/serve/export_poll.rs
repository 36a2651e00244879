//! `GET /v1/export.csv`: the export with its ETag, answered at once or long-polled — held until
//! the export changes (`?wait=` or RFC 7240's `Prefer: wait=`) — the way the gateways fetch it.

use super::http::ApiError;
use super::state::{AdminState, Snapshot};
use axum::extract::{Query, State as Ext};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Whether an `If-None-Match` value matches `etag` (weak comparison, as RFC 9110 asks for
/// If-None-Match; `*` matches anything).
pub(super) fn none_match(header: Option<&str>, etag: &str) -> bool {
    let Some(h) = header else { return false };
    h.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

#[derive(Deserialize)]
pub(super) struct ExportQuery {
    wait: Option<String>,
    /// Only this location's rows (those whose VIP is one of its IP-label addresses).
    location: Option<String>,
}

/// The export a request asked for in `snap`: (CSV, ETag) of the whole cloud or of one
/// location; 404 for an unknown location, 409 for a cloud-wide export that fwmarks spanning
/// locations rule out (docs/catalog.md, "Locations").
fn view(snap: &Snapshot, location: Option<&str>) -> Result<(axum::body::Bytes, String), ApiError> {
    match location {
        None => match &snap.refused {
            Some(why) => Err(ApiError::new(StatusCode::CONFLICT, why.clone())),
            None => Ok((snap.csv.clone(), snap.etag.clone())),
        },
        Some(name) => snap
            .locations
            .get(name)
            .map(|l| (l.csv.clone(), l.etag.clone()))
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no location {name:?}"))),
    }
}

pub(super) fn not_modified(etag: &str) -> Response {
    let mut r = StatusCode::NOT_MODIFIED.into_response();
    if let Ok(v) = HeaderValue::from_str(etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

fn csv_response((csv, etag): &(axum::body::Bytes, String)) -> Response {
    let mut r = (StatusCode::OK, csv.clone()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    r
}

/// `GET /v1/export.csv[?wait=30s]`. With `If-None-Match` equal to the current ETag: 304 at
/// once, or — with `wait` — as soon as the export changes (200) or at the timeout (304).
pub(super) async fn export(
    Ext(state): Ext<AdminState>,
    Query(q): Query<ExportQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let inm = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // `?wait=30s`, or RFC 7240's `Prefer: wait=30` (seconds) when there is no query.
    let requested = match &q.wait {
        Some(w) => Some(parse_wait(w).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("wait: expected a duration such as 30s, 500ms or 30, found {w:?}: {e}"),
            )
        })?),
        None => prefer_wait(&headers),
    };
    let wait = requested
        .unwrap_or(Duration::ZERO)
        .min(state.options().max_wait);
    // Subscribe before looking, so a change between the look and the wait is not missed.
    let mut rx = state.subscribe();
    let location = q.location.as_deref();
    let snap = rx.borrow_and_update().clone();
    let seen = view(&snap, location)?;
    if wait.is_zero() {
        return Ok(if none_match(inm.as_deref(), &seen.1) {
            not_modified(&seen.1)
        } else {
            csv_response(&seen)
        });
    }
    let Ok(_permit) = state.waiters().clone().try_acquire_owned() else {
        // Too many held polls: answer now, without Preference-Applied, so the client falls
        // back to its poll interval instead of coming straight back.
        return Ok(if none_match(inm.as_deref(), &seen.1) {
            not_modified(&seen.1)
        } else {
            csv_response(&seen)
        });
    };
    // The server long-polls: say so (RFC 7240), so a client can tell a 200 after a hold from
    // one at once and poll again immediately.
    let applied = |mut r: Response| {
        if let Ok(v) = HeaderValue::from_str(&format!("wait={}", wait.as_secs().max(1))) {
            r.headers_mut().insert("preference-applied", v);
        }
        r
    };
    if !none_match(inm.as_deref(), &seen.1) {
        return Ok(applied(csv_response(&seen)));
    }
    let mut shutdown = state.shutdown_signal();
    let deadline = tokio::time::Instant::now() + wait;
    // A per-location poll wakes only when its own export changes: other snapshots (another
    // location's drain) leave its ETag as it was and the hold goes on.
    let mut current = seen;
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let snap: Arc<Snapshot> = rx.borrow_and_update().clone();
                // A location removed meanwhile (a hand edit), or the cloud-wide export now
                // refused: hold on; the next poll gets the 404 or 409.
                let Ok(now) = view(&snap, location) else { continue };
                current = now;
                if !none_match(inm.as_deref(), &current.1) {
                    return Ok(applied(csv_response(&current)));
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    Ok(applied(not_modified(&current.1)))
}

/// `?wait=`: humantime's grammar (`30s`, `500ms`, `2m`, `1m 30s`), as everywhere in portcullis,
/// plus plain seconds (`30`). humantime refuses a number without a unit, but docs/admin-api.yaml
/// has promised plain seconds since the first version (and `Prefer: wait=` is seconds too), so
/// that one spelling is kept here explicitly.
pub(super) fn parse_wait(text: &str) -> Result<Duration, humantime::DurationError> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(secs) = text.parse::<u64>() {
            return Ok(Duration::from_secs(secs));
        }
    }
    humantime::parse_duration(text)
}

/// `Prefer: wait=N` (seconds, RFC 7240), among other preferences.
fn prefer_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .find_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            (k.trim().eq_ignore_ascii_case("wait"))
                .then(|| v.trim().trim_matches('"').parse::<u64>().ok())
                .flatten()
                .map(Duration::from_secs)
        })
}

#[cfg(test)]
mod tests {
    use super::{none_match, parse_wait};
    use std::time::Duration;

    #[test]
    fn if_none_match_forms() {
        assert!(none_match(Some("\"a\""), "\"a\""));
        assert!(none_match(Some("W/\"a\""), "\"a\""));
        assert!(none_match(Some("\"b\", \"a\""), "\"a\""));
        assert!(none_match(Some("*"), "\"a\""));
        assert!(!none_match(Some("\"b\""), "\"a\""));
        assert!(!none_match(None, "\"a\""));
    }

    #[test]
    fn wait_takes_humantime_and_plain_seconds() {
        assert_eq!(parse_wait("30s").ok(), Some(Duration::from_secs(30)));
        assert_eq!(parse_wait("500ms").ok(), Some(Duration::from_millis(500)));
        assert_eq!(parse_wait("30000ms").ok(), Some(Duration::from_secs(30)));
        assert_eq!(parse_wait("2m").ok(), Some(Duration::from_secs(120)));
        assert_eq!(parse_wait("1m 30s").ok(), Some(Duration::from_secs(90)));
        // Plain seconds: documented in docs/admin-api.yaml, refused by humantime alone.
        assert_eq!(parse_wait("30").ok(), Some(Duration::from_secs(30)));
        assert_eq!(parse_wait(" 30 ").ok(), Some(Duration::from_secs(30)));
        assert!(humantime::parse_duration("30").is_err());
        assert!(parse_wait("-1s").is_err());
        assert!(parse_wait("").is_err());
        assert!(parse_wait("soon").is_err());
    }
}
