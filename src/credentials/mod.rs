//! Upstream credentials behind one interface: "give me what to attach to this request" and
//! "this is what the upstream said about it".
//!
//! [`Credential::lease`] returns a [`Lease`]: the secret, where it goes ([`Placement`]) and the
//! generation it came from. [`Credential::report`] tells the credential how the upstream answered
//! (a 401 may invalidate that generation, a 429 may cool a pool member down) and says whether one
//! retry with a fresh lease makes sense. Kinds: static keys today; expiring and pooled kinds plug
//! in here without the proxy changing. Secrets stay inside [`Lease`] and are written only onto the
//! outgoing request.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{CredentialConfig, Placement};
use crate::error::ApiError;
use crate::secret::{EnvSource, Secret};

/// How the upstream answered a request made with a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Unauthorized,
    Forbidden,
    RateLimited(Option<Duration>),
}

/// What to attach to one upstream request.
#[derive(Debug, Clone)]
pub struct Lease {
    pub placement: Arc<Placement>,
    pub value: Secret,
    /// Which generation of the credential produced this value; a 401 only invalidates the
    /// generation that got it.
    pub generation: u64,
}

impl Lease {
    pub fn apply(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.placement.as_ref() {
            Placement::Bearer => req.bearer_auth(self.value.expose()),
            Placement::Header(name) => req.header(name.as_str(), self.value.expose()),
            Placement::Query(name) => req.query(&[(name.as_str(), self.value.expose())]),
        }
    }
}

#[derive(Debug)]
enum Kind {
    Static(Lease),
}

/// One named upstream credential.
#[derive(Debug)]
pub struct Credential {
    pub name: String,
    kind: Kind,
}

impl Credential {
    pub fn from_config(
        name: &str,
        cfg: &CredentialConfig,
        env: &dyn EnvSource,
    ) -> Result<Credential, String> {
        let kind = match cfg {
            CredentialConfig::Static { secret, placement } => Kind::Static(Lease {
                placement: Arc::new(placement.clone()),
                value: secret
                    .resolve(env)
                    .map_err(|e| format!("credentials.{name}.secret: {e}"))?,
                generation: 0,
            }),
        };
        Ok(Credential {
            name: name.to_owned(),
            kind,
        })
    }

    /// What to attach to the next request. Never waits in steady state.
    pub async fn lease(&self) -> Result<Lease, ApiError> {
        match &self.kind {
            Kind::Static(l) => Ok(l.clone()),
        }
    }

    /// Record the upstream's answer; true when one retry with a fresh lease may succeed.
    pub fn report(&self, _lease: &Lease, outcome: Outcome) -> bool {
        match &self.kind {
            // A static key cannot renew itself: a 401 goes back to the client.
            Kind::Static(_) => {
                let _ = outcome;
                false
            }
        }
    }
}
