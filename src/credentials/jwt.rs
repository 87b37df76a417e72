//! Self-signed HS256 JWTs from an `id.secret` API key (Zhipu GLM style).
//!
//! Each upstream request carries a token with the claims `api_key` (the id), `exp` and
//! `timestamp` (both in milliseconds since the Unix epoch, as Zhipu's SDKs write them) and the
//! header `{"alg":"HS256","sign_type":"SIGN"}`, signed with the secret half of the key. The token
//! is cached and re-signed `renew_margin` (at most half the ttl) before `exp`; signing takes
//! microseconds and happens inline, so there is no background task. A 401 on the current token
//! re-signs once. Only the monotonic clock decides when to re-sign; the wall clock only goes into
//! the claims.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::time::Instant;

use super::{Lease, Outcome, Placed, Retry, View};
use crate::config::{JwtConfig, Placement};
use crate::error::ApiError;
use crate::secret::{EnvSource, Secret};
use crate::telemetry::names;

struct Signed {
    value: Secret,
    /// The value as the request carries it, built once when signed.
    placed: Placed,
    generation: u64,
    renew_at: Instant,
    expires_at: Instant,
}

pub struct Jwt {
    name: Arc<str>,
    id: String,
    secret: Secret,
    ttl: Duration,
    margin: Duration,
    placement: Arc<Placement>,
    current: ArcSwapOption<Signed>,
    /// Serializes re-signing so concurrent requests sign once.
    signing: Mutex<()>,
    bad_generation: AtomicU64,
    next_generation: AtomicU64,
    served: AtomicU64,
    renewals: AtomicU64,
}

