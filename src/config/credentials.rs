//! Config of upstream credentials (`credentials:`): static keys, OAuth2, JWT, pools.

use super::*;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum CredentialConfig {
    /// A fixed key.
    Static {
        /// The key, as `${ENV}` or `file:PATH` (a literal is warned about).
        secret: SecretRef,
        /// Where the key goes on upstream requests.
        #[serde(default)]
        placement: Placement,
    },
    /// OAuth2 client credentials (RFC 6749 §4.4), renewed in the background.
    /// (Boxed: by far the largest kind.)
    Oauth2(Box<OAuth2Config>),
    /// A self-signed HS256 JWT from an `id.secret` API key (Zhipu GLM style).
    Jwt(JwtConfig),
    /// Many credentials for one upstream, with rotation, cooldown and a watched token file.
    Pool(PoolConfig),
}

impl CredentialConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            CredentialConfig::Static { .. } => "static",
            CredentialConfig::Oauth2(_) => "oauth2",
            CredentialConfig::Jwt(_) => "jwt",
            CredentialConfig::Pool(_) => "pool",
        }
    }
}

/// How the OAuth2 client authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    #[default]
    Form,
    /// HTTP Basic with the client id and secret (`client_secret_basic`).
    Basic,
    /// `grant_type`, `client_id`, `client_secret` as query parameters (Baidu's AK/SK endpoint).
    Query,
}

/// HTTP method used for the token request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenMethod {
    #[default]
    Post,
    /// Only meaningful with `client_auth: query`.
    Get,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// The token endpoint, e.g. `https://auth.example.com/oauth2/token`.
    pub token_url: String,
    /// The client id (for Baidu: the API key).
    pub client_id: SecretRef,
    /// The client secret (for Baidu: the secret key), as `${ENV}` or `file:PATH`.
    pub client_secret: SecretRef,
    /// Scope to ask for; none sends no `scope`.
    #[serde(default)]
    pub scope: Option<String>,
    /// How the client authenticates to the token endpoint.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Method of the token request.
    #[serde(default)]
    pub token_method: TokenMethod,
    /// Where the access token goes on upstream requests (`bearer`, `{header: name}`,
    /// `{query: access_token}`).
    #[serde(default)]
    pub placement: Placement,
    /// Renew when this much lifetime remains at least (the margin is the larger of this and
    /// `renew_fraction` of the lifetime, capped at half the lifetime).
    #[serde(default = "default_renew_margin")]
    pub renew_margin: Dur,
    /// Renew when this fraction of the lifetime remains at least.
    #[serde(default = "default_renew_fraction")]
    pub renew_fraction: f64,
    /// At most one renewal per this interval, so a short-lived token never causes a loop.
    #[serde(default = "default_min_renew_interval")]
    pub min_renew_interval: Dur,
    /// Lifetime assumed when the token response has no usable `expires_in`.
    #[serde(default = "default_lifetime")]
    pub default_lifetime: Dur,
    /// `expires_in` is clamped to at least this.
    #[serde(default = "default_min_lifetime")]
    pub min_lifetime: Dur,
    /// `expires_in` is clamped to at most this (guards against absurd values).
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime: Dur,
    /// Connect timeout of the token request.
    #[serde(default = "default_token_connect_timeout")]
    pub connect_timeout: Dur,
    /// Total timeout of one token request; a hung token server cannot hang renewals.
    #[serde(default = "default_token_timeout")]
    pub timeout: Dur,
    /// Longest a client request waits for a token when none is usable; then 503.
    #[serde(default = "default_lease_timeout")]
    pub lease_timeout: Dur,
    /// Token requests per renewal round before giving up until the next round.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First backoff step between failed token requests (full jitter, doubling).
    #[serde(default = "default_backoff_base")]
    pub backoff_base: Dur,
    /// Largest backoff between failed token requests, and the pause between failed rounds.
    #[serde(default = "default_backoff_max")]
    pub backoff_max: Dur,
    /// After a permanent failure (`invalid_client`, `invalid_grant`), retry this slowly.
    #[serde(default = "default_failed_retry_interval")]
    pub failed_retry_interval: Dur,
    /// TLS towards the token endpoint (same options as an upstream's `tls:`).
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
    /// The egress proxy for the token endpoint; replaces the gateway-wide `proxy:` (`{}`: direct).
    #[serde(default)]
    pub proxy: Option<ProxyConfig>,
}

fn default_renew_margin() -> Dur {
    secs(60)
}
fn default_renew_fraction() -> f64 {
    0.1
}
fn default_min_renew_interval() -> Dur {
    secs(1)
}
fn default_lifetime() -> Dur {
    secs(3600)
}
fn default_min_lifetime() -> Dur {
    secs(1)
}
fn default_max_lifetime() -> Dur {
    secs(7 * 24 * 3600)
}
fn default_token_connect_timeout() -> Dur {
    secs(5)
}
fn default_token_timeout() -> Dur {
    secs(10)
}
fn default_lease_timeout() -> Dur {
    secs(10)
}
fn default_max_attempts() -> u32 {
    5
}
fn default_backoff_base() -> Dur {
    Dur(Duration::from_millis(200))
}
fn default_backoff_max() -> Dur {
    secs(30)
}
fn default_failed_retry_interval() -> Dur {
    secs(300)
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The API key in the form `id.secret`, as `${ENV}` or `file:PATH`.
    pub api_key: SecretRef,
    /// Lifetime written into each token's `exp`.
    #[serde(default = "default_jwt_ttl")]
    pub ttl: Dur,
    /// Re-sign when this much lifetime remains (clamped to half the ttl).
    #[serde(default = "default_jwt_margin")]
    pub renew_margin: Dur,
    /// Where the token goes on upstream requests.
    #[serde(default)]
    pub placement: Placement,
}

fn default_jwt_ttl() -> Dur {
    secs(1800)
}
fn default_jwt_margin() -> Dur {
    secs(60)
}

/// How a pool picks its next member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    #[default]
    RoundRobin,
    LeastInFlight,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Static tokens listed inline, each an `${ENV}` / `file:` reference (literals are warned).
    #[serde(default)]
    pub tokens: Vec<SecretRef>,
    /// A file with one token per line (blank lines and `#` comments ignored); watched, edits
    /// apply within 2 s.
    #[serde(default)]
    pub file: Option<String>,
    /// Members of any other kind (e.g. several OAuth2 clients). Pools do not nest.
    #[serde(default)]
    pub members: Vec<CredentialConfig>,
    /// Where `tokens` and `file` tokens go on upstream requests.
    #[serde(default)]
    pub placement: Placement,
    /// Round robin (default) or least in flight.
    #[serde(default)]
    pub selection: Selection,
    /// Cooldown after a 429 that carries no `Retry-After`.
    #[serde(default = "default_cooldown")]
    pub default_cooldown: Dur,
}

fn default_cooldown() -> Dur {
    secs(30)
}

/// Where a credential goes on the upstream request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Placement {
    /// `Authorization: Bearer <token>`.
    #[default]
    Bearer,
    /// A named header, e.g. `api-key: <token>`.
    Header(String),
    /// A query parameter, e.g. `?access_token=<token>`.
    Query(String),
}
