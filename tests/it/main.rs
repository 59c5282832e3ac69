//! The engine's integration tests, in one binary so that they link once. Each module is one
//! area; the broker-backed ones start their own peers from `support`.

mod support;

mod demo_golden;
mod durable_state;
mod eval_cli;
mod exactly_once;
mod fuzz_corpora;
mod history_cli;
mod http_api;
mod kafka_pipeline;
mod pact_lifecycle;
mod pacts;
mod rebalance_mock;
mod registry_client;
mod replay;
mod report;
mod router;
mod schemas;
mod state_restore;
mod time_to_control;
