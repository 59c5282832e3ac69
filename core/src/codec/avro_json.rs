//! Avro encoding of serde types through their JSON form.
//!
//! apache-avro's own serde serializer writes `u64` as an 8-byte `fixed`, which our schemas
//! (and every other Avro reader) expect as `long`. Going through `serde_json::Value` and
//! then resolving against the schema gives the schema's types (records, unions, enums,
//! logical timestamps) from the serde field names, so one schema file is the only contract.

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a value could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum AvroJsonError {
    /// The value has no JSON form (e.g. a NaN float).
    #[error("value has no JSON form: {0}")]
    Json(#[from] serde_json::Error),
    /// The value does not fit the schema.
    #[error("value does not fit the Avro schema: {0}")]
    Avro(#[from] apache_avro::Error),
}

/// `value` as an Avro value of `schema`.
pub fn encode<T: Serialize>(value: &T, schema: &Schema) -> Result<Value, AvroJsonError> {
    let json = serde_json::to_value(value)?;
    Ok(Value::try_from(json)?.resolve(schema)?)
}

/// `value` encoded as a bare Avro datum (no container, no header).
pub fn encode_datum<T: Serialize>(value: &T, schema: &Schema) -> Result<Vec<u8>, AvroJsonError> {
    write_datum(schema, encode(value, schema)?)
}

/// An Avro value written as a bare datum of `schema`.
pub fn write_datum(schema: &Schema, value: Value) -> Result<Vec<u8>, AvroJsonError> {
    Ok(GenericDatumWriter::builder(schema).build()?.write_value_to_vec(value)?)
}

/// A bare datum written with `writer`, resolved to `reader` when given (schema evolution).
pub fn read_datum(writer: &Schema, reader: Option<&Schema>, bytes: &[u8]) -> Result<Value, AvroJsonError> {
    let mut input = bytes;
    Ok(datum_reader(writer, reader)?.read_value(&mut input)?)
}

/// A datum reader for `writer`, resolving to `reader` when given.
pub fn datum_reader<'s>(
    writer: &'s Schema,
    reader: Option<&'s Schema>,
) -> Result<GenericDatumReader<'s>, AvroJsonError> {
    Ok(match reader {
        Some(reader) => GenericDatumReader::builder(writer).reader_schema(reader).build()?,
        None => GenericDatumReader::builder(writer).build()?,
    })
}

/// A serde type from an Avro value (already resolved to the reader schema).
pub fn decode<T: DeserializeOwned>(value: Value) -> Result<T, AvroJsonError> {
    let json = serde_json::Value::try_from(value)?;
    Ok(serde_json::from_value(json)?)
}
