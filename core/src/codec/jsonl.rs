//! JSON lines: one serialised value per line. The format of every `--*-out` file and of
//! the replay inputs.

use serde::Serialize;
use std::io::Write;

/// Writes one value as a line.
pub fn write_line<T: Serialize>(mut w: impl Write, value: &T) -> std::io::Result<()> {
    serde_json::to_writer(&mut w, value)?;
    w.write_all(b"\n")
}

/// Writes every value, one per line.
pub fn write_all<'a, T: Serialize + 'a>(
    mut w: impl Write,
    values: impl IntoIterator<Item = &'a T>,
) -> std::io::Result<()> {
    for v in values {
        write_line(&mut w, v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_value_per_line_and_no_line_breaks_inside() {
        let mut out = Vec::new();
        super::write_all(&mut out, &[serde_json::json!({"a": "x\ny"}), serde_json::json!(2)]).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "{\"a\":\"x\\ny\"}\n2\n");
    }
}
