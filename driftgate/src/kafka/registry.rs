//! Writer schemas of Avro telemetry, by Confluent schema id: from a schema registry over
//! HTTP, or from static files for deployments without one.
//!
//! A small client of our own, behind [`SchemaSource`]: the maintained Rust registry clients
//! pin older `apache-avro` versions, whose `Schema` type is not ours. It needs one call,
//! `GET /schemas/ids/{id}`, plus a per-id cache.

use apache_avro::Schema;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why a writer schema is not available.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum RegistryError {
    /// The registry (or the static map) does not know this id: the record is bad.
    #[error("unknown schema id {0}")]
    UnknownId(u32),
    /// The registry returned a schema that does not parse: the record is bad.
    #[error("schema id {id} does not parse: {reason}")]
    BadSchema {
        /// Schema id.
        id: u32,
        /// Parser message.
        reason: String,
    },
    /// The registry cannot be reached: nothing is wrong with the record; retry later.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
}

/// Looks up writer schemas by id.
pub trait SchemaSource: Send + Sync {
    /// The writer schema registered under `id`.
    fn schema(&self, id: u32) -> Result<Arc<Schema>, RegistryError>;
}

/// A schema file that cannot be used.
#[derive(Debug, Error)]
pub enum SchemaFileError {
    /// It cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// It is not an Avro schema.
    #[error("{}: not an Avro schema: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: Box<apache_avro::Error>,
    },
}

/// Schemas from files, by id.
pub struct StaticSchemas {
    schemas: HashMap<u32, Arc<Schema>>,
}

impl StaticSchemas {
    /// Loads each `id → .avsc` file.
    pub fn load(files: &[(u32, PathBuf)]) -> Result<StaticSchemas, SchemaFileError> {
        let mut schemas = HashMap::new();
        for (id, path) in files {
            let text = std::fs::read_to_string(path)
                .map_err(|source| SchemaFileError::Read { path: path.clone(), source })?;
            let s = Schema::parse_str(&text)
                .map_err(|e| SchemaFileError::Parse { path: path.clone(), source: Box::new(e) })?;
            schemas.insert(*id, Arc::new(s));
        }
        Ok(StaticSchemas { schemas })
    }

    /// From schemas already parsed.
    pub fn new(schemas: impl IntoIterator<Item = (u32, Schema)>) -> StaticSchemas {
        StaticSchemas { schemas: schemas.into_iter().map(|(id, s)| (id, Arc::new(s))).collect() }
    }
}

impl SchemaSource for StaticSchemas {
    fn schema(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        self.schemas.get(&id).cloned().ok_or(RegistryError::UnknownId(id))
    }
}

/// How long an unknown id is remembered, so a burst of bad records does not hammer the
/// registry, while a schema registered a moment later is still found.
const NEGATIVE_TTL: Duration = Duration::from_secs(30);

/// A Confluent-compatible schema registry client with a per-id cache.
pub struct HttpRegistry {
    base: String,
    agent: ureq::Agent,
    cache: Mutex<HashMap<u32, Arc<Schema>>>,
    unknown: Mutex<HashMap<u32, Instant>>,
}

impl HttpRegistry {
    /// A client of the registry at `url` (e.g. `http://registry:8081`).
    pub fn new(url: &str) -> HttpRegistry {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        HttpRegistry {
            base: url.trim_end_matches('/').to_string(),
            agent,
            cache: Mutex::new(HashMap::new()),
            unknown: Mutex::new(HashMap::new()),
        }
    }

    fn fetch(&self, id: u32) -> Result<Schema, RegistryError> {
        let url = format!("{}/schemas/ids/{id}", self.base);
        let mut resp =
            self.agent.get(&url).call().map_err(|e| RegistryError::Unavailable(format!("{url}: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| RegistryError::Unavailable(format!("{url}: {e}")))?;
        match status {
            200 => {}
            404 => return Err(RegistryError::UnknownId(id)),
            s => return Err(RegistryError::Unavailable(format!("{url}: HTTP {s}"))),
        }
        let v: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| RegistryError::BadSchema { id, reason: e.to_string() })?;
        let text = v
            .get("schema")
            .and_then(|s| s.as_str())
            .ok_or_else(|| RegistryError::BadSchema { id, reason: "no `schema` in the response".into() })?;
        Schema::parse_str(text).map_err(|e| RegistryError::BadSchema { id, reason: e.to_string() })
    }
}

impl SchemaSource for HttpRegistry {
    fn schema(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        if let Some(s) =
            self.cache.lock().map_err(|_| RegistryError::Unavailable("cache poisoned".into()))?.get(&id)
        {
            return Ok(s.clone());
        }
        {
            let mut unknown =
                self.unknown.lock().map_err(|_| RegistryError::Unavailable("cache poisoned".into()))?;
            match unknown.get(&id) {
                Some(t) if t.elapsed() < NEGATIVE_TTL => return Err(RegistryError::UnknownId(id)),
                Some(_) => {
                    unknown.remove(&id);
                }
                None => {}
            }
        }
        match self.fetch(id) {
            Ok(s) => {
                let s = Arc::new(s);
                self.cache
                    .lock()
                    .map_err(|_| RegistryError::Unavailable("cache poisoned".into()))?
                    .insert(id, s.clone());
                Ok(s)
            }
            Err(RegistryError::UnknownId(id)) => {
                if let Ok(mut u) = self.unknown.lock() {
                    u.insert(id, Instant::now());
                }
                Err(RegistryError::UnknownId(id))
            }
            Err(e) => Err(e),
        }
    }
}
