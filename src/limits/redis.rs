//! The Redis backend: limiter state shared by every replica.
//!
//! Each admission is ONE Lua script call ([`ADMIT`]) that checks every limit of the key and the
//! team and, only if all pass, writes them; Redis runs scripts one at a time, so N replicas can
//! never admit N times a limit. Each settlement is one more call ([`SETTLE`]), made in the
//! background after the response. The clock is Redis's own (`TIME`), so replicas with skewed
//! clocks still agree.
//!
//! Keys, under `limits.redis_prefix` and `k:<key id>:` or `t:<team>:`:
//! - `rpm`, `tpm`: the GCRA TAT (Unix microseconds, float), expiring when it is in the past;
//! - `leases`: sorted set of admissions in flight (member: lease id, score: expiry), for
//!   concurrency; a lease whose replica died expires after `limits.lease_ttl`;
//! - `resv` (hash lease -> nano-dollars) and `resv_sum`: budget reservations of those leases;
//! - `spend:<period>`: nano-dollars spent in the period (integer, exact across replicas),
//!   kept 3 days after a daily period and 70 after a monthly one; forever for `none`.
//!
//! Failure policy is the caller's ([`super::Limiter`]): every call here is bounded by
//! `limits.redis_timeout` and returns a [`BackendError`] on any failure. The connection manager
//! reconnects by itself after Redis comes back; scripts are re-sent when Redis lost its script
//! cache. Single Redis (or a primary with replicas) only: the team's and the key's keys are used
//! in one script, which Redis Cluster would refuse across slots. A `rediss://` URL speaks TLS
//! (rustls), with `limits.redis_tls`'s CA bundle and client certificate when given.

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, Script, Value};
use tokio::sync::OnceCell;

use crate::config::RedisTlsConfig;
use crate::secret::EnvSource;

use super::{
    budget, AdmitRequest, BackendError, Decision, LimitKind, RateHeaders, RateInfo, Scope,
    SettleRequest,
};

/// Check every limit of up to two scopes; charge them only if all pass.
///
/// KEYS, six per scope: rpm, tpm, leases, resv, resv_sum, spend.
/// ARGV: lease id, lease ttl (us), tokens, cost (nano-dollars), scope count, then four per
/// scope: rpm, tpm, max concurrent (0 = none), budget (nano-dollars, -1 = none).
/// Returns {admitted 0/1, refusing scope (1-based), refusing limit, retry ms (-1 = never),
/// then six per scope: rpm limit (-1 = none), remaining, reset ms, tpm limit, remaining, reset ms}.
pub const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local id = ARGV[1]
local ttl = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local P = 60000000
local EPS = 0.001

local function remaining(tat, T)
  local free = P - (math.max(tat, now) - now)
  if free <= 0 then return 0 end
  return math.floor((free + EPS) / T)
end

-- GCRA, the same arithmetic as gcra.rs: ok, tat to store, remaining, reset us, retry us (-1 never)
local function gcra(tat, c, limit)
  local T = P / limit
  local base = math.max(tat, now)
  local new = base + c * T
  if new - now <= P + EPS then
    return true, new, remaining(new, T), new - now, 0
  end
  local retry = -1
  if c <= limit then retry = new - now - P end
  return false, base, remaining(base, T), base - now, retry
end

local deny_scope, deny_kind, deny_retry = 0, '', 0
local function deny(i, kind, retry)
  if deny_scope == 0 then deny_scope, deny_kind, deny_retry = i, kind, retry end
end