/// Sign one Zhipu-style token; `now_ms` is Unix milliseconds.
pub fn sign(id: &str, secret: &str, now_ms: u128, ttl: Duration) -> Result<String, String> {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","sign_type":"SIGN"}"#);
    let claims = serde_json::json!({
        "api_key": id,
        "exp": now_ms + ttl.as_millis(),
        "timestamp": now_ms,
    });
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string().as_bytes());
    let input = format!("{header}.{payload}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|_| "invalid HMAC key".to_owned())?;
    mac.update(input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    Ok(format!("{input}.{sig}"))
}

/// Verify a token made by [`sign`] (for mocks and tests): signature, `api_key` and `exp` in the
/// future. Returns the claims.
pub fn verify(token: &str, id: &str, secret: &str, now_ms: u128) -> Option<serde_json::Value> {
    let (input, sig) = token.rsplit_once('.')?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(input.as_bytes());
    mac.verify_slice(&URL_SAFE_NO_PAD.decode(sig).ok()?).ok()?;
    let (_, payload) = input.split_once('.')?;
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    claims.get("timestamp")?.as_u64()?;
    (claims.get("api_key")?.as_str()? == id && u128::from(exp) > now_ms).then_some(claims)
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

impl Jwt {
    pub fn from_config(name: &str, c: &JwtConfig, env: &dyn EnvSource) -> Result<Jwt, String> {
        let key = c
            .api_key
            .resolve(env)
            .map_err(|e| format!("credentials.{name}.api_key: {e}"))?;
        let (id, secret) = key
            .expose()
            .split_once('.')
            .filter(|(i, s)| !i.is_empty() && !s.is_empty())
            .ok_or_else(|| format!("credentials.{name}.api_key: must have the form id.secret"))?;
        Ok(Jwt {
            name: Arc::from(name),
            id: id.to_owned(),
            secret: Secret::new(secret),
            ttl: c.ttl.0,
            margin: c.renew_margin.0.min(c.ttl.0 / 2),
            placement: Arc::new(c.placement.clone()),
            current: ArcSwapOption::empty(),
            signing: Mutex::new(()),
            bad_generation: AtomicU64::new(0),
            next_generation: AtomicU64::new(0),
            served: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
        })
    }

    fn usable(&self, now: Instant) -> Option<Arc<Signed>> {
        self.current.load_full().filter(|s| {
            now < s.renew_at && s.generation > self.bad_generation.load(Ordering::Acquire)
        })
    }

    pub fn lease(&self) -> Result<Lease, ApiError> {
        let now = Instant::now();
        let signed = match self.usable(now) {
            Some(s) => s,
            None => {
                let _guard = self.signing.lock().map_err(|_| ApiError::Internal)?;
                match self.usable(now) {
                    Some(s) => s,
                    None => self.resign(now)?,
                }
            }
        };
        self.served.fetch_add(1, Ordering::Relaxed);
        Ok(Lease::prepared(
            self.placement.clone(),
            signed.value.clone(),
            signed.placed.clone(),
            signed.generation,
        ))
    }

    fn resign(&self, now: Instant) -> Result<Arc<Signed>, ApiError> {
        let token = sign(&self.id, self.secret.expose(), now_ms(), self.ttl).map_err(|_| {
            ApiError::CredentialUnavailable {
                message: format!("credential '{}': cannot sign a token", self.name),
                retry_after_secs: 60,
            }
        })?;
        let generation = self.next_generation.fetch_add(1, Ordering::AcqRel) + 1;
        let value = Secret::new(token);
        let signed = Arc::new(Signed {
            placed: Placed::new(&self.placement, &value),
            value,
            generation,
            renew_at: now + self.ttl.saturating_sub(self.margin),
            expires_at: now + self.ttl,
        });
        self.current.store(Some(signed.clone()));
        self.renewals.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(names::CREDENTIAL_RENEWALS, "credential" => self.name.to_string())
            .increment(1);
        Ok(signed)
    }

    pub fn report(&self, lease: &Lease, outcome: Outcome) -> Retry {
        if outcome != Outcome::Unauthorized {
            return Retry::No;
        }
        let current = self.current.load().as_ref().map_or(0, |s| s.generation);
        if lease.generation == current {
            self.bad_generation
                .fetch_max(lease.generation, Ordering::AcqRel);
        }
        metrics::counter!(names::CREDENTIAL_401_RETRIES, "credential" => self.name.to_string())
            .increment(1);
        Retry::Renewed
    }

    pub fn view(&self) -> View {
        let now = Instant::now();
        let cur = self.current.load_full();
        View {
            kind: "jwt",
            state: "valid",
            fingerprint: cur.as_ref().map(|s| s.value.fingerprint()),
            expires_in_secs: cur
                .as_ref()
                .map(|s| s.expires_at.saturating_duration_since(now).as_secs_f64()),
            requests_served: self.served.load(Ordering::Relaxed),
            renewals: Some(self.renewals.load(Ordering::Relaxed)),
            ..View::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;
    use crate::secret::SecretRef;
    use std::collections::HashMap;

    fn jwt(ttl: u64) -> Jwt {
        let cfg = JwtConfig {
            api_key: SecretRef::literal("myid.mysecret"),
            ttl: Dur(Duration::from_secs(ttl)),
            renew_margin: Dur(Duration::from_secs(60)),
            placement: Placement::Bearer,
        };
        match Jwt::from_config("z", &cfg, &HashMap::new()) {
            Ok(j) => j,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn signs_zhipu_style_tokens_that_verify() {
        let t = sign(
            "myid",
            "mysecret",
            1_700_000_000_000,
            Duration::from_secs(60),
        )
        .unwrap_or_default();
        let claims = verify(&t, "myid", "mysecret", 1_700_000_000_000);
        let Some(c) = claims else {
            panic!("does not verify: {t}")
        };
        assert_eq!(c["exp"], 1_700_000_060_000u64);
        assert_eq!(c["timestamp"], 1_700_000_000_000u64);
        assert!(verify(&t, "myid", "other", 1_700_000_000_000).is_none());
        assert!(verify(&t, "myid", "mysecret", 1_700_000_060_001).is_none());
        let header = t.split('.').next().unwrap_or_default();
        let header = URL_SAFE_NO_PAD.decode(header).unwrap_or_default();
        assert_eq!(header, br#"{"alg":"HS256","sign_type":"SIGN"}"#);
    }

    #[tokio::test(start_paused = true)]
    async fn cached_then_resigned_ahead_of_exp() {
        let j = jwt(120);
        let a = j.lease().map(|l| l.generation).ok();
        let b = j.lease().map(|l| l.generation).ok();
        assert_eq!((a, b), (Some(1), Some(1)));
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert_eq!(j.lease().map(|l| l.generation).ok(), Some(1));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(j.lease().map(|l| l.generation).ok(), Some(2));
    }

    /// The `Authorization` value is built when the token is signed: every lease of one token
    /// shares its bytes (no formatting per request), and a new token brings a new value.
    #[tokio::test(start_paused = true)]
    async fn leases_share_the_header_built_at_signing() {
        let j = jwt(120);
        let header = |l: &Lease| match &l.placed {
            Placed::Header(n, v) => {
                assert_eq!(n, http::header::AUTHORIZATION);
                assert!(v.is_sensitive());
                assert_eq!(
                    v.as_bytes(),
                    format!("Bearer {}", l.value.expose()).as_bytes()
                );
                v.as_bytes().as_ptr()
            }
            other => panic!("{other:?}"),
        };
        let (Ok(a), Ok(b)) = (j.lease(), j.lease()) else {
            panic!()
        };
        assert_eq!(header(&a), header(&b));
        tokio::time::sleep(Duration::from_secs(61)).await;
        let Ok(c) = j.lease() else { panic!() };
        assert_eq!(c.generation, 2);
        assert_ne!(header(&a), header(&c));
    }

    #[tokio::test(start_paused = true)]
    async fn a_401_resigns_once() {
        let j = jwt(120);
        let Ok(l) = j.lease() else { panic!() };
        assert_eq!(j.report(&l, Outcome::Unauthorized), Retry::Renewed);
        assert_eq!(j.report(&l, Outcome::Unauthorized), Retry::Renewed);
        assert_eq!(j.lease().map(|l| l.generation).ok(), Some(2));
        assert_eq!(j.lease().map(|l| l.generation).ok(), Some(2));
    }
}
