//! A local HTTP server speaking the part of the Confluent schema registry API that driftgate
//! uses (`GET /schemas/ids/{id}`), which can be taken down and brought back, and counts the
//! requests it got.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The registry.
pub struct Registry {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    down: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
}

impl Registry {
    /// Starts serving `schemas` (id → schema text, which need not be valid Avro).
    pub fn start(schemas: impl IntoIterator<Item = (u32, String)>) -> Registry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let schemas = Arc::new(Mutex::new(schemas.into_iter().collect::<BTreeMap<_, _>>()));
        let down = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let (s, d, n) = (schemas, down.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut line = String::new();
                let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                // Drain the headers.
                let mut h = String::new();
                while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
                    h.clear();
                }
                n.fetch_add(1, Ordering::SeqCst);
                let path = line.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = if d.load(Ordering::SeqCst) {
                    ("503 Service Unavailable", r#"{"error_code":50301,"message":"down"}"#.to_string())
                } else {
                    match path
                        .strip_prefix("/schemas/ids/")
                        .and_then(|id| id.parse::<u32>().ok())
                        .and_then(|id| s.lock().unwrap().get(&id).cloned())
                    {
                        Some(schema) => ("200 OK", serde_json::json!({ "schema": schema }).to_string()),
                        None => (
                            "404 Not Found",
                            r#"{"error_code":40403,"message":"Schema not found"}"#.to_string(),
                        ),
                    }
                };
                let _ = write!(stream, "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            }
        });
        Registry { url, down, requests }
    }

    /// Answers 503 to everything while `down`.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A writer schema that parses but cannot be resolved to the telemetry schema
/// (`occurred_at` is a string).
pub fn mismatched_schema() -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(driftgate_core::model::telemetry::TELEMETRY_AVSC).unwrap();
    for f in v["fields"].as_array_mut().unwrap() {
        if f["name"] == "occurred_at" {
            f["type"] = "string".into();
        }
    }
    v.to_string()
}

/// A registered schema that does not parse.
pub const BAD_SCHEMA: &str =
    r#"{"type": "record", "name": "T", "fields": [{"name": "a", "type": "no_such_type"}]}"#;
