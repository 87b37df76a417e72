//! The `azure` provider: Azure OpenAI. Bodies and answers are OpenAI's, so it is the `openai`
//! provider's sender ([`super::openai::OpenAi`]) with other URIs, made once per upstream:
//! `{base_url}/openai/deployments/{deployment}/{chat/completions|completions|embeddings}` with
//! `api-version` as the query, never part of the path. The deployment is `deployment:`, else the
//! upstream's `model:`. The credential is the lease's, placed as configured: a key in the
//! `api-key` header (`placement: { header: api-key }`, required by the config check for static
//! keys), or an Entra ID token as a bearer from an `oauth2` credential (scope
//! `https://cognitiveservices.azure.com/.default`). It translates nothing else.

use http::Uri;

use super::client::{endpoint_uri, with_query};
use super::openai::{ClientOptions, OpenAi};
use crate::config::UpstreamConfig;
use crate::openai::Endpoint;

/// The sender of azure upstream `name`.
pub fn build(name: &str, u: &UpstreamConfig, connect: ClientOptions) -> Result<OpenAi, String> {
    let path = format!("upstreams.{name}");
    let base = u.base_url.as_deref().unwrap_or_default();
    let deployment = u
        .deployment
        .as_deref()
        .or(u.model.as_deref())
        .ok_or_else(|| format!("{path}.deployment: is required for provider: azure"))?;
    let version = u
        .api_version
        .as_deref()
        .ok_or_else(|| format!("{path}.api_version: is required for provider: azure"))?;
    OpenAi::with_uris(name, |e| uri(base, deployment, version, e), connect)
}

/// One endpoint's URI: the deployment's path, then `?api-version=` (checked safe in a URL by the
/// config, so written as it is).
fn uri(base: &str, deployment: &str, version: &str, e: Endpoint) -> Result<Uri, String> {
    let path = format!("/openai/deployments/{deployment}{}", e.path());
    let uri = endpoint_uri(base, &path)?;
    with_query(&uri, format!("api-version={version}").as_bytes())
        .map_err(|_| format!("base_url {base}: api-version {version} does not fit in a URL"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_in_the_path_api_version_in_the_query() {
        let u = uri(
            "https://r.openai.azure.com/",
            "gpt-4o",
            "2024-10-21",
            Endpoint::Chat,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(u.path(), "/openai/deployments/gpt-4o/chat/completions");
        assert_eq!(u.query(), Some("api-version=2024-10-21"));
        let e = uri(
            "https://r.openai.azure.com",
            "d",
            "v1",
            Endpoint::Embeddings,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            e.to_string(),
            "https://r.openai.azure.com/openai/deployments/d/embeddings?api-version=v1"
        );
        // A query credential (OAuth2 `placement: { query: … }`) goes after it.
        let q = with_query(&e, b"access_token=t").unwrap_or_else(|_| panic!("with_query"));
        assert_eq!(q.query(), Some("api-version=v1&access_token=t"));
    }
}
