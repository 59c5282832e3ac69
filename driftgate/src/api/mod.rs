//! The HTTP control plane: endpoints (`http`), override authentication (`auth`) and the
//! trait the pipeline and the demo implement to answer it (`control`), and the one way in
//! for overrides from either channel (`ingest`), and for pact changes (`pacts`).

pub mod auth;
pub mod control;
pub mod http;
pub mod ingest;
pub mod pacts;
