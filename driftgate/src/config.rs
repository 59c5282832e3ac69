//! `driftgate run` configuration: a TOML file, with every setting overridable from the
//! environment as `DRIFTGATE_<SECTION>__<KEY>` (e.g. `DRIFTGATE_KAFKA__BROKERS`).
//!
//! Layering and env mapping come from `figment`; librdkafka properties pass through
//! unchanged, so SASL and TLS work by configuration alone.

use driftgate_core::engine::EngineConfig;
use driftgate_core::pact::duration::Dur;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Telemetry encoding on the input topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// Avro in the Confluent wire format (magic byte 0, 4-byte schema id, datum).
    Avro,
    /// One JSON object per record.
    Json,
}

/// Encoding of enforcement events on the output topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// Confluent wire format with `output_schema_id` (see [`KafkaConfig`]).
    Avro,
    /// JSON objects.
    Json,
}

/// How outputs, state and input progress reach Kafka together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Outputs are acknowledged before the state and offsets that cover them; a crash can
    /// emit an output twice (same `seq`, so a router drops the copy).
    #[default]
    AtLeastOnce,
    /// Each commit interval is one Kafka transaction holding its outputs, the changelog
    /// records and the input offsets: a `read_committed` reader sees each output once.
    ExactlyOnce,
}

/// Output topic names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    /// Enforcement events, for routers.
    pub enforcement: String,
    /// Compacted: the latest full state per agent, for routers to bootstrap from.
    pub snapshot: String,
    /// The hash-chained contract history.
    pub history: String,
    /// Records that could not be decoded, with the reason in headers.
    pub dead_letter: String,
    /// Compacted, co-partitioned with the input: the engine state, for restore.
    pub changelog: String,
    /// Overrides as records (JSON, authenticated like HTTP requests); unset: none.
    pub control: Option<String>,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            enforcement: "driftgate.enforcement".into(),
            snapshot: "driftgate.snapshot".into(),
            history: "driftgate.history".into(),
            dead_letter: "driftgate.dead-letter".into(),
            changelog: "driftgate.changelog".into(),
            control: None,
        }
    }
}

/// The Kafka side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group.
    pub group_id: String,
    /// Telemetry topics.
    pub input_topics: Vec<String>,
    /// Telemetry encoding.
    pub format: InputFormat,
    /// Enforcement-event encoding.
    pub output_format: OutputFormat,
    /// Schema id written in front of Avro enforcement events (registered out of band).
    pub output_schema_id: u32,
    /// Output topics.
    pub topics: Topics,
    /// At-least-once (default) or exactly-once with Kafka transactions.
    pub delivery: Delivery,
    /// With `exactly_once`: the producer's `transactional.id`. It must be stable across
    /// restarts of one instance and unique among instances, so that a restarted instance
    /// fences its predecessor. Unset: `<group_id>-<group.instance.id>`.
    pub transactional_id: Option<String>,
    /// How often acknowledged progress is committed (with `exactly_once`, how long each
    /// transaction lasts, so it also bounds the time to control).
    pub commit_interval: Dur,
    /// How long to wait for the cluster at start-up before giving up.
    pub startup_timeout: Dur,
    /// After a restore, start reading this many records before the restored position
    /// (the records before it are skipped, not processed again). Kafka answers a fetch in
    /// the middle of a record batch with the whole batch, so 0 is right for it; tansu 0.6
    /// answers only with batches that *start* at or after the offset, silently skipping the
    /// rest of the batch, so set this above the producers' largest batch on such brokers.
    pub resume_rewind: u64,
    /// Threads that decode and evaluate a batch of records, one partition at a time each
    /// (a partition's records stay in order on one thread). 0: one per core.
    pub workers: usize,
    /// Records polled into one batch, at most. A batch is evaluated, then its outputs are
    /// produced, before the next poll; larger batches spread better over the workers,
    /// smaller ones hold the control plane for less time.
    pub max_batch: usize,
    /// librdkafka properties for every client, passed through unchanged (e.g.
    /// `security.protocol`, `sasl.mechanism`, `ssl.ca.location`). From the environment, `_`
    /// stands for `.`.
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the consumers only (e.g. `fetch.wait.max.ms`), on top of
    /// `properties`.
    pub consumer_properties: BTreeMap<String, String>,
    /// librdkafka properties for the producer only (e.g. `linger.ms`), on top of
    /// `properties`.
    pub producer_properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "localhost:9092".into(),
            group_id: "driftgate".into(),
            input_topics: vec!["agent-telemetry".into()],
            format: InputFormat::Avro,
            output_format: OutputFormat::Json,
            output_schema_id: 0,
            topics: Topics::default(),
            delivery: Delivery::AtLeastOnce,
            transactional_id: None,
            commit_interval: Dur(1_000_000),
            startup_timeout: Dur(30_000_000),
            resume_rewind: 0,
            workers: 0,
            max_batch: 1024,
            properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// The consumer's `group.instance.id`, if static membership is configured.
    pub fn group_instance_id(&self) -> Option<&str> {
        self.consumer_properties
            .get("group.instance.id")
            .or_else(|| self.properties.get("group.instance.id"))
            .map(String::as_str)
    }

    /// The producer's `transactional.id` with `exactly_once` (see
    /// [`KafkaConfig::transactional_id`]).
    pub fn transactional_id(&self) -> Option<String> {
        self.transactional_id
            .clone()
            .or_else(|| self.group_instance_id().map(|i| format!("{}-{i}", self.group_id)))
    }
}

