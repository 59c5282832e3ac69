//! # driftgate
//!
//! The runtime that makes behavioural contracts (pacts) bite: telemetry in, calibrated
//! detectors per agent and clause, enforcement lanes out, with an auditable history.

#![warn(missing_docs)]

pub mod auth;
pub mod avro_json;
pub mod control;
pub mod control_topic;
pub mod http;
pub mod metrics;
pub mod changelog;
pub mod config;
pub mod decode;
pub mod pipeline;
pub mod registry;
pub mod sink;
pub mod snapshot;
pub mod demo;
pub mod duration;
pub mod enforcement;
pub mod engine;
pub mod eval;
pub mod heartbeat;
pub mod history;
pub mod lane;
pub mod overrides;
pub mod pact;
pub mod predicate;
pub mod replay;
pub mod state;
pub mod telemetry;
pub mod timefmt;
pub mod input;
