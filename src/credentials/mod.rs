//! Upstream credentials behind one interface: "give me what to attach to this request" and
//! "this is what the upstream said about it".
//!
//! [`Credential::lease`] returns a [`Lease`]: the secret, where it goes ([`Placement`]), the
//! generation it came from and, for pools, which member gave it. [`Credential::report`] tells the
//! credential how the upstream answered and returns a [`Retry`] verdict: a 401 invalidates that
//! generation and asks for one retry with a renewed value ([`Retry::Renewed`]); a 429/401 on a
//! pool member asks for a retry with another member at once ([`Retry::Rotated`]), and cools the
//! member down or disables it only on evidence that the answer is about the member, not about
//! the request (see [`pool`]); a 403 is about the request and changes nothing. The proxy
//! enforces the bounds (one renewal retry, pool-size rotations).
//!
//! Kinds, one file each: static keys (here), [`oauth2`] (background renewal, single flight,
//! backoff), [`jwt`] (self-signed HS256, Zhipu style), [`pool`] (rotation, cooldown, a watched
//! token file). Background tasks are owned through a [`TaskGuard`] and stop when the credential is
//! dropped (config reload). Secrets stay inside [`Lease`] and are written only onto the outgoing
//! request; views and logs carry a fingerprint.

pub mod backoff;
pub mod jwt;
pub mod oauth2;
pub mod pool;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::{CredentialConfig, Placement};
use crate::error::ApiError;
use crate::secret::{EnvSource, Secret};

/// How the upstream answered a request made with a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Unauthorized,
    Forbidden,
    /// A 429: its `Retry-After` (already clamped), and whether the answer itself says the
    /// account is out (the upstream's `x-ratelimit-remaining-*: 0`, `insufficient_quota`)
    /// rather than something about this one request.
    RateLimited {
        after: Option<Duration>,
        account: bool,
    },
}

/// Who a lease serves, so that shared state changes only on evidence from more than one
/// request or tenant: a random id per request and a hash of the caller's team. Set by the proxy
/// on each lease; zero (the default) for leases nobody set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Witness {
    pub request: u64,
    pub tenant: u64,
}

/// 401s from this many different requests, with no success in between, disable a static pool
/// member.
pub const STRIKES_TO_DISABLE: usize = 3;
/// Two 429s (without account evidence) from different tenants within this window are taken as
/// being about the account.
pub const WITNESS_WINDOW: Duration = Duration::from_secs(10);
/// The longest a pool member cools down (or an upstream is marked rate limited) on one 429,
/// whatever its `Retry-After` said: a wrong verdict costs at most this.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(300);

/// What the proxy may do after [`Credential::report`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Give the upstream's answer to the client.
    No,
    /// The credential renewed (or is renewing) itself: retry once with a fresh lease.
    Renewed,
    /// A pool member was cooled down or disabled: retry at once with another member.
    Rotated,
}

/// Which pool member gave a lease, and from which version of the member list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberRef {
    pub list_version: u64,
    pub index: usize,
}

/// Counts a lease as in flight on its pool member until the last clone is dropped.
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(counter: Arc<AtomicUsize>) -> InFlight {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A credential value in the form a request carries it, built once when the value is obtained
/// (config load, token fetch, signing), so a request only clones it: no `Bearer …` formatting,
/// header-name parsing or URL encoding per request.
#[derive(Clone)]
pub enum Placed {
    /// A header (bearer or named), its value marked sensitive so it is never printed.
    Header(http::HeaderName, http::HeaderValue),
    /// `name=value`, form-encoded, for the request URL's query.
    Query(bytes::Bytes),
    /// The value cannot go on a request (not a valid header value or name): nothing is attached.
    Nothing,
}

impl Placed {
    pub fn new(placement: &Placement, value: &Secret) -> Placed {
        let header = |v: &str| {
            let mut v = http::HeaderValue::from_str(v).ok()?;
            v.set_sensitive(true);
            Some(v)
        };
        let placed = match placement {
            Placement::Bearer => header(&format!("Bearer {}", value.expose()))
                .map(|v| Placed::Header(http::header::AUTHORIZATION, v)),
            Placement::Header(name) => http::HeaderName::from_bytes(name.as_bytes())
                .ok()
                .zip(header(value.expose()))
                .map(|(n, v)| Placed::Header(n, v)),
            Placement::Query(name) => {
                let mut pair = form_encode(name);
                pair.push('=');
                pair.push_str(&form_encode(value.expose()));
                Some(Placed::Query(bytes::Bytes::from(pair)))
            }
        };
        placed.unwrap_or(Placed::Nothing)
    }
}

impl std::fmt::Debug for Placed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Placed::Header(..) => "Header(***)",
            Placed::Query(_) => "Query(***)",
            Placed::Nothing => "Nothing",
        })
    }
}