/// Where writer schemas of Avro telemetry come from.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// A Confluent-compatible schema registry (`GET /schemas/ids/{id}`).
    pub url: Option<String>,
    /// Static mode, for deployments without a registry: schema id → `.avsc` file.
    pub static_schemas: BTreeMap<String, PathBuf>,
}

/// Checks on decoded telemetry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeConfig {
    /// An event stamped later than its Kafka record timestamp by more than this is refused
    /// (a clock far in the future would otherwise drag the watermark and make everything
    /// else late).
    pub max_future_skew: Dur,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        DecodeConfig { max_future_skew: Dur(3600 * 1_000_000) }
    }
}

/// Metrics and HTTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address of `/metrics` and the HTTP API; empty disables it.
    pub listen: String,
    /// Bearer token for `POST /v1/overrides` (set it from a secret, e.g.
    /// `DRIFTGATE_HTTP__OVERRIDE_TOKEN`). With neither this nor the HMAC secret, overrides
    /// are refused.
    pub override_token: Option<String>,
    /// HMAC-SHA256 secret for signed override requests (HTTP and the control topic).
    pub override_hmac_secret: Option<String>,
    /// How far a signature's timestamp may be from now.
    pub signature_max_age: Dur,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:9464".into(),
            override_token: None,
            override_hmac_secret: None,
            signature_max_age: Dur(300 * 1_000_000),
        }
    }
}

impl HttpConfig {
    /// The override credentials.
    pub fn credentials(&self) -> crate::api::auth::Credentials {
        crate::api::auth::Credentials::new(
            self.override_token.as_deref(),
            self.override_hmac_secret.as_deref(),
            self.signature_max_age.micros() / 1_000_000,
        )
    }
}

/// Everything `driftgate run` needs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Pact files (relative paths are relative to the config file).
    pub pacts: Vec<PathBuf>,
    /// Kafka.
    pub kafka: KafkaConfig,
    /// Schema registry.
    pub schema_registry: RegistryConfig,
    /// Decoding checks.
    pub decode: DecodeConfig,
    /// Engine settings (event time, TTLs, blast radius).
    pub engine: EngineConfig,
    /// Metrics and HTTP.
    pub http: HttpConfig,
}

/// A configuration that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file or an environment value does not parse or fit.
    #[error("configuration: {0}")]
    Invalid(String),
    /// A setting is missing or contradictory.
    #[error("configuration: {0}")]
    Setting(String),
}

/// A settings type's defaults, then the TOML file at `path` (a missing file is refused by
/// name), then the environment: the layering of `driftgate run` and `driftgate route` alike.
pub(crate) fn layered<T>(path: Option<&Path>, env: Env) -> Result<T, String>
where
    T: Default + serde::Serialize + serde::de::DeserializeOwned,
{
    let mut fig = Figment::from(figment::providers::Serialized::defaults(T::default()));
    if let Some(p) = path {
        if !p.exists() {
            return Err(format!("{}: no such file", p.display()));
        }
        fig = fig.merge(Toml::file(p));
    }
    fig.merge(env).extract().map_err(|e| e.to_string())
}