local out = {}
local writes = {}
for i = 1, n do
  local k = (i - 1) * 6
  local a = 5 + (i - 1) * 4
  local rpm, tpm, conc, budget =
    tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local w = {}
  if conc > 0 or budget >= 0 then
    -- Leases past their TTL belonged to requests whose replica died: release them.
    local expired = redis.call('ZRANGEBYSCORE', KEYS[k + 3], '-inf', now)
    if #expired > 0 then
      for _, m in ipairs(expired) do
        local r = redis.call('HGET', KEYS[k + 4], m)
        if r then
          redis.call('DECRBY', KEYS[k + 5], r)
          redis.call('HDEL', KEYS[k + 4], m)
        end
      end
      redis.call('ZREMRANGEBYSCORE', KEYS[k + 3], '-inf', now)
    end
  end
  if budget >= 0 then
    local spent = tonumber(redis.call('GET', KEYS[k + 6]) or '0')
    local resv = tonumber(redis.call('GET', KEYS[k + 5]) or '0')
    -- budget::admits: money left, and either the estimate fits beside the reservations or no
    -- other request holds any (the only request allowed on the remainder).
    if spent >= budget then
      deny(i, 'budget', -1)
    elseif spent + resv + cost > budget and resv > 0 then
      -- Held by requests in flight: worth retrying in a moment (budget::HELD_RETRY).
      deny(i, 'budget', 1000000)
    end
  end
  local info = {-1, 0, 0, -1, 0, 0}
  if rpm > 0 then
    local ok, tat, rem, reset, retry = gcra(tonumber(redis.call('GET', KEYS[k + 1]) or '0'), 1, rpm)
    info[1], info[2], info[3] = rpm, rem, math.ceil(reset / 1000)
    if ok then w.rpm = tat else deny(i, 'rpm', retry) end
  end
  if tpm > 0 then
    local ok, tat, rem, reset, retry = gcra(tonumber(redis.call('GET', KEYS[k + 2]) or '0'), tokens, tpm)
    info[4], info[5], info[6] = tpm, rem, math.ceil(reset / 1000)
    if ok then w.tpm = tat else deny(i, 'tpm', retry) end
  end
  if conc > 0 and redis.call('ZCARD', KEYS[k + 3]) >= conc then
    deny(i, 'concurrency', 1000000)
  end
  for _, v in ipairs(info) do table.insert(out, v) end
  writes[i] = w
end

local retry_ms = -1
if deny_retry >= 0 then retry_ms = math.ceil(deny_retry / 1000) end
if deny_scope > 0 then
  local head = {0, deny_scope, deny_kind, retry_ms}
  for _, v in ipairs(out) do table.insert(head, v) end
  return head
end

local ttl_ms = math.ceil(ttl / 1000)
for i = 1, n do
  local k = (i - 1) * 6
  local a = 5 + (i - 1) * 4
  local conc, budget = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local w = writes[i]
  if w.rpm then
    redis.call('SET', KEYS[k + 1], string.format('%.3f', w.rpm), 'PX', math.ceil((w.rpm - now) / 1000) + 1000)
  end
  if w.tpm then
    redis.call('SET', KEYS[k + 2], string.format('%.3f', w.tpm), 'PX', math.ceil((w.tpm - now) / 1000) + 1000)
  end
  if conc > 0 or budget >= 0 then
    redis.call('ZADD', KEYS[k + 3], string.format('%.0f', now + ttl), id)
    redis.call('PEXPIRE', KEYS[k + 3], ttl_ms + 1000)
    if budget >= 0 and cost > 0 then
      redis.call('HSET', KEYS[k + 4], id, ARGV[4])
      redis.call('PEXPIRE', KEYS[k + 4], ttl_ms + 1000)
      redis.call('INCRBY', KEYS[k + 5], ARGV[4])
      redis.call('PEXPIRE', KEYS[k + 5], ttl_ms + 1000)
    end
  end
end
local head = {1, 0, '', 0}
for _, v in ipairs(out) do table.insert(head, v) end
return head
"#;