/// `application/x-www-form-urlencoded` bytes of `s`, as a URL query pair is written: ASCII
/// letters, digits and `*-._` as they are, a space as `+`, every other byte `%XX`.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 15)]));
            }
        }
    }
    out
}

/// What to attach to one upstream request.
#[derive(Clone)]
pub struct Lease {
    pub placement: Arc<Placement>,
    pub value: Secret,
    /// The value where the upstream expects it, built with the value (see [`Placed`]).
    pub placed: Placed,
    /// Which generation of the credential produced this value; a 401 only invalidates the
    /// generation that got it.
    pub generation: u64,
    /// The pool member that gave this lease, if it came from a pool.
    pub member: Option<MemberRef>,
    /// The request and tenant this lease serves (set by the proxy).
    pub from: Witness,
    /// Held while the request is in flight (least-in-flight selection).
    in_flight: Option<Arc<InFlight>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("placement", &self.placement)
            .field("value", &self.value)
            .field("generation", &self.generation)
            .field("member", &self.member)
            .finish()
    }
}

impl Lease {
    /// A lease whose placed form is built now: for values made once (static keys, tests).
    pub fn new(placement: Arc<Placement>, value: Secret, generation: u64) -> Lease {
        let placed = Placed::new(&placement, &value);
        Lease::prepared(placement, value, placed, generation)
    }

    /// A lease from a value and the placed form built with it (a cached token).
    pub fn prepared(
        placement: Arc<Placement>,
        value: Secret,
        placed: Placed,
        generation: u64,
    ) -> Lease {
        Lease {
            placement,
            value,
            placed,
            generation,
            member: None,
            from: Witness::default(),
            in_flight: None,
        }
    }
}

/// Aborts a background task when dropped: credentials own their renewal / watch tasks, so a
/// config reload that drops a credential stops its tasks.
pub struct TaskGuard(tokio::task::AbortHandle);

impl TaskGuard {
    pub fn spawn<F>(fut: F) -> TaskGuard
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        TaskGuard(tokio::spawn(fut).abort_handle())
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What `/admin/credentials` shows about one credential or pool member. Never a secret.
#[derive(Debug, Clone, Default, Serialize)]
pub struct View {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub kind: &'static str,
    /// `valid`, `renewing`, `cooling_down`, `disabled`, `failed`, `unavailable`, `pending`.
    pub state: &'static str,
    /// First 8 hex digits of the SHA-256 of the current value.
    pub fingerprint: Option<String>,
    /// Seconds until the current value expires (expiring kinds).
    pub expires_in_secs: Option<f64>,
    /// Unix time (seconds) at which a cooldown ends.
    pub cooling_down_until: Option<u64>,
    pub last_error: Option<String>,
    /// Leases handed out.
    pub requests_served: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewals: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewal_failures: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<View>,
}

/// Unix seconds of a monotonic instant in the future (for display only).
pub(crate) fn unix_at(at: tokio::time::Instant) -> u64 {
    let ahead = at.saturating_duration_since(tokio::time::Instant::now());
    (std::time::SystemTime::now() + ahead)
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A static key with its served counter.
struct StaticKey {
    lease: Lease,
    served: AtomicU64,
}

enum Kind {
    Static(StaticKey),
    OAuth2(oauth2::OAuth2),
    Jwt(jwt::Jwt),
    Pool(pool::Pool),
}

/// One named upstream credential.
pub struct Credential {
    pub name: String,
    kind: Kind,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("kind", &self.kind_label())
            .finish()
    }
}

impl Credential {
    /// `proxy` is the gateway-wide egress proxy, for token endpoints without their own.
    pub fn from_config(
        name: &str,
        cfg: &CredentialConfig,
        env: &dyn EnvSource,
        proxy: Option<&crate::config::ProxyConfig>,
    ) -> Result<Credential, String> {
        let kind = match cfg {
            CredentialConfig::Static { secret, placement } => Kind::Static(StaticKey {
                lease: Lease::new(
                    Arc::new(placement.clone()),
                    secret
                        .resolve(env)
                        .map_err(|e| format!("credentials.{name}.secret: {e}"))?,
                    0,
                ),
                served: AtomicU64::new(0),
            }),
            CredentialConfig::Oauth2(c) => {
                Kind::OAuth2(oauth2::OAuth2::from_config(name, c, env, proxy)?)
            }
            CredentialConfig::Jwt(c) => Kind::Jwt(jwt::Jwt::from_config(name, c, env)?),
            CredentialConfig::Pool(c) => Kind::Pool(pool::Pool::from_config(name, c, env, proxy)?),
        };
        Ok(Credential {
            name: name.to_owned(),
            kind,
        })
    }

