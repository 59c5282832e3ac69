//! serde support for the quantile bound's [`EpochHistogram`] through hdrhistogram's V2 binary
//! format, the form its `hdrhistogram::Histogram` was stored in (that crate has no serde
//! implementation of its own).

use crate::epoch_hist::EpochHistogram;
use hdrhistogram::serialization::{Deserializer as HdrDe, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use serde::{de::Error as _, ser::Error as _, Deserialize, Deserializer, Serializer};

pub(crate) fn serialize<S: Serializer>(h: &EpochHistogram, s: S) -> Result<S::Ok, S::Error> {
    let dense = h.to_dense().map_err(|e| S::Error::custom(format!("{e:?}")))?;
    let mut buf = Vec::new();
    V2Serializer::new().serialize(&dense, &mut buf).map_err(|e| S::Error::custom(format!("{e:?}")))?;
    s.serialize_bytes(&buf)
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EpochHistogram, D::Error> {
    let bytes: Vec<u8> = Vec::deserialize(d)?;
    check_v2(&bytes).map_err(D::Error::custom)?;
    let h: Histogram<u32> =
        HdrDe::new().deserialize(&mut bytes.as_slice()).map_err(|e| D::Error::custom(format!("{e:?}")))?;
    EpochHistogram::from_dense(&h)
        .ok_or_else(|| D::Error::custom("HDR histogram of another precision than the quantile bound's"))
}

/// Checks what hdrhistogram 7.6's V2 decoder does not, so that a corrupt state record is an
/// error and never a crash (both found by the changelog fuzz target): it allocates the
/// payload length the header states (up to 4 GiB) before reading it, and it negates a count
/// of `i64::MIN` unchecked, which panics in builds with overflow checks. Only the plain V2
/// form is accepted: it is the only one written here.
fn check_v2(b: &[u8]) -> Result<(), &'static str> {
    const V2_COOKIE: u32 = 0x1c84_9303 | 0x10;
    const HEADER: usize = 40;
    let word = |at: usize| b.get(at..at + 4).map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    if word(0) != Some(V2_COOKIE) {
        return Err("not a V2 HDR histogram");
    }
    let len = word(4).ok_or("truncated HDR histogram")? as usize;
    let payload =
        b.get(HEADER..HEADER.saturating_add(len)).ok_or("HDR histogram payload beyond its record")?;
    // Its varints: up to eight bytes of seven bits, then a ninth taken whole.
    let mut i = 0;
    while i < payload.len() {
        let mut v = 0u64;
        for k in 0..9 {
            let Some(&byte) = payload.get(i) else { break };
            i += 1;
            if k == 8 {
                v |= u64::from(byte) << 56;
                break;
            }
            v |= u64::from(byte & 0x7f) << (7 * k);
            if byte & 0x80 == 0 {
                break;
            }
        }
        // The zig-zag encoding of i64::MIN.
        if v == u64::MAX {
            return Err("corrupt HDR histogram count");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::epoch_hist::EpochHistogram;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    struct Held {
        #[serde(with = "super")]
        h: EpochHistogram,
    }

    #[test]
    fn a_corrupt_blob_is_an_error_not_a_panic() {
        let mut h = EpochHistogram::default();
        h.record(1200);
        let mut blob = serde_json::to_value(Held { h }).unwrap()["h"].as_array().unwrap().clone();
        // The V2 payload after its 40-byte header: one count whose zig-zag value is i64::MIN.
        blob.truncate(40);
        blob[4..8].iter_mut().zip(9u32.to_be_bytes()).for_each(|(b, x)| *b = x.into());
        blob.extend(std::iter::repeat_n(serde_json::Value::from(0xffu8), 9));
        let r = serde_json::from_value::<Held>(serde_json::json!({ "h": blob.clone() }));
        assert!(r.is_err());
        // A payload length beyond the record (hdrhistogram allocated it first: 4 GiB here).
        blob[4..8].iter_mut().for_each(|b| *b = 0xffu8.into());
        let r = serde_json::from_value::<Held>(serde_json::json!({ "h": blob }));
        assert!(r.is_err());
    }

    #[test]
    fn a_valid_blob_round_trips() {
        let mut h = EpochHistogram::default();
        for v in [1, 1200, 30_000_000] {
            h.record(v);
        }
        let back: Held =
            serde_json::from_value(serde_json::to_value(Held { h: h.clone() }).unwrap()).unwrap();
        assert_eq!(back.h, h);
        assert_eq!(back.h.value_at_quantile(1.0), h.value_at_quantile(1.0));
    }

    /// A histogram of another precision is an error, not a misread one.
    #[test]
    fn another_precision_is_an_error() {
        use hdrhistogram::serialization::{Serializer as _, V2Serializer};
        let mut h = hdrhistogram::Histogram::<u32>::new(3).unwrap();
        h.record(1200).unwrap();
        let mut buf = Vec::new();
        V2Serializer::new().serialize(&h, &mut buf).unwrap();
        let r = serde_json::from_value::<Held>(serde_json::json!({ "h": buf }));
        assert!(r.is_err_and(|e| e.to_string().contains("another precision")));
    }
}
