//! The bundled Avro schemas (`schemas/*.avsc`), each parsed once. They are compile-time
//! constants checked by the tests below, so parsing them cannot fail at run time.

use crate::model::enforcement::ENFORCEMENT_AVSC;
use crate::model::history::HISTORY_AVSC;
use crate::model::telemetry::TELEMETRY_AVSC;
use apache_avro::Schema;
use std::sync::OnceLock;

fn parsed(cell: &'static OnceLock<Schema>, text: &'static str) -> &'static Schema {
    // The text is a bundled constant; `every_bundled_schema_parses` proves it valid.
    cell.get_or_init(|| Schema::parse_str(text).expect("bundled schema is valid"))
}

/// `schemas/agent_telemetry.avsc`.
pub fn telemetry() -> &'static Schema {
    static CELL: OnceLock<Schema> = OnceLock::new();
    parsed(&CELL, TELEMETRY_AVSC)
}

/// `schemas/enforcement_event.avsc`.
pub fn enforcement() -> &'static Schema {
    static CELL: OnceLock<Schema> = OnceLock::new();
    parsed(&CELL, ENFORCEMENT_AVSC)
}

/// `schemas/history_record.avsc`.
pub fn history() -> &'static Schema {
    static CELL: OnceLock<Schema> = OnceLock::new();
    parsed(&CELL, HISTORY_AVSC)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_bundled_schema_parses() {
        for (name, text) in [
            ("telemetry", crate::model::telemetry::TELEMETRY_AVSC),
            ("enforcement", crate::model::enforcement::ENFORCEMENT_AVSC),
            ("history", crate::model::history::HISTORY_AVSC),
            ("override", crate::model::overrides::OVERRIDE_AVSC),
        ] {
            assert!(apache_avro::Schema::parse_str(text).is_ok(), "{name}");
        }
        assert_eq!(super::telemetry().name().map(|n| n.name()), Some("AgentTelemetry"));
    }
}
