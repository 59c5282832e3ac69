//! Real peers for the integration tests: a headless Chromium (`browser`), a Kafka broker and the engine as a child process
//! (`kafka`), the API contract check (`contract`), a TCP proxy that can cut connections (`proxy`), NGINX in front of the decision sidecar
//! (`nginx`), a schema registry (`registry`),
//! the shared demo scenario (`scenario`) and a Prometheus text parser (`scrape`).

pub mod browser;
pub mod contract;
pub mod kafka;
pub mod nginx;
pub mod proxy;
pub mod registry;
pub mod scenario;
pub mod scrape;
// The core's splitmix generator, shared rather than copied; not every helper is used here.
#[allow(dead_code)]
#[path = "../../../core/src/test_rng.rs"]
pub mod test_rng;
