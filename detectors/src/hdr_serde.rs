//! serde support for the quantile bound's [`EpochHistogram`] through hdrhistogram's V2 binary
//! format, the form its `hdrhistogram::Histogram` was stored in (that crate has no serde
//! implementation of its own).

use crate::epoch_hist::{read_varint, EpochHistogram};
use hdrhistogram::serialization::Deserializer as HdrDe;
use hdrhistogram::Histogram;
use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

pub(crate) fn serialize<S: Serializer>(h: &EpochHistogram, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = Vec::new();
    h.write_v2(&mut buf);
    s.serialize_bytes(&buf)
}

/// What hdrhistogram writes for `h`, through its dense histogram (for the tests: the
/// stored form is written by [`EpochHistogram::write_v2`]).
#[cfg(test)]
pub(crate) fn dense_v2(h: &EpochHistogram) -> Vec<u8> {
    use hdrhistogram::serialization::{Serializer as _, V2Serializer};
    let mut buf = Vec::new();
    V2Serializer::new().serialize(&h.to_dense().unwrap(), &mut buf).unwrap();
    buf
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EpochHistogram, D::Error> {
    let bytes: Vec<u8> = Vec::deserialize(d)?;
    read(&bytes).map_err(D::Error::custom)
}

/// Reads a stored histogram: the form written here by its own reader, any other through
/// hdrhistogram's (which then refuses another precision).
fn read(bytes: &[u8]) -> Result<EpochHistogram, String> {
    check_v2(bytes)?;
    if let Some(h) = EpochHistogram::read_v2(bytes)? {
        return Ok(h);
    }
    dense_read(bytes)
}

/// Whether a stored histogram's two readers agree on `bytes`: its own ([`read`]) and
/// hdrhistogram's behind the same checks, with the same verdict and, when both read, the
/// same histogram, which writes back to bytes that read as it again. `Ok` says whether they
/// read it, `Err` how they differ. For the differential test below and the `hist_v2` fuzz
/// target.
pub fn readers_agree(bytes: &[u8]) -> Result<bool, String> {
    let ours = read(bytes);
    let theirs = check_v2(bytes).map_err(String::from).and_then(|()| dense_read(bytes));
    match (&ours, &theirs) {
        (Ok(a), Ok(b)) => {
            if a != b || a.value_at_quantile(1.0) != b.value_at_quantile(1.0) {
                return Err(format!("read another histogram: {a:?} against {b:?}"));
            }
            let mut again = Vec::new();
            a.write_v2(&mut again);
            match read(&again) {
                Ok(back) if back == *a => Ok(true),
                other => Err(format!("written back, read as {other:?}, not {a:?}")),
            }
        }
        (Err(_), Err(_)) => Ok(false),
        _ => Err(format!("verdicts differ: ours {ours:?}, hdrhistogram's {theirs:?}")),
    }
}

/// The V2 bytes of a histogram of `values`, as a quantile bound stores it (fuzz seeds).
pub fn sample_v2(values: &[u64]) -> Vec<u8> {
    let mut h = EpochHistogram::default();
    values.iter().for_each(|&v| h.record(v));
    let mut buf = Vec::new();
    h.write_v2(&mut buf);
    buf
}

/// hdrhistogram's reader, then the bins of its dense histogram.
fn dense_read(bytes: &[u8]) -> Result<EpochHistogram, String> {
    let h: Histogram<u32> = HdrDe::new().deserialize(&mut { bytes }).map_err(|e| format!("{e:?}"))?;
    EpochHistogram::from_dense(&h)
        .ok_or_else(|| "HDR histogram of another precision than the quantile bound's".into())
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
    // A truncated last varint is left to the readers, which refuse it.
    let mut payload = payload;
    while let Some(v) = read_varint(&mut payload) {
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

    /// The stored form is hdrhistogram's, byte for byte, and the reader reads what
    /// hdrhistogram's does, over random histograms and every kind of damage to their bytes:
    /// the same verdict, and the same histogram when it reads.
    #[test]
    fn the_v2_codec_is_hdrhistograms() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_pcg::Pcg64::seed_from_u64(44);
        let (mut read, mut refused) = (0, 0);
        for case in 0..3_000u32 {
            let mut h = EpochHistogram::default();
            for _ in 0..rng.random_range(0..200) {
                let v = match rng.random_range(0..20) {
                    0 => rng.random::<u64>() % (u64::MAX / 4),
                    1 => rng.random_range(0..300),
                    _ => rng.random_range(50_000..5_000_000),
                };
                h.record(v);
            }
            let mut bytes = Vec::new();
            h.write_v2(&mut bytes);
            assert_eq!(bytes, super::dense_v2(&h), "case {case}");
            assert_eq!(super::read(&bytes), Ok(h.clone()), "case {case}");
            // Damage: a byte changed (header or payload), the record cut short, or a header
            // field set to an edge value.
            let mut bad = bytes.clone();
            match rng.random_range(0..4) {
                0 => {
                    let at = rng.random_range(0..bad.len());
                    bad[at] = rng.random();
                }
                1 => bad.truncate(rng.random_range(0..bad.len())),
                2 => {
                    let at = [4, 8, 12, 16, 24, 32][rng.random_range(0..6)];
                    let edge = [0u8, 1, 2, 3, 0x7f, 0x80, 0xff][rng.random_range(0..7)];
                    bad[at..at + 4].iter_mut().for_each(|b| *b = edge);
                }
                _ => {
                    // A count or a run beyond what the histogram holds, or beyond 32 bits.
                    let n: i64 = [u32::MAX as i64 + 1, -(1 << 20), -i64::MAX, 1][rng.random_range(0..4)];
                    bad.extend(varint(((n << 1) ^ (n >> 63)) as u64));
                    let len = (bad.len() - 40) as u32;
                    bad[4..8].copy_from_slice(&len.to_be_bytes());
                }
            }
            match super::readers_agree(&bad) {
                Ok(true) => read += 1,
                Ok(false) => refused += 1,
                Err(why) => panic!("case {case}: {why}"),
            }
        }
        // Both outcomes were exercised.
        assert!(read > 300 && refused > 300, "{read} read, {refused} refused");
    }

    fn varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        while v >= 0x80 {
            out.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        out.push(v as u8);
        out
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
