//! Console sessions: the web console signs in once with the admin key and then carries a random
//! session token in a cookie instead of the key.
//!
//! What this owns: the bounded, expiring map of sessions, reading the session cookie, and the one
//! check the admin API's gate calls for a request that brings a cookie instead of the admin key
//! ([`authorize`]). The cookie's attributes and the login and logout routes belong to the console
//! (`crate::console`); the admin key itself is checked by [`KeyIndex`].
//!
//! Why it is built this way:
//! - The cookie holds a token of 32 random bytes, never the admin key. The map is keyed by the
//!   token's SHA-256, so a lookup's timing says nothing about a token, and the map holds nothing
//!   a cookie could be made from.
//! - Each session has its own CSRF token (32 random bytes). Every write (a method other than
//!   GET, HEAD, OPTIONS) authenticated by the cookie must carry it in `x-csrf-token`; it is
//!   compared in constant time. With `SameSite=Strict` on the cookie this is two defences: the
//!   browser does not send the cookie on cross-site requests, and a same-site page on another
//!   port (which does get the cookie sent) cannot read the CSRF token.
//! - A session remembers the SHA-256 of the admin key it was opened with: changing the admin key
//!   (a reload) ends every session opened with the old one.
//! - Bounded: at most `max_sessions` (config); a login past it ends the oldest session. A session
//!   ends `session_ttl` after its login, used or not. One short `std` lock, never held across an
//!   `.await`; sessions live in this process only (a restart signs everyone out).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderMap, Method};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::time::Instant;

use super::KeyIndex;
use crate::error::ApiError;

/// The session cookie's name.
pub const COOKIE: &str = "tollgate_console";
/// The header a cookie-authenticated write carries its session's CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

struct Session {
    csrf: String,
    /// SHA-256 of the admin key the session was opened with.
    admin: [u8; 32],
    opened: Instant,
    expires: Instant,
}

/// A session just opened: the token goes into the cookie, the CSRF token to the page.
pub struct Opened {
    pub token: String,
    pub csrf: String,
}

/// A live session as a request sees it.
#[derive(Debug, Clone)]
pub struct Live {
    pub csrf: String,
    pub admin: [u8; 32],
    /// Time left until the session ends.
    pub expires_in: Duration,
}

/// The console's sessions, by SHA-256 of their token.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<[u8; 32], Session>>,
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open a session for the admin key whose SHA-256 is `admin`: expired sessions are dropped,
    /// then the oldest ones while `max` are held.
    pub fn open(&self, admin: [u8; 32], ttl: Duration, max: usize) -> Opened {
        let now = Instant::now();
        let token = random_hex();
        let csrf = random_hex();
        let mut map = self.lock();
        map.retain(|_, s| s.expires > now);
        while map.len() >= max.max(1) {
            let Some(oldest) = map.iter().min_by_key(|(_, s)| s.opened).map(|(k, _)| *k) else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(
            digest(&token),
            Session {
                csrf: csrf.clone(),
                admin,
                opened: now,
                expires: now + ttl,
            },
        );
        Opened { token, csrf }
    }

    /// The live session of `token`; an expired one is dropped.
    pub fn get(&self, token: &str) -> Option<Live> {
        let now = Instant::now();
        let key = digest(token);
        let mut map = self.lock();
        let s = map.get(&key)?;
        if s.expires <= now {
            map.remove(&key);
            return None;
        }
        Some(Live {
            csrf: s.csrf.clone(),
            admin: s.admin,
            expires_in: s.expires - now,
        })
    }

    /// End the session of `token` (logout); nothing if there is none.
    pub fn close(&self, token: &str) {
        self.lock().remove(&digest(token));
    }

    /// Sessions held now, expired ones included until the next login sweeps them.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The session token in the request's `Cookie` headers, if any.
pub fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// Whether the request carries `live`'s CSRF token (constant-time compare).
pub fn csrf_matches(live: &Live, headers: &HeaderMap) -> bool {
    headers
        .get(CSRF_HEADER)
        .is_some_and(|v| bool::from(v.as_bytes().ct_eq(live.csrf.as_bytes())))
}

/// The live session a request's cookie names, still tied to the current admin key; a session of
/// a former admin key is ended here.
pub fn live(sessions: &Sessions, admin: &KeyIndex, headers: &HeaderMap) -> Option<Live> {
    let token = cookie_token(headers)?;
    let live = sessions.get(token)?;
    if admin.lookup(&live.admin).is_none() {
        sessions.close(token);
        return None;
    }
    Some(live)
}

/// Admit an admin API request by its console session cookie: 401 without a live session, 403
/// for a write without the session's CSRF token.
pub fn authorize(
    sessions: &Sessions,
    admin: &KeyIndex,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Live, ApiError> {
    let live = live(sessions, admin, headers).ok_or(ApiError::Unauthorized)?;
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && !csrf_matches(&live, headers) {
        return Err(ApiError::CsrfRejected);
    }
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const TTL: Duration = Duration::from_secs(60);

    fn cookie(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = HeaderValue::from_str(&format!("other=1; {COOKIE}={token}; x=y"))
            .unwrap_or_else(|e| panic!("{e}"));
        h.insert(http::header::COOKIE, v);
        h
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        assert_eq!(cookie_token(&cookie("abc")), Some("abc"));
        assert_eq!(cookie_token(&HeaderMap::new()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_ends_at_its_ttl() {
        let s = Sessions::default();
        let o = s.open([1; 32], TTL, 4);
        assert!(s.get(&o.token).is_some());
        assert!(s.get("not-a-token").is_none());
        tokio::time::advance(TTL - Duration::from_millis(1)).await;
        assert!(s.get(&o.token).is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(s.get(&o.token).is_none());
        assert!(s.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_cap_the_oldest_session_ends() {
        let s = Sessions::default();
        let first = s.open([1; 32], TTL, 2);
        tokio::time::advance(Duration::from_millis(1)).await;
        let second = s.open([1; 32], TTL, 2);
        tokio::time::advance(Duration::from_millis(1)).await;
        let third = s.open([1; 32], TTL, 2);
        assert_eq!(s.len(), 2);
        assert!(s.get(&first.token).is_none());
        assert!(s.get(&second.token).is_some() && s.get(&third.token).is_some());
    }

    #[tokio::test]
    async fn a_write_needs_the_sessions_own_csrf_token() {
        let s = Sessions::default();
        let o = s.open([1; 32], TTL, 4);
        let other = s.open([1; 32], TTL, 4);
        let live = s.get(&o.token).unwrap_or_else(|| panic!("no session"));
        let mut h = cookie(&o.token);
        assert!(!csrf_matches(&live, &h));
        h.insert(
            CSRF_HEADER,
            HeaderValue::from_str(&other.csrf).unwrap_or_else(|e| panic!("{e}")),
        );
        assert!(!csrf_matches(&live, &h), "another session's token");
        h.insert(
            CSRF_HEADER,
            HeaderValue::from_str(&o.csrf).unwrap_or_else(|e| panic!("{e}")),
        );
        assert!(csrf_matches(&live, &h));
        assert_ne!(o.token, o.csrf);
        assert_eq!(o.token.len(), 64);
    }
}
