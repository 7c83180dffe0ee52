//! Authentication of agent requests: HMAC over method, path, timestamp,
//! nonce and body hash, with the key derived from the host's secret.
//!
//! A request is refused when its timestamp is more than five minutes from
//! the controller's clock, when its nonce was seen before within that
//! window, or when the signature does not verify. Identity comes from the
//! key: the host id header only says which key to try.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, Method, Uri};
use muster_schemas::protocol::auth::{self, MAX_SKEW_SECS};

use super::cache::CachedHost;
use super::{ApiError, AppState};

/// Nonces seen recently, per host; entries expire once their timestamp
/// falls out of the accepted window, so memory stays bounded by the
/// request rate.
#[derive(Debug, Default)]
pub struct NonceCache {
    seen: Mutex<HashMap<(String, String), i64>>,
}

impl NonceCache {
    /// Records a nonce; false if it was already seen (a replay).
    pub fn insert(&self, host_id: &str, nonce: &str, timestamp: i64, now: i64) -> bool {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.len() > 100_000 {
            seen.retain(|_, expires| *expires > now);
        }
        let key = (host_id.to_string(), nonce.to_string());
        match seen.get(&key) {
            Some(expires) if *expires > now => false,
            _ => {
                seen.insert(key, timestamp + MAX_SKEW_SECS + 1);
                true
            }
        }
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, ApiError> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| ApiError::unauthorized(format!("missing or unreadable `{name}` header")))
}

/// Checks a request's signature and returns the host that sent it.
pub async fn authenticate(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<Arc<CachedHost>, ApiError> {
    let host_id = header(headers, auth::HEADER_HOST)?;
    let timestamp: i64 = header(headers, auth::HEADER_TIMESTAMP)?
        .parse()
        .map_err(|_| ApiError::unauthorized("the timestamp header is not a number"))?;
    let nonce = header(headers, auth::HEADER_NONCE)?;
    let signature = header(headers, auth::HEADER_SIGNATURE)?;
    if (timestamp - now).abs() > MAX_SKEW_SECS {
        return Err(ApiError::unauthorized(
            "request timestamp is more than 5 minutes off: check the host's clock",
        ));
    }
    let nonce_ok = (16..=128).contains(&nonce.len())
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !nonce_ok {
        return Err(ApiError::unauthorized(
            "the nonce must be 16 to 128 letters, digits, `-` or `_`",
        ));
    }
    let host = match state.caches.host(host_id) {
        Some(host) => host,
        None => {
            let record = state
                .store
                .host(host_id)
                .await?
                .ok_or_else(|| ApiError::unauthorized("unknown host or bad signature"))?;
            let host = CachedHost::from_record(&record)
                .ok_or_else(|| ApiError::internal("stored host key is not hex"))?;
            state.caches.put_host(host.clone());
            Arc::new(host)
        }
    };
    let path_and_query = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    if !auth::verify(
        &host.key,
        method.as_str(),
        path_and_query,
        timestamp,
        nonce,
        body,
        signature,
    ) {
        return Err(ApiError::unauthorized("unknown host or bad signature"));
    }
    // Only a verified request may burn a nonce: otherwise anyone could
    // block a host's future nonces by sending them first.
    if !state.nonces.insert(&host.id, nonce, timestamp, now) {
        return Err(ApiError::unauthorized(
            "nonce already used: requests cannot be replayed",
        ));
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_single_use_within_the_window() {
        let cache = NonceCache::default();
        assert!(cache.insert("h", "n1", 1000, 1000));
        assert!(!cache.insert("h", "n1", 1000, 1100));
        assert!(
            cache.insert("other", "n1", 1000, 1100),
            "nonces are per host"
        );
        // After the window, the timestamp check refuses the request anyway,
        // so the entry may go.
        assert!(cache.insert("h", "n1", 1000, 1000 + MAX_SKEW_SECS + 2));
    }
}