    /// A static key (pool members read from a token list).
    pub(crate) fn static_key(name: String, placement: Arc<Placement>, value: Secret) -> Self {
        Credential {
            name,
            kind: Kind::Static(StaticKey {
                lease: Lease::new(placement, value, 0),
                served: AtomicU64::new(0),
            }),
        }
    }

    pub fn kind_label(&self) -> &'static str {
        match &self.kind {
            Kind::Static(_) => "static",
            Kind::OAuth2(_) => "oauth2",
            Kind::Jwt(_) => "jwt",
            Kind::Pool(_) => "pool",
        }
    }

    /// What to attach to the next request. Never waits in steady state.
    pub async fn lease(&self) -> Result<Lease, ApiError> {
        self.lease_avoiding(&[]).await
    }

    /// Like [`Credential::lease`], but a pool prefers members not in `avoid` (those this
    /// request already tried), so a rotation moves on to a member it has not yet heard from.
    pub async fn lease_avoiding(&self, avoid: &[MemberRef]) -> Result<Lease, ApiError> {
        match &self.kind {
            Kind::Static(k) => {
                k.served.fetch_add(1, Ordering::Relaxed);
                Ok(k.lease.clone())
            }
            Kind::OAuth2(o) => o.lease().await,
            Kind::Jwt(j) => j.lease(),
            // Boxed: a pool leases from member credentials (the future is recursive).
            Kind::Pool(p) => Box::pin(p.lease(avoid)).await,
        }
    }

    /// Record the upstream's answer and say whether (and how) to retry.
    pub fn report(&self, lease: &Lease, outcome: Outcome) -> Retry {
        match &self.kind {
            // A static key cannot renew itself: a 401 goes back to the client.
            Kind::Static(_) => Retry::No,
            Kind::OAuth2(o) => o.report(lease, outcome),
            Kind::Jwt(j) => j.report(lease, outcome),
            Kind::Pool(p) => p.report(lease, outcome),
        }
    }

    /// How many times the proxy may rotate to another member for one request.
    pub fn max_rotations(&self) -> usize {
        match &self.kind {
            Kind::Pool(p) => p.size(),
            _ => 0,
        }
    }

    /// Whether a lease right now would not wait (an expiring credential has a usable value).
    pub(crate) fn ready(&self) -> bool {
        match &self.kind {
            Kind::OAuth2(o) => o.ready(),
            _ => true,
        }
    }

    /// Whether a 401 can be answered by renewing this credential.
    pub(crate) fn renewable(&self) -> bool {
        matches!(self.kind, Kind::OAuth2(_) | Kind::Jwt(_))
    }

    /// The admin view: state, expiry, counters, fingerprint; never the secret.
    pub fn view(&self) -> View {
        let mut v = match &self.kind {
            Kind::Static(k) => View {
                kind: "static",
                state: "valid",
                fingerprint: Some(k.lease.value.fingerprint()),
                requests_served: k.served.load(Ordering::Relaxed),
                ..View::default()
            },
            Kind::OAuth2(o) => o.view(),
            Kind::Jwt(j) => j.view(),
            Kind::Pool(p) => p.view(),
        };
        v.name = Some(self.name.clone());
        v
    }

    /// Re-enable a disabled (or cooling) pool member; `Err` names what is wrong.
    pub fn enable_member(&self, index: usize) -> Result<(), String> {
        match &self.kind {
            Kind::Pool(p) => p.enable(index),
            _ => Err(format!("credential '{}' is not a pool", self.name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(p: Placement, v: &str) -> Placed {
        Placed::new(&p, &Secret::new(v))
    }

    #[test]
    fn a_value_is_placed_once_in_the_form_the_request_carries() {
        match placed(Placement::Bearer, "tok") {
            Placed::Header(n, v) => {
                assert_eq!(
                    (n.as_str(), v.as_bytes()),
                    ("authorization", &b"Bearer tok"[..])
                );
                assert!(v.is_sensitive());
            }
            other => panic!("{other:?}"),
        }
        match placed(Placement::Header("Api-Key".into()), "tok") {
            Placed::Header(n, v) => {
                assert_eq!((n.as_str(), v.as_bytes()), ("api-key", &b"tok"[..]));
                assert!(v.is_sensitive());
            }
            other => panic!("{other:?}"),
        }
        match placed(Placement::Query("access token".into()), "a b+c/é~") {
            Placed::Query(q) => assert_eq!(&q[..], b"access+token=a+b%2Bc%2F%C3%A9%7E"),
            other => panic!("{other:?}"),
        }
        // A value no header can carry is not attached (as before), and never printed.
        let bad = placed(Placement::Bearer, "line\nbreak");
        assert!(matches!(bad, Placed::Nothing));
        assert!(!format!("{:?}", placed(Placement::Bearer, "tok")).contains("tok"));
    }
}