impl RunConfig {
    /// Loads `path` (if given), then `DRIFTGATE_*` environment overrides, then checks it.
    pub fn load(path: Option<&Path>) -> Result<RunConfig, ConfigError> {
        Self::load_with(path, Env::prefixed("DRIFTGATE_").split("__"))
    }

    fn load_with(path: Option<&Path>, env: Env) -> Result<RunConfig, ConfigError> {
        let mut cfg: RunConfig = layered(path, env).map_err(ConfigError::Invalid)?;
        // Environment keys cannot hold dots: `SASL_USERNAME` means `sasl.username`.
        for props in [
            &mut cfg.kafka.properties,
            &mut cfg.kafka.consumer_properties,
            &mut cfg.kafka.producer_properties,
        ] {
            *props = std::mem::take(props)
                .into_iter()
                .map(|(k, v)| if k.contains('.') { (k, v) } else { (k.replace('_', "."), v) })
                .collect();
        }
        if let Some(dir) = path.and_then(Path::parent) {
            for p in cfg.pacts.iter_mut().chain(cfg.schema_registry.static_schemas.values_mut()) {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
        cfg.check()?;
        Ok(cfg)
    }

    /// Refuses settings that cannot work, naming them.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Setting(m.to_string()));
        if self.pacts.is_empty() {
            return bad("`pacts` lists no pact files");
        }
        if self.kafka.brokers.trim().is_empty() {
            return bad("`kafka.brokers` is empty");
        }
        if self.kafka.input_topics.is_empty() {
            return bad("`kafka.input_topics` is empty");
        }
        let t = &self.kafka.topics;
        for (name, v) in [
            ("enforcement", &t.enforcement),
            ("snapshot", &t.snapshot),
            ("history", &t.history),
            ("dead_letter", &t.dead_letter),
            ("changelog", &t.changelog),
        ] {
            if v.trim().is_empty() {
                return Err(ConfigError::Setting(format!("`kafka.topics.{name}` is empty")));
            }
            if self.kafka.input_topics.contains(v) {
                return Err(ConfigError::Setting(format!("`kafka.topics.{name}` is also an input topic")));
            }
        }
        if self.kafka.format == InputFormat::Avro
            && self.schema_registry.url.is_none()
            && self.schema_registry.static_schemas.is_empty()
        {
            return bad("Avro input needs `schema_registry.url` or `schema_registry.static_schemas`");
        }
        if self.schema_registry.url.is_some() && !self.schema_registry.static_schemas.is_empty() {
            return bad("both `schema_registry.url` and `schema_registry.static_schemas` are set: writer schemas come from one of them; remove the other (e.g. DRIFTGATE_SCHEMA_REGISTRY__URL overrides only the URL)");
        }
        for id in self.schema_registry.static_schemas.keys() {
            if id.parse::<u32>().is_err() {
                return Err(ConfigError::Setting(format!(
                    "`schema_registry.static_schemas`: `{id}` is not a schema id"
                )));
            }
        }
        if self.kafka.commit_interval.micros() <= 0 {
            return bad("`kafka.commit_interval` must be positive");
        }
        if self.kafka.max_batch == 0 {
            return bad("`kafka.max_batch` must be at least 1");
        }
        if self.kafka.workers > 256 {
            return bad("`kafka.workers` must be at most 256 (0: one per core)");
        }
        if self.kafka.delivery == Delivery::ExactlyOnce && self.kafka.transactional_id().is_none() {
            return bad("`kafka.delivery = \"exactly_once\"` needs a transactional id that is stable per instance: set `kafka.transactional_id`, or `group.instance.id` in `kafka.consumer_properties` (static membership)");
        }
        if self.kafka.transactional_id.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return bad("`kafka.transactional_id` is empty");
        }
        // A returning agent's new incarnation (its first event's time) must order after the
        // expired one's, which holds when no accepted event is older than a TTL.
        if self.engine.state_ttl.micros() <= self.engine.allowed_lateness.micros() {
            return bad("`engine.state_ttl` must be longer than `engine.allowed_lateness`, so that routers can tell a returning agent's events from old ones");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An environment provider that sees nothing (the test process may have `DRIFTGATE_*`).
    fn no_env() -> Env {
        Env::prefixed("DRIFTGATE_UNSET_IN_TESTS_")
    }

    #[test]
    // figment::Jail fixes the closure's error type (figment::Error, which is large).
    #[allow(clippy::result_large_err)]
    fn file_then_env_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("driftgate.toml");
        std::fs::write(
            &f,
            r#"
pacts = ["pacts/a.yaml"]
[kafka]
brokers = "k1:9092"
format = "json"
[kafka.properties]
"security.protocol" = "SASL_SSL"
[engine]
allowed_lateness = "2m"
"#,
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("DRIFTGATE_KAFKA__BROKERS", "k2:9093");
            jail.set_env("DRIFTGATE_KAFKA__PROPERTIES__SASL_USERNAME", "svc");
            let cfg = RunConfig::load(Some(&f)).unwrap();
            assert_eq!(cfg.kafka.brokers, "k2:9093");
            assert_eq!(cfg.kafka.format, InputFormat::Json);
            assert_eq!(cfg.kafka.properties.get("security.protocol").map(String::as_str), Some("SASL_SSL"));
            assert_eq!(cfg.kafka.properties.get("sasl.username").map(String::as_str), Some("svc"));
            assert_eq!(cfg.engine.allowed_lateness, Dur(120_000_000));
            assert_eq!(cfg.pacts, vec![dir.path().join("pacts/a.yaml")]);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_missing_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "pacts = [\"a.yaml\"]\n[kafka]\nbrokerz = \"x\"\n").unwrap();
        let e = RunConfig::load_with(Some(&f), no_env()).unwrap_err().to_string();
        assert!(e.contains("brokerz"), "{e}");
        std::fs::write(&f, "pacts = [\"a.yaml\"]\n").unwrap();
        let e = RunConfig::load_with(Some(&f), no_env()).unwrap_err().to_string();
        assert!(e.contains("schema_registry"), "{e}");
        std::fs::write(
            &f,
            "pacts = [\"a.yaml\"]\n[kafka]\nformat = \"json\"\ninput_topics = [\"driftgate.history\"]\n",
        )
        .unwrap();
        let e = RunConfig::load_with(Some(&f), no_env()).unwrap_err().to_string();
        assert!(e.contains("also an input topic"), "{e}");
        let e = RunConfig::load_with(Some(&dir.path().join("nope.toml")), no_env()).unwrap_err().to_string();
        assert!(e.contains("no such file"), "{e}");
    }

    #[test]
    fn a_registry_url_beside_static_schemas_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "pacts = [\"a.yaml\"]\n[schema_registry]\nurl = \"http://r:8081\"\n[schema_registry.static_schemas]\n1 = \"t.avsc\"\n").unwrap();
        let e = RunConfig::load_with(Some(&f), no_env()).unwrap_err().to_string();
        assert!(e.contains("`schema_registry.url`") && e.contains("`schema_registry.static_schemas`"), "{e}");
    }

    #[test]
    fn exactly_once_needs_a_stable_transactional_id_and_takes_it_from_static_membership() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        let base = "pacts = [\"a.yaml\"]\n[kafka]\nformat = \"json\"\ngroup_id = \"g\"\ndelivery = \"exactly_once\"\n";
        std::fs::write(&f, base).unwrap();
        let e = RunConfig::load_with(Some(&f), no_env()).unwrap_err().to_string();
        assert!(e.contains("`kafka.transactional_id`") && e.contains("group.instance.id"), "{e}");
        std::fs::write(&f, format!("{base}[kafka.consumer_properties]\n\"group.instance.id\" = \"pod-0\"\n"))
            .unwrap();
        let cfg = RunConfig::load_with(Some(&f), no_env()).unwrap();
        assert_eq!(cfg.kafka.delivery, Delivery::ExactlyOnce);
        assert_eq!(cfg.kafka.transactional_id().as_deref(), Some("g-pod-0"));
        std::fs::write(&f, format!("{base}transactional_id = \"dg-a\"\n")).unwrap();
        let cfg = RunConfig::load_with(Some(&f), no_env()).unwrap();
        assert_eq!(cfg.kafka.transactional_id().as_deref(), Some("dg-a"));
        std::fs::write(&f, format!("{base}transactional_id = \" \"\n")).unwrap();
        let e = RunConfig::load_with(Some(&f), no_env()).unwrap_err().to_string();
        assert!(e.contains("`kafka.transactional_id` is empty"), "{e}");
        std::fs::write(&f, base.replace("exactly_once", "exactly_twice")).unwrap();
        let e = RunConfig::load_with(Some(&f), no_env()).unwrap_err().to_string();
        assert!(e.contains("exactly_twice") && e.contains("delivery"), "{e}");
    }

    #[test]
    fn a_state_ttl_within_the_allowed_lateness_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        let base = "pacts = [\"a.yaml\"]\n[kafka]\nformat = \"json\"\n[engine]\nallowed_lateness = \"2m\"\n";
        std::fs::write(&f, format!("{base}state_ttl = \"2m\"\n")).unwrap();
        let e = RunConfig::load_with(Some(&f), no_env()).unwrap_err().to_string();
        assert!(e.contains("`engine.state_ttl`") && e.contains("`engine.allowed_lateness`"), "{e}");
        std::fs::write(&f, format!("{base}state_ttl = \"3m\"\n")).unwrap();
        assert!(RunConfig::load_with(Some(&f), no_env()).is_ok());
    }

    #[test]
    fn batch_settings_are_checked_and_default_to_one_worker_per_core() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        let base = "pacts = [\"a.yaml\"]\n[kafka]\nformat = \"json\"\n";
        std::fs::write(&f, base).unwrap();
        let cfg = RunConfig::load_with(Some(&f), no_env()).unwrap();
        assert_eq!((cfg.kafka.workers, cfg.kafka.max_batch), (0, 1024));
        std::fs::write(&f, format!("{base}max_batch = 0\n")).unwrap();
        let e = RunConfig::load_with(Some(&f), no_env()).unwrap_err().to_string();
        assert!(e.contains("`kafka.max_batch`"), "{e}");
        std::fs::write(&f, format!("{base}workers = 1000\n")).unwrap();
        let e = RunConfig::load_with(Some(&f), no_env()).unwrap_err().to_string();
        assert!(e.contains("`kafka.workers`"), "{e}");
        std::fs::write(&f, format!("{base}workers = 3\nmax_batch = 64\n")).unwrap();
        let cfg = RunConfig::load_with(Some(&f), no_env()).unwrap();
        assert_eq!((cfg.kafka.workers, cfg.kafka.max_batch), (3, 64));
    }

    /// Every leaf setting's key, as `section.key` paths.
    fn setting_paths(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        let serde_json::Value::Object(m) = v else { return };
        for (k, child) in m {
            let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            match child {
                // Tables of free-form entries (properties, schema ids) are settings themselves.
                serde_json::Value::Object(c) if !c.is_empty() => setting_paths(child, &path, out),
                _ => out.push(path),
            }
        }
    }

    #[test]
    fn the_example_config_shows_every_setting() {
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/driftgate.toml"))
                .unwrap();
        let mut paths = Vec::new();
        setting_paths(&serde_json::to_value(RunConfig::default()).unwrap(), "", &mut paths);
        assert!(paths.len() > 30, "{paths:?}");
        let mut section = String::new();
        let mut shown = std::collections::BTreeSet::new();
        for line in text.lines() {
            // Commented-out settings count: they are shown, with their form.
            let l = line.trim_start_matches('#').trim();
            if let Some(h) = l.strip_prefix('[').and_then(|h| h.split(']').next()) {
                section = h.to_string();
                shown.insert(section.clone());
            } else if let Some((k, _)) = l.split_once('=') {
                let k = k.trim().trim_matches('"');
                shown.insert(if section.is_empty() { k.to_string() } else { format!("{section}.{k}") });
            }
        }
        let missing: Vec<&String> = paths.iter().filter(|p| !shown.contains(*p)).collect();
        assert!(missing.is_empty(), "deploy/driftgate.toml does not show: {missing:?}");
    }

    #[test]
    fn the_example_config_loads_and_names_existing_pacts() {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/driftgate.toml");
        let cfg = RunConfig::load_with(Some(&f), no_env()).unwrap();
        assert_eq!(cfg.kafka.format, InputFormat::Avro);
        assert_eq!(cfg.kafka.group_id, "driftgate");
        assert!(cfg.schema_registry.url.is_some());
        for p in &cfg.pacts {
            driftgate_core::pact::load_pact(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
        assert_eq!(cfg.pacts.len(), 5);
        // Written out in full, so it states every default.
        assert_eq!(cfg.engine, EngineConfig::default());
        assert_eq!(cfg.kafka.topics, Topics::default());
    }
}
