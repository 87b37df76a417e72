//! Config of teams (`teams:`) and client keys (`keys:`).

use super::*;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeamConfig {
    /// Client-facing models this team may use; `*` for all.
    pub models: Vec<String>,
    pub max_tokens: Option<RangeDefault<u64>>,
    pub temperature: Option<TemperaturePolicy>,
    /// Most messages in one chat request.
    pub max_messages: Option<usize>,
    /// Largest body this team may send (capped by `server.max_body_bytes`).
    pub max_body_bytes: Option<usize>,
    /// Rate, concurrency and budget limits of all the team's keys together
    /// (`requests_per_minute`, `tokens_per_minute`, `max_concurrent`, `budget`).
    #[serde(flatten)]
    pub limits: Limits,
    /// Highest queue priority this team's requests may ask for (`x-tollgate-priority`).
    pub max_priority: Option<Priority>,
    /// This team's use of the response cache (`enabled: false` opts out).
    pub cache: Option<TeamCacheConfig>,
    /// SHA-256 fingerprints (hex, colons allowed) of client certificates that authenticate as
    /// this team on a TLS listener with `server.tls.client_ca_file`, for requests without an
    /// API key.
    pub client_cert_sha256: Vec<String>,
    /// What a translating provider (`anthropic`, `ernie`) does with a top-level request field it
    /// cannot translate: refuse the request (a 400 naming it; the default) or drop the field.
    pub untranslatable_fields: Untranslatable,
}

/// A team's choice for request fields a translating provider cannot translate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Untranslatable {
    /// A 400 naming the field, before anything is sent.
    #[default]
    Refuse,
    /// Send without it; the answer names what was dropped (`x-tollgate-dropped-params`) and the
    /// request log line says so. Only top-level parameters: message content is never dropped.
    Drop,
}

/// A certificate fingerprint as written (`AB:CD:…` or `abcd…`) to its 32 bytes.
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(hex.trim()).ok()?;
    <[u8; 32]>::try_from(bytes.as_slice()).ok()
}

/// Queue priority of a request waiting for an upstream slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    High = 0,
    Normal = 1,
    Low = 2,
}

impl Priority {
    pub fn parse(s: &str) -> Option<Priority> {
        match s.trim().to_ascii_lowercase().as_str() {
            "high" => Some(Priority::High),
            "normal" => Some(Priority::Normal),
            "low" => Some(Priority::Low),
            _ => None,
        }
    }
}

/// A default applied when the client sends nothing, and a cap.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeDefault<T> {
    pub default: Option<T>,
    pub max: Option<T>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemperaturePolicy {
    pub default: Option<f64>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// A display name, used as the key id in logs.
    pub name: String,
    pub team: String,
    /// SHA-256 of the key, hex.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The key itself, as an `${ENV}` or `file:` reference.
    #[serde(default)]
    pub key: Option<SecretRef>,
    /// Limits and budget of this key alone (the team's apply too).
    #[serde(flatten)]
    pub limits: Limits,
}
