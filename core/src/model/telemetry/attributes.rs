//! A record's free-form signals (`attributes`): values by name.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// A free-form signal value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Attr {
    /// A boolean.
    Bool(bool),
    /// A number.
    Num(f64),
    /// A string (inline up to 24 bytes, as telemetry's other strings).
    Str(CompactString),
}

/// By the JSON value's own type. Hand-written because the derived untagged form tries each
/// variant in turn, building (and formatting) an error for every miss: that was a fifth of
/// the JSON decoding time.
impl<'de> Deserialize<'de> for Attr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Attr, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Attr;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a boolean, a number or a string")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Attr, E> {
                Ok(Attr::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Attr, E> {
                Ok(Attr::Num(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Attr, E> {
                Ok(Attr::Num(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Attr, E> {
                Ok(Attr::Num(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Attr, E> {
                Ok(Attr::Str(v.into()))
            }
            fn visit_string<E>(self, v: String) -> Result<Attr, E> {
                Ok(Attr::Str(v.into()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Values by name, each name once, in name order (as a map's encodings list them).
///
/// A sorted vector, not a `BTreeMap`: a record carries a handful of attributes, and a
/// B-tree allocates a node of eleven slots (about 600 B) for even one of them, besides each
/// name. Freeing that node and names once the record was judged took a tenth of the engine
/// bench's time; the vector is one allocation, and its names and strings are inline up to
/// 24 bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attributes(Vec<(CompactString, Attr)>);

impl Attributes {
    /// No attributes (allocates nothing).
    pub const fn new() -> Attributes {
        Attributes(Vec::new())
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&Attr> {
        self.position(name).ok().map(|i| &self.0[i].1)
    }

    /// From entries in any order; a name given more than once keeps its last value (as
    /// collecting into a map does). Decoders build this way: one sort, where inserting one
    /// by one costs `n²` moves for a record of `n` attributes in reverse order.
    pub fn from_entries(mut entries: Vec<(CompactString, Attr)>) -> Attributes {
        if sort_by_name(&mut entries) {
            // The last of each run of one name is kept, moved into the run's first slot.
            entries.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    std::mem::swap(&mut later.1, &mut kept.1);
                }
                same
            });
        }
        Attributes(entries)
    }

    /// [`Attributes::from_entries`], or `None` when a name is given more than once.
    pub fn from_unique_entries(mut entries: Vec<(CompactString, Attr)>) -> Option<Attributes> {
        (!sort_by_name(&mut entries)).then_some(Attributes(entries))
    }

    /// Sets `name` to `value`, returning the value it replaces (as a map's `insert`). For a
    /// few names: each insertion moves the names after it.
    pub fn insert(&mut self, name: impl Into<CompactString>, value: Attr) -> Option<Attr> {
        let name = name.into();
        match self.position(&name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (name, value));
                None
            }
        }
    }

    /// Every attribute, in name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Attr)> {
        self.into_iter()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Where `name` is, or would go.
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(name))
    }
}

/// Sorts entries by name (stably: a repeated name's entries keep their order) unless they
/// already are, each name once; returns whether a name repeats.
fn sort_by_name(entries: &mut [(CompactString, Attr)]) -> bool {
    if entries.is_sorted_by(|a, b| a.0 < b.0) {
        return false;
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.windows(2).any(|w| w[0].0 == w[1].0)
}

/// A name given twice keeps its last value, as collecting into a map does.
impl<K: Into<CompactString>> FromIterator<(K, Attr)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (K, Attr)>>(items: I) -> Attributes {
        Attributes::from_entries(items.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

impl<'a> IntoIterator for &'a Attributes {
    type Item = (&'a str, &'a Attr);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (CompactString, Attr)>,
        fn(&'a (CompactString, Attr)) -> (&'a str, &'a Attr),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// As a JSON object, in name order.
impl Serialize for Attributes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

/// From a JSON object; a name given twice keeps its last value, as serde's maps do.
impl<'de> Deserialize<'de> for Attributes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Attributes, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Attributes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of attribute values")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut m: M) -> Result<Attributes, M::Error> {
                let mut entries = Vec::with_capacity(m.size_hint().unwrap_or(0).min(16));
                while let Some(entry) = m.next_entry::<CompactString, Attr>()? {
                    entries.push(entry);
                }
                Ok(Attributes::from_entries(entries))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Insertions in any order, with repeats, give a map's contents in a map's order.
    #[test]
    fn behaves_as_an_ordered_map() {
        let names = ["b", "a", "c", "ab", "", "é", "Z", "a", "b", "zz", "c"];
        let mut a = Attributes::new();
        let mut m = BTreeMap::new();
        for (i, n) in names.iter().enumerate() {
            let v = Attr::Num(i as f64);
            assert_eq!(a.insert(*n, v.clone()), m.insert(n.to_string(), v), "insert {n}");
            assert_eq!(a.len(), m.len());
        }
        let listed: Vec<(String, Attr)> = a.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        assert_eq!(listed, m.clone().into_iter().collect::<Vec<_>>());
        for n in names.iter().chain(&["x", "aa", "zzz"]) {
            assert_eq!(a.get(n), m.get(*n), "get {n}");
        }
        let entries =
            || names.iter().enumerate().map(|(i, n)| (CompactString::from(*n), Attr::Num(i as f64)));
        assert_eq!(Attributes::from_entries(entries().collect()), a);
        assert_eq!(entries().collect::<Attributes>(), a);
        assert_eq!(Attributes::from_unique_entries(entries().collect()), None, "names repeat");
        let unique: Vec<_> =
            entries().rev().filter(|(k, _)| !["a", "b", "c"].contains(&k.as_str())).collect();
        let want: Attributes = unique.iter().cloned().collect();
        assert_eq!(want.len(), unique.len());
        assert_eq!(Attributes::from_unique_entries(unique), Some(want));
        let none = Attributes::new();
        assert!(none.is_empty() && none.get("a").is_none());
    }

    /// The JSON form is a map's: the same text out, and a repeated name's last value in.
    #[test]
    fn json_as_a_map() {
        let m: BTreeMap<String, Attr> = [
            ("s".into(), Attr::Str("x".into())),
            ("b".into(), Attr::Bool(true)),
            ("n".into(), Attr::Num(2.5)),
        ]
        .into_iter()
        .collect();
        let a: Attributes = m.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&m).unwrap());
        let text = r#"{"n":1,"s":"long enough to live on the heap, not inline","n":3}"#;
        let a: Attributes = serde_json::from_str(text).unwrap();
        let m: BTreeMap<String, Attr> = serde_json::from_str(text).unwrap();
        assert_eq!(a.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<BTreeMap<_, _>>(), m);
        assert_eq!(a.get("n"), Some(&Attr::Num(3.0)));
        assert!(serde_json::from_str::<Attributes>(r#"{"x":null}"#).is_err());
        assert!(serde_json::from_str::<Attributes>("[]").is_err());
    }
}
