//! Secrets: values that must never reach a log line, an error message or a metric label.
//!
//! [`Secret`] prints as `***` in `Debug`/`Display`; the value is reached only through
//! [`Secret::expose`]. [`SecretRef`] is what the config file holds: `${ENV_VAR}`, `file:/path`
//! or (discouraged, warned about by `check-config`) a literal. Resolution goes through an
//! [`EnvSource`] so tests can fake the environment without `set_var`.

use std::collections::HashMap;
use std::fmt;

use sha2::{Digest, Sha256};

/// Shared, so that handing a credential to a request (a lease) copies no bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(std::sync::Arc<str>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(std::sync::Arc::from(value.into()))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// A short, stable, non-reversible id for logs and admin views: the first 8 hex digits of
    /// the SHA-256 of the value.
    pub fn fingerprint(&self) -> String {
        short_hash(&self.0)
    }
}

/// First 8 hex digits of SHA-256.
pub fn short_hash(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    hex::encode(&digest[..4])
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where environment variables come from: the process environment, or a map in tests.
pub trait EnvSource: Send + Sync {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;
impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvSource for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// A secret as written in the config: a reference to resolve, or a literal.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretRef(String);

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_reference() {
            write!(f, "{}", self.0)
        } else {
            f.write_str("***")
        }
    }
}

impl SecretRef {
    pub fn literal(value: impl Into<String>) -> Self {
        SecretRef(value.into())
    }

    /// `${NAME}` or `file:PATH`.
    pub fn is_reference(&self) -> bool {
        self.env_name().is_some() || self.0.starts_with("file:")
    }

    fn env_name(&self) -> Option<&str> {
        self.0.strip_prefix("${").and_then(|s| s.strip_suffix('}'))
    }

    /// Resolve to the secret value. The error message names the variable or file, never a value.
    pub fn resolve(&self, env: &dyn EnvSource) -> Result<Secret, String> {
        if let Some(name) = self.env_name() {
            return match env.var(name) {
                Some(v) if !v.is_empty() => Ok(Secret::new(v)),
                Some(_) => Err(format!("environment variable {name} is empty")),
                None => Err(format!("environment variable {name} is not set")),
            };
        }
        if let Some(path) = self.0.strip_prefix("file:") {
            return match std::fs::read_to_string(path) {
                Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
                Ok(_) => Err(format!("secret file {path} is empty")),
                Err(e) => Err(format!("cannot read secret file {path}: {e}")),
            };
        }
        if self.0.is_empty() {
            return Err("secret is empty".into());
        }
        Ok(Secret::new(self.0.as_str()))
    }
}

/// SHA-256 of a client key: the only form in which keys are stored or compared.
pub fn hash_key(key: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("sk-very-secret");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(format!("{:?}", SecretRef::literal("sk-x")), "***");
    }

    #[test]
    fn env_reference_resolves_through_the_source() {
        let env: HashMap<String, String> = [("K".to_string(), "v1".to_string())].into();
        let r: SecretRef = serde_json::from_str("\"${K}\"").unwrap_or(SecretRef::literal(""));
        assert_eq!(
            r.resolve(&env).map(|s| s.expose().to_owned()),
            Ok("v1".into())
        );
        let missing: SecretRef =
            serde_json::from_str("\"${NOPE}\"").unwrap_or(SecretRef::literal(""));
        assert_eq!(
            missing.resolve(&env).err(),
            Some("environment variable NOPE is not set".into())
        );
    }
}
