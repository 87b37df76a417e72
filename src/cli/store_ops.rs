//! The store commands (`keys`, `teams`, `usage`): their arguments, and running them against the
//! store named in the config with the admin API's operations. Output: tables on a terminal,
//! JSON with `--json` or when piped ([`super::output`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use crate::config::Config;
use crate::secret::ProcessEnv;

use super::EXIT_CONFIG;

#[derive(clap::Args, Debug)]
pub struct StoreArgs {
    /// The config file whose `store.url` (and teams and models) to use; else $TOLLGATE_CONFIG,
    /// else ./tollgate.yaml.
    #[arg(long, short, env = "TOLLGATE_CONFIG", global = true)]
    pub(super) config: Option<PathBuf>,
    /// Print JSON (the admin API's answer) instead of tables; the default when stdout is not a
    /// terminal.
    #[arg(long, global = true)]
    pub(super) json: bool,
}

#[derive(clap::Args, Debug, Default)]
pub struct LimitArgs {
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<u64>,
    /// Tokens per minute.
    #[arg(long)]
    tpm: Option<u64>,
    /// Requests in flight at once.
    #[arg(long)]
    max_concurrent: Option<u64>,
    /// Spend cap in US dollars per --budget-period.
    #[arg(long)]
    budget_usd: Option<f64>,
    /// daily, monthly or none (the config's words; day, month, total are read too).
    #[arg(long)]
    budget_period: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Make a key; the plaintext is printed once.
    Create {
        /// The team the key belongs to (a config or store team).
        #[arg(long)]
        team: String,
        /// A name to know the key by (logged instead of the key).
        #[arg(long)]
        name: Option<String>,
        /// Comma-separated models, narrowing the team's.
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        /// Lifetime, e.g. 30d, 12h.
        #[arg(long)]
        expires_in: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// List keys (display prefix, never the key).
    List {
        /// Only this team's keys.
        #[arg(long)]
        team: Option<String>,
    },
    /// Revoke a key now.
    Revoke {
        /// The key's id (`key_…`).
        id: String,
    },
    /// Replace a key; the old one keeps working for --grace.
    Rotate {
        /// The key's id (`key_…`).
        id: String,
        /// How long the old key keeps working, e.g. 1h, 7d.
        #[arg(long, default_value = "1h")]
        grace: String,
    },
    /// Change a key's models, limits or budget.
    Set {
        /// The key's id (`key_…`).
        id: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// Comma-separated models, narrowing the team's.
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum TeamsCommand {
    /// Make a store team.
    Create {
        /// The team's name.
        name: String,
        /// Comma-separated models the team may use (`*` for all).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Change a store team's models, limits or budget.
    Set {
        /// The store team's name.
        name: String,
        /// Comma-separated models the team may use (`*` for all).
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// List config and store teams.
    List,
    /// Delete a store team and revoke its keys (its usage rows stay).
    Delete {
        /// The store team's name.
        name: String,
    },
}

pub(super) enum Op {
    Keys(KeysCommand),
    Teams(TeamsCommand),
    Usage(std::collections::HashMap<String, String>),
}

impl LimitArgs {
    fn limits(&self) -> Result<crate::store::Limits, String> {
        Ok(crate::store::Limits {
            requests_per_minute: self.rpm,
            tokens_per_minute: self.tpm,
            max_concurrent: self.max_concurrent,
            budget: self.budget()?,
        })
    }
    /// `--budget-usd` with `--budget-period` (monthly when left out) make one budget.
    fn budget(&self) -> Result<Option<crate::config::BudgetConfig>, String> {
        let period = self
            .budget_period
            .as_deref()
            .map(|p| {
                crate::store::BudgetPeriod::parse(p)
                    .ok_or_else(|| "--budget-period must be daily, monthly or none".to_owned())
            })
            .transpose()?;
        match (self.budget_usd, period) {
            (Some(amount_usd), period) => Ok(Some(crate::config::BudgetConfig {
                amount_usd,
                period: period.unwrap_or_default(),
            })),
            (None, Some(_)) => {
                Err("--budget-period needs --budget-usd (a budget is set whole)".into())
            }
            (None, None) => Ok(None),
        }
    }
    /// Only the flags given are changed.
    fn patch(&self) -> Result<crate::store::records::LimitsPatch, String> {
        Ok(crate::store::records::LimitsPatch {
            requests_per_minute: self.rpm.map(Some),
            tokens_per_minute: self.tpm.map(Some),
            max_concurrent: self.max_concurrent.map(Some),
            budget: self.budget()?.map(Some),
        })
    }
}

/// `30d`, `12h`, `90m`, `45s` as seconds (the config's durations).
fn lifetime_secs(s: &str) -> Result<u64, String> {
    crate::config::Dur::parse(s).map(|d| d.0.as_secs())
}

/// Run a store operation against the store named in `config`; prints JSON.
pub(super) async fn admin_cli(config: &std::path::Path, json: bool, op: Op) -> u8 {
    let cfg = match Config::load(config).and_then(|c| c.validate(&ProcessEnv).map(|_| c)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", config.display());
            return EXIT_CONFIG;
        }
    };
    let Some(store_cfg) = &cfg.store else {
        eprintln!("{}: no store configured (store.url)", config.display());
        return EXIT_CONFIG;
    };
    let url = match store_cfg.connect_url(&ProcessEnv) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("store.url: {e}");
            return EXIT_CONFIG;
        }
    };
    let tls = store_cfg.tls.as_ref();
    let db = match crate::store::Store::connect_tls(url.expose(), 2, tls, &ProcessEnv).await {
        Ok(db) => db,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let actor = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    );
    let result = run_op(&cfg, &db, &actor, op).await;
    db.close().await;
    match result {
        Ok(v) => {
            super::output::print(&v, json);
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_CONFIG
        }
    }
}

async fn run_op(
    cfg: &Config,
    db: &crate::store::Store,
    actor: &str,
    op: Op,
) -> Result<serde_json::Value, String> {
    use crate::admin::ops;
    use crate::store::records::{KeyPatch, NewKey, NewTeam, TeamPatch};
    use serde_json::json;
    let e = |e: ops::OpError| e.to_string();
    Ok(match op {
        Op::Keys(KeysCommand::Create {
            team,
            name,
            models,
            expires_in,
            limits,
        }) => {
            let new = NewKey {
                team,
                name,
                models,
                expires_in_secs: expires_in.as_deref().map(lifetime_secs).transpose()?,
                limits: limits.limits()?,
            };
            ops::create_key(cfg, db, actor, &new).await.map_err(e)?
        }
        Op::Keys(KeysCommand::List { team }) => {
            json!(db
                .list_keys(team.as_deref())
                .await
                .map_err(|x| x.to_string())?)
        }
        Op::Keys(KeysCommand::Revoke { id }) => {
            json!(db.revoke_key(actor, &id).await.map_err(|x| x.to_string())?)
        }
        Op::Keys(KeysCommand::Rotate { id, grace }) => {
            ops::rotate_key(db, actor, &id, Duration::from_secs(lifetime_secs(&grace)?))
                .await
                .map_err(e)?
                .0
        }
        Op::Keys(KeysCommand::Set {
            id,
            name,
            models,
            limits,
        }) => {
            let p = KeyPatch {
                name,
                models: models.map(Some),
                expires_at: None,
                limits: limits.patch()?,
            };
            json!(ops::update_key(cfg, db, actor, &id, &p).await.map_err(e)?)
        }
        Op::Teams(TeamsCommand::Create {
            name,
            models,
            limits,
        }) => {
            let t = NewTeam {
                name,
                models,
                limits: limits.limits()?,
            };
            json!(ops::create_team(cfg, db, actor, &t).await.map_err(e)?)
        }
        Op::Teams(TeamsCommand::Set {
            name,
            models,
            limits,
        }) => {
            let p = TeamPatch {
                models,
                limits: limits.patch()?,
            };
            json!(ops::update_team(cfg, db, actor, &name, &p)
                .await
                .map_err(e)?)
        }
        Op::Teams(TeamsCommand::Delete { name }) => {
            ops::delete_team(cfg, db, actor, &name).await.map_err(e)?
        }
        Op::Teams(TeamsCommand::List) => json!(ops::list_teams(cfg, db).await.map_err(e)?),
        Op::Usage(q) => {
            let f = crate::admin::usage_filter(&q).map_err(|e| e.to_string())?;
            json!(db.query_usage(&f).await.map_err(|x| x.to_string())?)
        }
    })
}
