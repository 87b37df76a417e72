//! The mock upstream's Azure OpenAI mode ([`super::MockUpstream::set_azure`]): requests must come
//! as Azure's REST API wants them, `POST /openai/deployments/{deployment}/{chat/completions|
//! completions|embeddings}?api-version=…` with an `api-key` header or an Entra ID bearer token,
//! and are answered OpenAI-shaped with the deployment's model name in `model`, as Azure does.
//! Refusals have Azure's shapes (`{"error":{"code","message"}}`, no `type`): an unknown path or an
//! unsupported or missing `api-version` is 404 `Resource not found`, a missing or wrong key 401,
//! an unknown deployment 404 `DeploymentNotFound`. The mock's fault knobs apply before any of it.

use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use super::{bearer_token, form_get, AuthCheck};

/// What the fake Azure resource accepts.
#[derive(Debug, Clone)]
pub struct AzureFake {
    /// `api-version` values served.
    pub api_versions: Vec<String>,
    /// Deployments: (name, the model its answers carry).
    pub deployments: Vec<(String, String)>,
    /// The resource key the `api-key` header must carry; `None`: any non-empty key.
    pub api_key: Option<String>,
}

impl AzureFake {
    /// One deployment serving `model`, one api-version, one key.
    pub fn new(deployment: &str, model: &str, api_version: &str, api_key: &str) -> AzureFake {
        AzureFake {
            api_versions: vec![api_version.to_owned()],
            deployments: vec![(deployment.to_owned(), model.to_owned())],
            api_key: Some(api_key.to_owned()),
        }
    }

    /// The OpenAI path a request stands for and the model its answer names; or Azure's refusal.
    /// A bearer token is checked by `bearer` (the mock's auth check) when there is one.
    pub(super) fn admit(
        &self,
        headers: &HeaderMap,
        path: &str,
        query: Option<&str>,
        bearer: Option<&AuthCheck>,
    ) -> Result<(String, String), (StatusCode, Value)> {
        let not_found = || {
            (
                StatusCode::NOT_FOUND,
                json!({"error": {"code": "404", "message": "Resource not found"}}),
            )
        };
        let rest = path
            .strip_prefix("/openai/deployments/")
            .ok_or_else(not_found)?;
        let (deployment, endpoint) = rest.split_once('/').ok_or_else(not_found)?;
        if !matches!(endpoint, "chat/completions" | "completions" | "embeddings") {
            return Err(not_found());
        }
        let version = query.and_then(|q| form_get(q, "api-version"));
        if !version.is_some_and(|v| self.api_versions.contains(&v)) {
            return Err(not_found());
        }
        let key = headers.get("api-key").and_then(|v| v.to_str().ok());
        let authorized = match (key, bearer_token(headers)) {
            (Some(k), _) => !k.is_empty() && self.api_key.as_deref().is_none_or(|want| want == k),
            (None, Some(_)) => bearer.is_none_or(|check| check(headers, query)),
            (None, None) => false,
        };
        if !authorized {
            return Err((
                StatusCode::UNAUTHORIZED,
                json!({"error": {"code": "401", "message": "Access denied due to invalid \
                    subscription key or wrong API endpoint. Make sure to provide a valid key \
                    for an active subscription and use a correct regional API endpoint for \
                    your resource."}}),
            ));
        }
        let Some((_, model)) = self.deployments.iter().find(|(d, _)| d == deployment) else {
            return Err((
                StatusCode::NOT_FOUND,
                json!({"error": {"code": "DeploymentNotFound", "message": "The API deployment \
                    for this resource does not exist. If you created the deployment within the \
                    last 5 minutes, please wait a moment and try again."}}),
            ));
        };
        Ok((format!("/v1/{endpoint}"), model.clone()))
    }
}
