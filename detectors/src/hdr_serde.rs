//! serde support for `hdrhistogram::Histogram` through its V2 binary format (the crate has
//! no serde implementation of its own).

use hdrhistogram::serialization::{Deserializer as HdrDe, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use serde::{de::Error as _, ser::Error as _, Deserialize, Deserializer, Serializer};

pub(crate) fn serialize<S: Serializer>(h: &Histogram<u32>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = Vec::new();
    V2Serializer::new().serialize(h, &mut buf).map_err(|e| S::Error::custom(format!("{e:?}")))?;
    s.serialize_bytes(&buf)
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Histogram<u32>, D::Error> {
    let bytes: Vec<u8> = Vec::deserialize(d)?;
    let mut h: Histogram<u32> =
        HdrDe::new().deserialize(&mut bytes.as_slice()).map_err(|e| D::Error::custom(format!("{e:?}")))?;
    h.auto(true);
    Ok(h)
}
