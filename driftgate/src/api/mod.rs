//! The HTTP control plane: endpoints (`http`), override authentication (`auth`) and the
//! trait the pipeline and the demo implement to answer it (`control`).

pub mod auth;
pub mod control;
pub mod http;