/// Release a lease and its reservation, add the real cost, correct the token limit.
///
/// KEYS, five per scope: tpm, leases, resv, resv_sum, spend.
/// ARGV: lease id, token delta (real - estimated), cost (nano-dollars), scope count, then three
/// per scope: tpm to correct (0 = none), leased (0/1), spend TTL seconds (0 = forever).
pub const SETTLE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local id = ARGV[1]
local delta = tonumber(ARGV[2])
local n = tonumber(ARGV[4])
local P = 60000000
for i = 1, n do
  local k = (i - 1) * 5
  local a = 4 + (i - 1) * 3
  local tpm, leased, ttl = tonumber(ARGV[a + 1]), ARGV[a + 2] == '1', tonumber(ARGV[a + 3])
  if leased and redis.call('ZREM', KEYS[k + 2], id) == 1 then
    local r = redis.call('HGET', KEYS[k + 3], id)
    if r then
      redis.call('DECRBY', KEYS[k + 4], r)
      redis.call('HDEL', KEYS[k + 3], id)
    end
  end
  if ARGV[3] ~= '0' then
    redis.call('INCRBY', KEYS[k + 5], ARGV[3])
    if ttl > 0 then redis.call('EXPIRE', KEYS[k + 5], ttl) end
  end
  if tpm > 0 and delta ~= 0 then
    local tat = tonumber(redis.call('GET', KEYS[k + 1]) or '0')
    local new = tat + delta * (P / tpm)
    if delta < 0 then new = math.max(new, math.min(now, tat)) end
    if new > now then
      redis.call('SET', KEYS[k + 1], string.format('%.3f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
    else
      redis.call('DEL', KEYS[k + 1])
    end
  end
end
return 1
"#;

pub struct RedisLimiter {
    client: Client,
    /// Created on first use (it needs the runtime); reconnects by itself afterwards.
    conn: OnceCell<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    lease_ttl: Duration,
    admit: Script,
    settle: Script,
}

impl RedisLimiter {
    pub fn new(
        url: &str,
        prefix: &str,
        timeout: Duration,
        lease_ttl: Duration,
    ) -> Result<RedisLimiter, String> {
        let client =
            Client::open(url).map_err(|e| format!("limits.redis_url: invalid: {:?}", e.kind()))?;
        Ok(RedisLimiter::with_client(
            client, prefix, timeout, lease_ttl,
        ))
    }

    /// `url` with TLS: a `rediss://` URL gets `tls`'s CA bundle (only those CAs are trusted)
    /// and client certificate; without `tls`, the system's roots. Files are read now.
    pub fn new_tls(
        url: &str,
        tls: &RedisTlsConfig,
        env: &dyn EnvSource,
        prefix: &str,
        timeout: Duration,
        lease_ttl: Duration,
    ) -> Result<RedisLimiter, String> {
        let read = |p: &std::path::Path, field: &str| {
            std::fs::read(p)
                .map_err(|e| format!("limits.redis_tls.{field}: cannot read {}: {e}", p.display()))
        };
        let root_cert = match &tls.ca_file {
            Some(p) => Some(read(p, "ca_file")?),
            None => None,
        };
        let client_tls = match (&tls.client_cert_file, &tls.client_key) {
            (Some(cert), Some(key)) => Some(::redis::ClientTlsConfig {
                client_cert: read(cert, "client_cert_file")?,
                client_key: key
                    .resolve(env)
                    .map_err(|e| format!("limits.redis_tls.client_key: {e}"))?
                    .expose()
                    .as_bytes()
                    .to_vec(),
            }),
            _ => None,
        };
        let certs = ::redis::TlsCertificates {
            client_tls,
            root_cert,
        };
        // The crate's message names what it could not parse, never a key.
        let client =
            Client::build_with_tls(url, certs).map_err(|e| format!("limits.redis_tls: {e}"))?;
        Ok(RedisLimiter::with_client(
            client, prefix, timeout, lease_ttl,
        ))
    }

    fn with_client(
        client: Client,
        prefix: &str,
        timeout: Duration,
        lease_ttl: Duration,
    ) -> RedisLimiter {
        RedisLimiter {
            client,
            conn: OnceCell::new(),
            prefix: prefix.to_owned(),
            timeout,
            lease_ttl,
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
        }
    }

    async fn conn(&self) -> Result<ConnectionManager, BackendError> {
        self.conn
            .get_or_try_init(|| async { bounded_connection(&self.client, self.timeout) })
            .await
            .cloned()
            .map_err(|e| BackendError(format!("redis: {e}")))
    }

    fn key(&self, scope: Scope, id: &str, what: &str) -> String {
        format!("{}{}:{}:{}", self.prefix, scope.tag(), id, what)
    }

    /// Run one script invocation within the timeout.
    async fn run(&self, inv: &::redis::ScriptInvocation<'_>) -> Result<Value, BackendError> {
        let mut conn = self.conn().await?;
        match tokio::time::timeout(self.timeout, inv.invoke_async::<Value>(&mut conn)).await {
            Err(_) => Err(BackendError("redis: timed out".into())),
            Ok(Err(e)) => Err(BackendError(format!("redis: {e}"))),
            Ok(Ok(v)) => Ok(v),
        }
    }

    pub(crate) async fn admit(&self, req: &AdmitRequest) -> Result<Decision, BackendError> {
        let mut inv = self.admit.prepare_invoke();
        for s in &req.scopes {
            for what in ["rpm", "tpm", "leases", "resv", "resv_sum"] {
                inv.key(self.key(s.scope, &s.id, what));
            }
            inv.key(self.key(s.scope, &s.id, &format!("spend:{}", s.period_tag)));
        }
        inv.arg(format!("{:016x}", req.lease_id))
            .arg(self.lease_ttl.as_micros() as u64)
            .arg(req.tokens)
            .arg(req.cost_nanos)
            .arg(req.scopes.len());
        for s in &req.scopes {
            inv.arg(s.limits.requests_per_minute.unwrap_or(0))
                .arg(s.limits.tokens_per_minute.unwrap_or(0))
                .arg(s.limits.max_concurrent.unwrap_or(0))
                .arg(s.budget_nanos.map_or(-1, |b| b.min(i64::MAX as u64) as i64));
        }
        let reply = self.run(&inv).await?;
        parse_admit(&reply, req)
    }

    pub(crate) async fn settle(&self, req: &SettleRequest) -> Result<(), BackendError> {
        let mut inv = self.settle.prepare_invoke();
        let now = budget::unix_now();
        for s in &req.scopes {
            for what in ["tpm", "leases", "resv", "resv_sum"] {
                inv.key(self.key(s.scope, &s.id, what));
            }
            let tag = budget::period_tag(s.period, now);
            inv.key(self.key(s.scope, &s.id, &format!("spend:{tag}")));
        }
        inv.arg(format!("{:016x}", req.lease_id))
            .arg(req.token_delta)
            .arg(req.cost_nanos)
            .arg(req.scopes.len());
        for s in &req.scopes {
            inv.arg(s.tpm.unwrap_or(0))
                .arg(u8::from(s.leased))
                .arg(budget::retention_secs(s.period));
        }
        self.run(&inv).await.map(|_| ())
    }

    /// Spend of `id` in the period `tag`, nano-dollars.
    pub async fn spend(&self, scope: Scope, id: &str, tag: &str) -> Result<u64, BackendError> {
        let mut conn = self.conn().await?;
        let key = self.key(scope, id, &format!("spend:{tag}"));
        let get = ::redis::cmd("GET").arg(key).to_owned();
        match tokio::time::timeout(self.timeout, get.query_async::<Option<u64>>(&mut conn)).await {
            Err(_) => Err(BackendError("redis: timed out".into())),
            Ok(Err(e)) => Err(BackendError(format!("redis: {e}"))),
            Ok(Ok(v)) => Ok(v.unwrap_or(0)),
        }
    }
}

fn int(v: Option<&Value>) -> Result<i64, BackendError> {
    match v {
        Some(Value::Int(i)) => Ok(*i),
        Some(Value::BulkString(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| BackendError("redis: unexpected script reply".into())),
        _ => Err(BackendError("redis: unexpected script reply".into())),
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        _ => String::new(),
    }
}

fn parse_admit(reply: &Value, req: &AdmitRequest) -> Result<Decision, BackendError> {
    let Value::Array(items) = reply else {
        return Err(BackendError("redis: unexpected script reply".into()));
    };
    let mut headers = RateHeaders::default();
    for i in 0..req.scopes.len() {
        let at = |j: usize| int(items.get(4 + i * 6 + j));
        if at(0)? >= 0 {
            headers.add_requests(RateInfo {
                limit: at(0)? as u64,
                remaining: at(1)?.max(0) as u64,
                reset: Duration::from_millis(at(2)?.max(0) as u64),
            });
        }
        if at(3)? >= 0 {
            headers.add_tokens(RateInfo {
                limit: at(3)? as u64,
                remaining: at(4)?.max(0) as u64,
                reset: Duration::from_millis(at(5)?.max(0) as u64),
            });
        }
    }
    if int(items.first())? == 1 {
        return Ok(Decision::Admit(headers));
    }
    let idx = int(items.get(1))?.max(1) as usize - 1;
    let scope = req
        .scopes
        .get(idx)
        .map(|s| s.scope)
        .ok_or_else(|| BackendError("redis: unexpected script reply".into()))?;
    let limit = LimitKind::parse(&text(items.get(2)))
        .ok_or_else(|| BackendError("redis: unexpected script reply".into()))?;
    let retry_ms = int(items.get(3))?;
    Ok(Decision::Deny {
        scope,
        limit,
        retry_after: (retry_ms >= 0).then(|| Duration::from_millis(retry_ms as u64)),
        headers,
    })
}

/// A Redis connection for the request path: it connects on first use, every connect and
/// answer waits at most `timeout`, and it reconnects by itself (one retry, 50–500 ms apart).
/// Shared by the limiter and the response cache's Redis tier.
pub fn bounded_connection(
    client: &Client,
    timeout: Duration,
) -> ::redis::RedisResult<ConnectionManager> {
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client.clone(), cfg)
}
