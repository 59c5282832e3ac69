//! `driftgate route`: the decision sidecar. It runs the router library
//! ([`driftgate_router`]) against driftgate's topics and serves its decisions over HTTP, for
//! gateways that are not written in Rust: a JSON decision endpoint, and an auth-subrequest
//! endpoint for NGINX `auth_request` and Envoy's HTTP `ext_authz`.

pub mod http;

use driftgate_core::model::lane::{ByScope, Lane};
use driftgate_core::pact::duration::Dur;
use driftgate_router::Policy;
use figment::providers::Env;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Where driftgate publishes, and how to reach the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteKafka {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// driftgate's `kafka.topics.snapshot`.
    pub snapshot_topic: String,
    /// driftgate's `kafka.topics.enforcement`.
    pub enforcement_topic: String,
    /// librdkafka properties (SASL, TLS, ...).
    pub properties: BTreeMap<String, String>,
    /// How long to wait for the cluster at start.
    pub startup_timeout: Dur,
}

impl Default for RouteKafka {
    fn default() -> Self {
        RouteKafka {
            brokers: "localhost:9092".into(),
            snapshot_topic: "driftgate.snapshot".into(),
            enforcement_topic: "driftgate.enforcement".into(),
            properties: BTreeMap::new(),
            startup_timeout: Dur(30_000_000),
        }
    }
}

/// Lane → action overrides for one scope (lanes not named keep their default action).
pub type Actions = BTreeMap<Lane, String>;

/// `driftgate route` settings (`deploy/route.toml` shows each with its default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// The cluster and driftgate's topics.
    pub kafka: RouteKafka,
    /// HTTP listen address.
    pub listen: String,
    /// A partition whose newest heartbeat is older than this makes its agents stale.
    pub max_staleness: Dur,
    /// The lane of agents driftgate has never published.
    pub unknown_agent_lane: Lane,
    /// The lane high-risk requests fall back to while stale.
    pub stale_high_risk_lane: Lane,
    /// Request header carrying the agent id (auth endpoint).
    pub agent_header: String,
    /// Request header carrying the risk: `low`, `medium` or `high` (auth endpoint).
    pub risk_header: String,
    /// Per scope, the least restrictive lane that denies the request.
    pub deny_from: ByScopeLane,
    /// Per scope, lane → action (what the gateway is told in `x-driftgate-action`).
    pub actions: ScopeActions,
}

/// `[deny_from]`: `all` and `high_risk`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ByScopeLane {
    /// Requests that are not high-risk.
    pub all: Lane,
    /// High-risk requests.
    pub high_risk: Lane,
}

impl Default for ByScopeLane {
    fn default() -> Self {
        let p = Policy::default();
        ByScopeLane { all: p.deny_from.all, high_risk: p.deny_from.high_risk }
    }
}

/// `[actions.all]`, `[actions.high_risk]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScopeActions {
    /// Requests that are not high-risk.
    pub all: Actions,
    /// High-risk requests.
    pub high_risk: Actions,
}

impl Default for RouteConfig {
    fn default() -> Self {
        let p = Policy::default();
        RouteConfig {
            kafka: RouteKafka::default(),
            listen: "0.0.0.0:9465".into(),
            max_staleness: Dur(p.max_staleness_us),
            unknown_agent_lane: p.unknown_agent_lane,
            stale_high_risk_lane: p.stale_high_risk_lane,
            agent_header: "x-driftgate-agent".into(),
            risk_header: "x-driftgate-risk".into(),
            deny_from: ByScopeLane::default(),
            actions: ScopeActions::default(),
        }
    }
}

/// Why a route config is refused.
#[derive(Debug, thiserror::Error)]
pub enum RouteConfigError {
    /// The file or an environment override does not parse.
    #[error("route configuration: {0}")]
    Invalid(String),
    /// A setting cannot work; the message names it.
    #[error("route configuration: {0}")]
    Setting(String),
}

impl RouteConfig {
    /// Loads `path` (if given), then `DRIFTGATE_ROUTE_*` environment overrides
    /// (`DRIFTGATE_ROUTE_KAFKA__BROKERS`), then checks it.
    pub fn load(path: Option<&Path>) -> Result<RouteConfig, RouteConfigError> {
        Self::load_with(path, Env::prefixed("DRIFTGATE_ROUTE_").split("__"))
    }

