//! # driftgate
//!
//! The runtime that makes behavioural contracts (pacts) bite: telemetry in, calibrated
//! detectors per agent and clause, enforcement lanes out, with an auditable history.

#![warn(missing_docs)]

pub mod eval;
pub mod history;
pub mod input;
