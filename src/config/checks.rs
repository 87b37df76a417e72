//! Validation that goes beyond the schema: limits, store, keys, secrets, credentials.

use super::*;

impl Config {
    pub(super) fn validate_limits(
        &self,
        env: &dyn EnvSource,
        warnings: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        let l = &self.limits;
        match (&l.backend, &l.redis_url) {
            (LimiterBackend::Redis, None) => {
                return Err(err("limits.redis_url", "is required with backend: redis"))
            }
            (_, Some(r)) => {
                check_secret(r, "limits.redis_url", env, warnings)?;
                let url = r.resolve(env).map_err(|m| err("limits.redis_url", m))?;
                let tls = url.expose().starts_with("rediss://");
                if !tls && !url.expose().starts_with("redis://") {
                    return Err(err(
                        "limits.redis_url",
                        "must start with redis:// or rediss:// (TLS)",
                    ));
                }
                if l.redis_tls.is_some() && !tls {
                    return Err(err("limits.redis_tls", "needs a rediss:// redis_url (TLS)"));
                }
            }
            _ => {}
        }
        if let Some(t) = &l.redis_tls {
            match (&t.client_cert_file, &t.client_key) {
                (Some(_), None) => {
                    return Err(err(
                        "limits.redis_tls.client_key",
                        "is required with client_cert_file",
                    ))
                }
                (None, Some(_)) => {
                    return Err(err(
                        "limits.redis_tls.client_cert_file",
                        "is required with client_key",
                    ))
                }
                (Some(_), Some(k)) => {
                    check_secret(k, "limits.redis_tls.client_key", env, warnings)?
                }
                (None, None) => {}
            }
        }
        if l.redis_timeout.0.is_zero() {
            return Err(err("limits.redis_timeout", "must be greater than 0"));
        }
        if l.lease_ttl.0 < Duration::from_secs(1) {
            return Err(err("limits.lease_ttl", "must be at least 1s"));
        }
        if l.state_flush_interval.0 < Duration::from_millis(10) {
            return Err(err("limits.state_flush_interval", "must be at least 10ms"));
        }
        if l.state_file.is_some() && l.backend == LimiterBackend::Redis {
            warnings.push(
                "limits.state_file: ignored with backend: redis (spend lives in Redis)".into(),
            );
        }
        for (name, p) in &self.prices {
            for (field, v) in [
                ("input_per_million", p.input_per_million),
                ("output_per_million", p.output_per_million),
            ] {
                if !v.is_finite() || v < 0.0 {
                    return Err(err(
                        format!("prices.{name}.{field}"),
                        "must be a number of at least 0",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl StoreConfig {
    pub(super) fn validate(
        &self,
        env: &dyn EnvSource,
        warnings: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        let url = self.url.resolve(env).map_err(|m| err("store.url", m))?;
        let u = url.expose();
        let pg = u.starts_with("postgres:") || u.starts_with("postgresql:");
        if !pg && !u.starts_with("sqlite:") {
            return Err(err("store.url", "must start with sqlite: or postgres:"));
        }
        if pg
            && !self.url.is_reference()
            && u.contains('@')
            && u.split('@')
                .next()
                .is_some_and(|a| a.matches(':').count() > 1)
        {
            warnings.push("store.url: a password written literally in the config; use ${ENV_VAR} or file:PATH".into());
        }
        if self.max_connections == 0 {
            return Err(err("store.max_connections", "must be greater than 0"));
        }
        if let Some(t) = &self.tls {
            if !pg {
                return Err(err("store.tls", "is for a postgres: store.url only"));
            }
            match (&t.client_cert_file, &t.client_key) {
                (Some(_), None) => {
                    return Err(err(
                        "store.tls.client_key",
                        "is required with client_cert_file",
                    ))
                }
                (None, Some(_)) => {
                    return Err(err(
                        "store.tls.client_cert_file",
                        "is required with client_key",
                    ))
                }
                (Some(_), Some(k)) => check_secret(k, "store.tls.client_key", env, warnings)?,
                (None, None) => {}
            }
        }
        let ttl = self.key_cache_ttl.0;
        if ttl.is_zero() || ttl > Duration::from_millis(2500) {
            return Err(err(
                "store.key_cache_ttl",
                "must be above 0 and at most 2.5s (a revoked key must be refused everywhere within 5 s)",
            ));
        }
        let u = &self.usage;
        if u.batch_size == 0 || u.batch_size > 2000 {
            return Err(err("store.usage.batch_size", "must be between 1 and 2000"));
        }
        if u.queue < u.batch_size {
            return Err(err("store.usage.queue", "must be at least batch_size"));
        }
        if u.spill_path.as_os_str().is_empty() {
            return Err(err("store.usage.spill_path", "is required"));
        }
        Ok(())
    }
}

/// Limits are positive when set; budgets are finite and not negative. The one check of a
/// [`Limits`], for the config file and for the store's keys and teams (admin API, CLI).
pub fn check_limits(path: &str, l: &Limits) -> Result<(), ConfigError> {
    for (field, v) in [
        ("requests_per_minute", l.requests_per_minute),
        ("tokens_per_minute", l.tokens_per_minute),
        ("max_concurrent", l.max_concurrent),
    ] {
        if v == Some(0) {
            return Err(err(
                join(path, field),
                "must be greater than 0 (leave it out for no limit)",
            ));
        }
    }
    if let Some(b) = l.budget {
        if !b.amount_usd.is_finite() || b.amount_usd < 0.0 || b.amount_usd > 1e9 {
            return Err(err(
                join(path, "budget.amount_usd"),
                "must be a number from 0 to 1e9",
            ));
        }
    }
    Ok(())
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// A key is given as exactly one of a SHA-256 or a secret reference.
pub(super) fn check_key_source(
    sha256: &Option<String>,
    key: &Option<SecretRef>,
    path: &str,
    env: &dyn EnvSource,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    match (sha256, key) {
        (Some(h), None) => {
            if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(err(format!("{path}.sha256"), "must be 64 hex digits"));
            }
        }
        (None, Some(r)) => check_secret(r, &format!("{path}.key"), env, warnings)?,
        _ => {
            return Err(err(
                path,
                "give exactly one of sha256 (the key's SHA-256, hex) or key (${ENV} or file:)",
            ))
        }
    }
    Ok(())
}

pub(super) fn check_secret(
    r: &SecretRef,
    path: &str,
    env: &dyn EnvSource,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    r.resolve(env).map_err(|m| err(path, m))?;
    if !r.is_reference() {
        warnings.push(format!(
            "{path}: secret written literally in the config; use ${{ENV_VAR}} or file:PATH"
        ));
    }
    Ok(())
}

pub(super) fn check_credential(
    c: &CredentialConfig,
    path: &str,
    env: &dyn EnvSource,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    match c {
        CredentialConfig::Static { secret, placement } => {
            check_secret(secret, &format!("{path}.secret"), env, warnings)?;
            check_placement(placement, &format!("{path}.placement"))?;
        }
        CredentialConfig::Oauth2(o) => {
            let url = reqwest::Url::parse(&o.token_url)
                .map_err(|e| err(format!("{path}.token_url"), format!("invalid URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(err(format!("{path}.token_url"), "must be http or https"));
            }
            check_secret(
                &o.client_id,
                &format!("{path}.client_id"),
                env,
                &mut Vec::new(),
            )?;
            check_secret(
                &o.client_secret,
                &format!("{path}.client_secret"),
                env,
                warnings,
            )?;
            check_placement(&o.placement, &format!("{path}.placement"))?;
            if let Some(t) = &o.tls {
                t.validate(&format!("{path}.tls"), env, warnings)?;
            }
            if let Some(p) = &o.proxy {
                p.validate(&format!("{path}.proxy"), env, warnings)?;
            }
            if o.token_method == TokenMethod::Get && o.client_auth != ClientAuth::Query {
                return Err(err(
                    format!("{path}.token_method"),
                    "get is only allowed with client_auth: query",
                ));
            }
            if !(0.0..1.0).contains(&o.renew_fraction) {
                return Err(err(
                    format!("{path}.renew_fraction"),
                    "must be at least 0 and below 1",
                ));
            }
            if o.max_attempts == 0 {
                return Err(err(format!("{path}.max_attempts"), "must be at least 1"));
            }
            if o.min_lifetime.0.is_zero() || o.min_lifetime.0 > o.max_lifetime.0 {
                return Err(err(
                    format!("{path}.min_lifetime"),
                    "must be above 0 and not above max_lifetime",
                ));
            }
            for (field, d) in [
                ("timeout", o.timeout),
                ("connect_timeout", o.connect_timeout),
                ("lease_timeout", o.lease_timeout),
                ("min_renew_interval", o.min_renew_interval),
                ("backoff_max", o.backoff_max),
                ("default_lifetime", o.default_lifetime),
            ] {
                if d.0.is_zero() {
                    return Err(err(format!("{path}.{field}"), "must be above 0"));
                }
            }
        }
        CredentialConfig::Jwt(j) => {
            let key = j
                .api_key
                .resolve(env)
                .map_err(|m| err(format!("{path}.api_key"), m))?;
            match key.expose().split_once('.') {
                Some((id, secret)) if !id.is_empty() && !secret.is_empty() => {}
                _ => {
                    return Err(err(
                        format!("{path}.api_key"),
                        "must have the form id.secret",
                    ))
                }
            }
            check_secret(&j.api_key, &format!("{path}.api_key"), env, warnings)?;
            if j.ttl.0 < Duration::from_secs(2) {
                return Err(err(format!("{path}.ttl"), "must be at least 2s"));
            }
            check_placement(&j.placement, &format!("{path}.placement"))?;
        }
        CredentialConfig::Pool(p) => {
            if p.tokens.is_empty() && p.file.is_none() && p.members.is_empty() {
                return Err(err(path, "a pool needs tokens, a file or members"));
            }
            for (i, t) in p.tokens.iter().enumerate() {
                check_secret(t, &format!("{path}.tokens[{i}]"), env, warnings)?;
            }
            if let Some(f) = &p.file {
                std::fs::metadata(f)
                    .map_err(|e| err(format!("{path}.file"), format!("cannot read {f}: {e}")))?;
            }
            for (i, m) in p.members.iter().enumerate() {
                let mpath = format!("{path}.members[{i}]");
                if matches!(m, CredentialConfig::Pool(_)) {
                    return Err(err(mpath, "pools do not nest"));
                }
                check_credential(m, &mpath, env, warnings)?;
            }
            check_placement(&p.placement, &format!("{path}.placement"))?;
            if p.default_cooldown.0.is_zero() {
                return Err(err(format!("{path}.default_cooldown"), "must be above 0"));
            }
        }
    }
    Ok(())
}

pub(super) fn check_placement(p: &Placement, path: &str) -> Result<(), ConfigError> {
    match p {
        Placement::Header(h) if http::HeaderName::from_bytes(h.as_bytes()).is_err() => {
            Err(err(path, format!("'{h}' is not a valid header name")))
        }
        Placement::Query(q) if q.is_empty() => Err(err(path, "query parameter name is empty")),
        _ => Ok(()),
    }
}

/// Client headers that may never be forwarded upstream: hop-by-hop headers (they describe this
/// connection, and forwarding them is how framing is desynchronised), and credentials (the
/// upstream gets Tollgate's own credential, never the client's key or cookies).
const NEVER_FORWARDED: &[(&str, &str)] = &[
    ("connection", "hop-by-hop"),
    ("keep-alive", "hop-by-hop"),
    ("proxy-connection", "hop-by-hop"),
    ("transfer-encoding", "hop-by-hop"),
    ("te", "hop-by-hop"),
    ("trailer", "hop-by-hop"),
    ("upgrade", "hop-by-hop"),
    ("content-length", "hop-by-hop"),
    ("host", "hop-by-hop"),
    ("proxy-authorization", "credential"),
    ("authorization", "credential"),
    ("api-key", "credential"),
    ("x-api-key", "credential"),
    ("cookie", "credential"),
];

pub(super) fn check_forward_headers(headers: &[String]) -> Result<(), ConfigError> {
    for (i, h) in headers.iter().enumerate() {
        let path = format!("server.forward_headers[{i}]");
        let lower = h.trim().to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            return Err(err(path, format!("'{h}' is not a header name")));
        }
        if let Some((_, why)) = NEVER_FORWARDED.iter().find(|(n, _)| *n == lower) {
            return Err(err(
                path,
                format!("'{h}' may not be forwarded: it is a {why} header"),
            ));
        }
    }
    Ok(())
}

/// The SHA-256 of a key given as a hex hash or a secret reference, when it can be had.
fn key_sha256(
    sha256: &Option<String>,
    key: &Option<SecretRef>,
    env: &dyn EnvSource,
) -> Option<[u8; 32]> {
    use sha2::Digest;
    match (sha256, key) {
        (Some(h), _) => hex::decode(h.trim()).ok()?.try_into().ok(),
        (None, Some(r)) => {
            Some(sha2::Sha256::digest(r.resolve(env).ok()?.expose().as_bytes()).into())
        }
        (None, None) => None,
    }
}

/// The admin key must not also be a client key: a client key leaking would then open the admin
/// API. Compared by hash, so a `sha256:` client key and a `key:` admin key are compared too.
pub(super) fn check_admin_key_is_not_a_client_key(
    cfg: &Config,
    env: &dyn EnvSource,
) -> Result<(), ConfigError> {
    let Some(admin) = &cfg.admin else {
        return Ok(());
    };
    let Some(admin_hash) = key_sha256(&admin.sha256, &admin.key, env) else {
        return Ok(());
    };
    for (i, k) in cfg.keys.iter().enumerate() {
        if key_sha256(&k.sha256, &k.key, env).is_some_and(|h| h == admin_hash) {
            let field = if admin.key.is_some() {
                "admin.key"
            } else {
                "admin.sha256"
            };
            return Err(err(
                field,
                format!(
                    "is the same key as keys[{i}] ('{}'): the admin key must be its own",
                    k.name
                ),
            ));
        }
    }
    Ok(())
}

/// An `ernie` upstream: its endpoint name (`model:`) goes into the URL path, so it is required
/// and may hold only the characters Baidu's endpoint names use; a `base_url`, when set, is an
/// http(s) URL without a query (the access token is the only query parameter).
pub(super) fn check_ernie(u: &UpstreamConfig, path: &str) -> Result<(), ConfigError> {
    let endpoint_ok = |m: &str| {
        !m.is_empty()
            && m.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    match u.model.as_deref() {
        None => {
            return Err(err(
                format!("{path}.model"),
                "is required for provider ernie: the endpoint name of the chat URL, e.g. \
                 completions or ernie-speed-128k",
            ))
        }
        Some(m) if !endpoint_ok(m) => {
            return Err(err(
                format!("{path}.model"),
                "an ernie endpoint name holds only letters, digits, '-', '_' and '.'",
            ))
        }
        Some(_) => {}
    }
    if let Some(url) = &u.base_url {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| err(format!("{path}.base_url"), format!("invalid URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(err(format!("{path}.base_url"), "must be http or https"));
        }
        if parsed.query().is_some() {
            return Err(err(
                format!("{path}.base_url"),
                "must have no query string: the ernie provider adds access_token itself",
            ));
        }
    }
    Ok(())
}

/// An upstream's `base_url` is a prefix every endpoint path is appended to, so it cannot carry a
/// query string (or a fragment): `https://h/openai?api-version=1` would send
/// `…?api-version=1/chat/completions`. Refused for every provider, saying where the parameter
/// goes instead.
pub(super) fn check_base_url_has_no_query(
    path: &str,
    u: &UpstreamConfig,
) -> Result<(), ConfigError> {
    let Some(url) = &u.base_url else {
        return Ok(());
    };
    let field = format!("{path}.base_url");
    if url.contains('#') {
        return Err(err(field, "must not carry a fragment ('#…')"));
    }
    let Some((_, query)) = url.split_once('?') else {
        return Ok(());
    };
    // Only the parameters' names: their values may be secrets.
    let names: Vec<&str> = query
        .split(['&', ';'])
        .filter_map(|kv| kv.split('=').next())
        .filter(|n| !n.is_empty())
        .collect();
    let instead = if names.iter().any(|n| n.eq_ignore_ascii_case("api-version")) {
        "an Azure OpenAI api-version goes in the upstream's `api_version:` field, with \
         `provider: azure`"
    } else {
        "a key or token goes in a credential with `placement: { query: NAME }` (or \
         `placement: { header: NAME }`)"
    };
    Err(err(
        field,
        format!(
            "must not carry a query string (parameters: {}): Tollgate appends each endpoint's \
             path to base_url, so the path would land inside the query; {instead}",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        ),
    ))
}

/// An `azure` upstream: a base URL, an `api_version`, a deployment (`deployment:` or `model:`),
/// all safe in a URL as written; a static key placed in the `api-key` header (a bearer is an
/// Entra ID token, from `kind: oauth2`). `deployment` and `api_version` belong to `azure` only.
pub(super) fn check_azure(
    path: &str,
    u: &UpstreamConfig,
    credentials: &BTreeMap<String, CredentialConfig>,
) -> Result<(), ConfigError> {
    let safe = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    if u.provider != ProviderKind::Azure {
        for (field, set) in [
            ("deployment", u.deployment.is_some()),
            ("api_version", u.api_version.is_some()),
        ] {
            if set {
                return Err(err(
                    format!("{path}.{field}"),
                    "is for provider: azure only",
                ));
            }
        }
        return Ok(());
    }
    match &u.base_url {
        None => {
            return Err(err(
                format!("{path}.base_url"),
                "is required: https://RESOURCE.openai.azure.com",
            ))
        }
        Some(url) => {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| err(format!("{path}.base_url"), format!("invalid URL: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(err(format!("{path}.base_url"), "must be http or https"));
            }
        }
    }
    match &u.api_version {
        None => {
            return Err(err(
                format!("{path}.api_version"),
                "is required for provider: azure (e.g. 2024-10-21)",
            ))
        }
        Some(v) if !safe(v) => {
            return Err(err(
                format!("{path}.api_version"),
                "must be letters, digits, '-', '_' or '.' (e.g. 2024-10-21)",
            ))
        }
        Some(_) => {}
    }
    match (&u.deployment, &u.model) {
        (Some(d), _) if !safe(d) => {
            return Err(err(
                format!("{path}.deployment"),
                "must be letters, digits, '-', '_' or '.'",
            ))
        }
        (None, Some(m)) if !safe(m) => return Err(err(
            format!("{path}.model"),
            "names the deployment (no deployment: set): must be letters, digits, '-', '_' or '.'",
        )),
        (None, None) => {
            return Err(err(
                format!("{path}.deployment"),
                "is required for provider: azure (or model:, which then names the deployment)",
            ))
        }
        _ => {}
    }
    let Some(name) = &u.credential else {
        return Ok(());
    };
    let bearer_key = match credentials.get(name) {
        Some(CredentialConfig::Static { placement, .. }) => placement == &Placement::Bearer,
        Some(CredentialConfig::Pool(p)) => {
            (!p.tokens.is_empty() || p.file.is_some()) && p.placement == Placement::Bearer
        }
        _ => false,
    };
    if bearer_key {
        return Err(err(
            format!("credentials.{name}.placement"),
            format!(
                "{path} is an azure upstream: its key goes in the api-key header, set \
                 `placement: {{ header: api-key }}` (a bearer token is an Entra ID token: \
                 use kind: oauth2 with scope https://cognitiveservices.azure.com/.default)"
            ),
        ));
    }
    Ok(())
}
