//! Config of the web console (`admin.console`): whether `/console` is served, and how long and
//! how many of its login sessions live.

use super::*;

/// The web console (`/console`), behind the admin key. See docs/CONSOLE.md.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve `/console`. Off: every `/console` path is an unknown route, as `/admin` is
    /// without an admin key.
    pub enabled: bool,
    /// A session ends this long after its login, used or not (between 1s and 7 days).
    pub session_ttl: Dur,
    /// Sessions held at once (memory is bounded); a login past it ends the oldest session.
    pub max_sessions: usize,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: false,
            session_ttl: secs(8 * 3600),
            max_sessions: 64,
        }
    }
}

impl ConsoleConfig {
    /// Bounds of `session_ttl` and `max_sessions`, named by their field paths.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let ttl = self.session_ttl.0;
        if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(7 * 86_400) {
            return Err(err(
                "admin.console.session_ttl",
                "must be between 1s and 168h",
            ));
        }
        if !(1..=10_000).contains(&self.max_sessions) {
            return Err(err(
                "admin.console.max_sessions",
                "must be between 1 and 10000",
            ));
        }
        Ok(())
    }
}