    fn load_with(path: Option<&Path>, env: Env) -> Result<RouteConfig, RouteConfigError> {
        let cfg: RouteConfig = crate::config::layered(path, env).map_err(RouteConfigError::Invalid)?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Refuses settings that cannot work, naming them.
    pub fn check(&self) -> Result<(), RouteConfigError> {
        let bad = |m: String| Err(RouteConfigError::Setting(m));
        for (name, v) in [
            ("kafka.brokers", &self.kafka.brokers),
            ("kafka.snapshot_topic", &self.kafka.snapshot_topic),
            ("kafka.enforcement_topic", &self.kafka.enforcement_topic),
        ] {
            if v.trim().is_empty() {
                return bad(format!("`{name}` is empty"));
            }
        }
        if self.max_staleness.micros() <= 0 {
            return bad("`max_staleness` must be positive".into());
        }
        for (name, v) in [("agent_header", &self.agent_header), ("risk_header", &self.risk_header)] {
            if axum::http::HeaderName::from_bytes(v.as_bytes()).is_err() {
                return bad(format!("`{name}` = {v:?} is not a valid HTTP header name"));
            }
        }
        for (scope, a) in [("all", &self.actions.all), ("high_risk", &self.actions.high_risk)] {
            for (lane, action) in a {
                if action.trim().is_empty() || axum::http::HeaderValue::from_str(action).is_err() {
                    return bad(format!(
                        "`actions.{scope}.{}` = {action:?} must be a non-empty header-safe word",
                        lane.as_str()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The router library's policy.
    pub fn policy(&self) -> Policy {
        let mut p = Policy {
            max_staleness_us: self.max_staleness.micros(),
            unknown_agent_lane: self.unknown_agent_lane,
            stale_high_risk_lane: self.stale_high_risk_lane,
            deny_from: ByScope { all: self.deny_from.all, high_risk: self.deny_from.high_risk },
            ..Policy::default()
        };
        for (lane, a) in &self.actions.all {
            p.actions.all[*lane as usize] = a.clone();
        }
        for (lane, a) in &self.actions.high_risk {
            p.actions.high_risk[*lane as usize] = a.clone();
        }
        p
    }

    /// The follower's settings.
    pub fn follow(&self) -> driftgate_router::FollowConfig {
        driftgate_router::FollowConfig {
            brokers: self.kafka.brokers.clone(),
            snapshot_topic: self.kafka.snapshot_topic.clone(),
            enforcement_topic: self.kafka.enforcement_topic.clone(),
            properties: self.kafka.properties.clone(),
            startup_timeout: std::time::Duration::from_micros(
                self.kafka.startup_timeout.micros().max(0) as u64
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Env {
        Env::prefixed("DRIFTGATE_UNSET_IN_TESTS_")
    }

    fn load(text: &str) -> Result<RouteConfig, RouteConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("route.toml");
        std::fs::write(&f, text).unwrap();
        RouteConfig::load_with(Some(&f), no_env())
    }

    #[test]
    fn the_shipped_example_is_the_defaults() {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/route.toml");
        let cfg = RouteConfig::load_with(Some(&f), no_env()).unwrap();
        assert_eq!(
            cfg,
            RouteConfig {
                kafka: RouteKafka { brokers: "kafka-0:9092".into(), ..RouteKafka::default() },
                ..RouteConfig::default()
            }
        );
    }

    #[test]
    fn actions_and_thresholds_are_configurable_per_scope() {
        let cfg = load("max_staleness = \"5s\"\n[deny_from]\nall = \"review\"\n[actions.high_risk]\ndegrade = \"queue_for_human\"\n").unwrap();
        let p = cfg.policy();
        assert_eq!(p.max_staleness_us, 5_000_000);
        assert_eq!(p.deny_from.all, Lane::Review);
        assert_eq!(p.action(driftgate_core::model::lane::Scope::HighRisk, Lane::Degrade), "queue_for_human");
        assert_eq!(p.action(driftgate_core::model::lane::Scope::All, Lane::Degrade), "route_lower_trust");
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        let e = |t: &str| load(t).unwrap_err().to_string();
        assert!(e("[kafka]\nbrokers = \" \"\n").contains("`kafka.brokers` is empty"));
        let z = e("max_staleness = \"0s\"\n");
        assert!(z.contains("max_staleness") && z.contains("greater than zero"), "{z}");
        assert!(e("agent_header = \"x agent\"\n").contains("`agent_header`"));
        assert!(e("[actions.all]\nblock = \"\"\n").contains("`actions.all.block`"));
        assert!(e("[actions.all]\nblocked = \"x\"\n").contains("blocked"));
        assert!(e("unknown_agent_lane = \"red\"\n").contains("red"));
        assert!(e("listen_on = \"x\"\n").contains("listen_on"));
    }
}
