//! # driftgate
//!
//! The runtime that makes behavioural contracts (pacts) bite: telemetry in, calibrated
//! detectors per agent and clause, enforcement lanes out, with an auditable history.
//!
//! This crate holds the adapters around the pure core (`driftgate-core`):
//! - [`kafka`]: the pipeline loop, per-partition tasks, record decoding, the schema
//!   registry, output sinks and the control topic;
//! - [`api`]: the HTTP API, override authentication and the control-plane trait;
//! - [`obs`]: Prometheus metrics;
//! - [`report`]: backtest reports (HTML) of replays and the demo;
//! - [`route`]: the decision sidecar (`driftgate route`) over the router library;
//! - [`cli`]: the subcommands that are not the pipeline: demo, replay, eval;
//! - [`config`]: the `driftgate.toml` settings;
//! - [`clock`]: the adapters' wall clock (the core has none).

#![warn(missing_docs)]

pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod kafka;
pub mod obs;
pub mod report;
pub mod route;
