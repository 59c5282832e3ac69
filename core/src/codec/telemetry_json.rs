//! JSON telemetry read straight into [`Telemetry`] by a parser written for its one shape.
//!
//! Why hand-written: through serde, even with sonic-rs underneath, a fifth of the time went to
//! the derived visitor matching field names and most of the rest to generic dispatch per
//! value; decoding stayed near 1.6M records/s. This parser knows the fields, so it matches a
//! key by its bytes and reads its value with the one routine that type needs.
//!
//! Like the Avro plan, it is an accelerator, never the judge. It reads the common spellings:
//! UTF-8 text, the JSON escapes, and numbers it can convert exactly (Clinger's fast path: a
//! significand up to 2^53 and a power of ten within ±22 are both exact in an `f64`, so one
//! multiplication or division rounds correctly, as serde_json's `float_roundtrip` does).
//! Anything else (a longer number, a lone surrogate, a duplicate member, an unknown field, a
//! struct written as an array) gives `None`, and the caller parses the text again with serde_json, which
//! decides between success and the exact error. So it only has to guarantee: when it returns a
//! `Telemetry`, serde_json returns the same one. The differential tests in `model::telemetry`
//! and the `telemetry_json` fuzz target check exactly that.

use crate::model::telemetry::{Attr, Attributes, Citations, CompactString, Model, Outcome, Risk, Telemetry};
use std::borrow::Cow;

/// Reads one telemetry record, or `None` for anything this parser does not accept.
pub fn read(bytes: &[u8]) -> Option<Telemetry> {
    // JSON outside strings is ASCII, so checking the whole text once lets strings be sliced
    // without checking each again.
    let text = std::str::from_utf8(bytes).ok()?;
    let mut p = Parser { text, pos: 0 };
    let t = p.telemetry()?;
    p.ws();
    (p.pos == text.len()).then_some(t)
}

type Read<T> = Option<T>;

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

/// A JSON number as read: its sign, its decimal significand and its power of ten.
struct Number {
    negative: bool,
    significand: u64,
    exponent: i32,
    /// Written without a fraction or an exponent.
    integer: bool,
}

/// The exact powers of ten an `f64` holds.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18,
    1e19, 1e20, 1e21, 1e22,
];

/// Integers up to this are exact in an `f64`.
const MAX_EXACT_SIGNIFICAND: u64 = 1 << 53;

/// Significands are read to at most 18 digits, which fit an `i64` (timestamps in microseconds
/// have 16).
const MAX_DIGITS_VALUE: u64 = 1_000_000_000_000_000_000;

impl Number {
    /// The value as serde_json gives it, when that can be computed exactly here.
    fn to_f64(&self) -> Read<f64> {
        if self.significand > MAX_EXACT_SIGNIFICAND {
            return None;
        }
        let m = self.significand as f64;
        let v = match self.exponent {
            e @ 0..=22 => m * POW10[e as usize],
            e @ -22..=-1 => m / POW10[(-e) as usize],
            _ => return None,
        };
        // serde_json reads `-0` as the float -0.0 too.
        Some(if self.negative { -v } else { v })
    }
}

impl<'a> Parser<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Read<u8> {
        self.bytes().get(self.pos).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Skips whitespace, then takes `b` or fails.
    fn expect(&mut self, b: u8) -> Read<()> {
        self.ws();
        (self.peek()? == b).then(|| self.pos += 1)
    }

    /// After whitespace, `true` and consumed if the next byte is `b`.
    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        let hit = self.peek() == Some(b);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn literal(&mut self, word: &str) -> bool {
        let hit = self.bytes()[self.pos..].starts_with(word.as_bytes());
        if hit {
            self.pos += word.len();
        }
        hit
    }

    /// `null`, after whitespace, consumed if present.
    fn null(&mut self) -> bool {
        self.ws();
        self.literal("null")
    }

    fn bool(&mut self) -> Read<bool> {
        self.ws();
        if self.literal("true") {
            Some(true)
        } else if self.literal("false") {
            Some(false)
        } else {
            None
        }
    }

    /// A string, borrowed from the text unless it has escapes.
    fn string(&mut self) -> Read<Cow<'a, str>> {
        self.expect(b'"')?;
        let start = self.pos;
        let bytes = self.bytes();
        self.pos += plain_len(&bytes[self.pos..]);
        if *bytes.get(self.pos)? == b'"' {
            let s = &self.text[start..self.pos];
            self.pos += 1;
            return Some(Cow::Borrowed(s));
        }
        // The run ends at an ASCII byte of a UTF-8 text, so each slice is on a boundary.
        let mut out = String::from(&self.text[start..self.pos]);
        loop {
            match *bytes.get(self.pos)? {
                b'"' => {
                    self.pos += 1;
                    return Some(Cow::Owned(out));
                }
                b'\\' => {
                    self.pos += 1;
                    let c = match *bytes.get(self.pos)? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            self.pos += 1;
                            let unit = self.hex4()?;
                            let c = if (0xd800..0xdc00).contains(&unit) {
                                if !self.literal("\\u") {
                                    return None;
                                }
                                let low = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&low) {
                                    return None;
                                }
                                0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00)
                            } else {
                                unit
                            };
                            out.push(char::from_u32(c)?);
                            continue;
                        }
                        _ => return None,
                    };
                    self.pos += 1;
                    out.push(c);
                }
                0..=0x1f => return None,
                _ => {
                    let run = plain_len(&bytes[self.pos..]);
                    out.push_str(&self.text[self.pos..self.pos + run]);
                    self.pos += run;
                }
            }
        }
    }

    /// Four hex digits of a `\u` escape, as a UTF-16 code unit.
    fn hex4(&mut self) -> Read<u32> {
        let digits = self.bytes().get(self.pos..self.pos + 4)?;
        let mut v = 0;
        for &d in digits {
            v = v * 16 + (d as char).to_digit(16)?;
        }
        self.pos += 4;
        Some(v)
    }

    /// A string held inline when it is short (most ids and names are).
    fn compact(&mut self) -> Read<CompactString> {
        self.string().map(CompactString::from)
    }

    /// A number in JSON's grammar, if its significand fits 18 digits (more make it `None`:
    /// the caller falls back rather than round).
    fn number(&mut self) -> Read<Number> {
        self.ws();
        let bytes = self.bytes();
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let mut significand = 0u64;
        let mut exponent = 0i32;
        let digit = |pos: &mut usize, significand: &mut u64| -> Read<bool> {
            match bytes.get(*pos) {
                Some(&d @ b'0'..=b'9') => {
                    *significand = *significand * 10 + u64::from(d - b'0');
                    *pos += 1;
                    (*significand < MAX_DIGITS_VALUE).then_some(true)
                }
                _ => Some(false),
            }
        };
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => while digit(&mut self.pos, &mut significand)? {},
            _ => return None,
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            integer = false;
            self.pos += 1;
            let start = self.pos;
            while digit(&mut self.pos, &mut significand)? {}
            if self.pos == start {
                return None;
            }
            exponent -= (self.pos - start) as i32;
        }
        if let Some(b'e' | b'E') = self.peek() {
            integer = false;
            self.pos += 1;
            let sign = match self.peek()? {
                b'-' => -1,
                b'+' => 1,
                _ => 0,
            };
            if sign != 0 {
                self.pos += 1;
            }
            let start = self.pos;
            let mut e = 0i32;
            while let Some(&d @ b'0'..=b'9') = bytes.get(self.pos) {
                e = e.checked_mul(10)?.checked_add(i32::from(d - b'0'))?;
                self.pos += 1;
            }
            if self.pos == start {
                return None;
            }
            exponent = exponent.checked_add(if sign < 0 { -e } else { e })?;
        }
        // A number runs into whatever follows it only if that is part of no JSON token here.
        if let Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'-' | b'+') = self.peek() {
            return None;
        }
        Some(Number { negative, significand, exponent, integer })
    }

    fn f64(&mut self) -> Read<f64> {
        self.number()?.to_f64()
    }

    /// An integer written as one; serde_json refuses `-0` and fractions for integer fields.
    fn i64(&mut self) -> Read<i64> {
        let n = self.number()?;
        if !n.integer || (n.negative && n.significand == 0) {
            return None;
        }
        let v = n.significand as i64;
        Some(if n.negative { -v } else { v })
    }

    fn u32(&mut self) -> Read<u32> {
        let n = self.number()?;
        if !n.integer || n.negative {
            return None;
        }
        u32::try_from(n.significand).ok()
    }

    /// Calls `member` with each key of an object, which must read that key's value.
    fn object(&mut self, mut member: impl FnMut(&mut Self, Cow<'a, str>) -> Read<()>) -> Read<()> {
        self.expect(b'{')?;
        if self.eat(b'}') {
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.expect(b':')?;
            member(self, key)?;
            if !self.eat(b',') {
                return self.expect(b'}');
            }
        }
    }

    fn model(&mut self) -> Read<Model> {
        let (mut provider, mut name, mut version) = (None, None, None);
        self.object(|p, key| {
            let slot = match &*key {
                "provider" => &mut provider,
                "name" => &mut name,
                "version" => &mut version,
                _ => return None,
            };
            set(slot, p.compact()?)
        })?;
        Some(Model { provider: provider?, name: name?, version: version? })
    }

    fn citations(&mut self) -> Read<Citations> {
        let (mut total, mut verified) = (None, None);
        self.object(|p, key| match &*key {
            "total" => set(&mut total, p.u32()?),
            "verified" => set(&mut verified, p.u32()?),
            _ => None,
        })?;
        Some(Citations { total: total?, verified: verified? })
    }

    fn tool_calls(&mut self) -> Read<Vec<CompactString>> {
        self.expect(b'[')?;
        let mut calls = Vec::new();
        if self.eat(b']') {
            return Some(calls);
        }
        loop {
            calls.push(self.compact()?);
            if !self.eat(b',') {
                self.expect(b']')?;
                return Some(calls);
            }
        }
    }

    fn attr(&mut self) -> Read<Attr> {
        self.ws();
        Some(match self.peek()? {
            b'"' => Attr::Str(self.compact()?),
            b't' | b'f' => Attr::Bool(self.bool()?),
            _ => Attr::Num(self.f64()?),
        })
    }

    fn attributes(&mut self) -> Read<Attributes> {
        let mut entries = Vec::new();
        self.object(|p, key| {
            entries.push((CompactString::from(key), p.attr()?));
            Some(())
        })?;
        // serde_json keeps the last of duplicate keys; leave that case to it.
        Attributes::from_unique_entries(entries)
    }

    /// An optional field: `null` is absent, as serde reads it.
    fn optional<T>(&mut self, read: impl FnOnce(&mut Self) -> Read<T>) -> Read<Option<T>> {
        if self.null() {
            Some(None)
        } else {
            read(self).map(Some)
        }
    }

    fn telemetry(&mut self) -> Read<Telemetry> {
        let (mut event_id, mut agent_id, mut workflow, mut model) = (None, None, None, None);
        let (mut occurred_at, mut risk, mut outcome) = (None, None, None);
        let (mut latency_ms, mut citations, mut pii_detected) = (None, None, None);
        let (mut tool_calls, mut attributes) = (None, None);
        self.object(|p, key| match &*key {
            "event_id" => set(&mut event_id, p.compact()?),
            "agent_id" => set(&mut agent_id, p.compact()?),
            "workflow" => set(&mut workflow, p.compact()?),
            "model" => set(&mut model, p.model()?),
            "occurred_at" => set(&mut occurred_at, p.i64()?),
            "risk" => set(&mut risk, Risk::from_name(&p.string()?)?),
            "outcome" => set(&mut outcome, Outcome::from_name(&p.string()?)?),
            "latency_ms" => set(&mut latency_ms, p.optional(Self::f64)?),
            "citations" => set(&mut citations, p.optional(Self::citations)?),
            "pii_detected" => set(&mut pii_detected, p.optional(Self::bool)?),
            "tool_calls" => set(&mut tool_calls, p.tool_calls()?),
            "attributes" => set(&mut attributes, p.attributes()?),
            _ => None,
        })?;
        Some(Telemetry {
            event_id: event_id?,
            agent_id: agent_id?,
            workflow: workflow?,
            model: model?,
            occurred_at: occurred_at?,
            risk: risk?,
            outcome: outcome?,
            latency_ms: latency_ms.flatten(),
            citations: citations.flatten(),
            pii_detected: pii_detected.flatten(),
            tool_calls: tool_calls.unwrap_or_default(),
            attributes: attributes.unwrap_or_default(),
        })
    }
}

/// The length of the run of `b` that needs no decoding: up to the first quote, backslash or
/// control character, or the whole of `b`. Eight bytes at a time, because the byte-at-a-time
/// loop was a third of the decoding time. Each mask below can also flag bytes above its first
/// true hit (borrows run upwards), so only the lowest flagged byte is used, and it is exact.
fn plain_len(b: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v;
    let mut chunks = b.chunks_exact(8);
    let mut done = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let hits = (zero(x ^ (ONES * u64::from(b'"')))
            | zero(x ^ (ONES * u64::from(b'\\')))
            | (x.wrapping_sub(ONES * 0x20) & !x))
            & HIGH;
        if hits != 0 {
            return done + (hits.trailing_zeros() / 8) as usize;
        }
        done += 8;
    }
    let rest = chunks.remainder();
    done + rest.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20).unwrap_or(rest.len())
}

/// Fills a field's slot once; a second value for it (a duplicate member) is left to serde_json.
fn set<T>(slot: &mut Option<T>, value: T) -> Read<()> {
    slot.replace(value).is_none().then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> &'static [u8] {
        include_bytes!("../../../tests/fixtures/telemetry-sample.json")
    }

    #[test]
    fn reads_the_sample_as_serde_json_does() {
        let want: Telemetry = serde_json::from_slice(sample()).expect("valid sample");
        assert_eq!(read(sample()), Some(want));
    }

    #[test]
    fn numbers_it_cannot_convert_exactly_are_left_to_serde_json() {
        let num = |s: &str| Parser { text: s, pos: 0 }.f64();
        assert_eq!(num("812.5"), Some(812.5));
        assert_eq!(num("1E-2"), Some(0.01));
        assert_eq!(num("-0").map(f64::to_bits), Some((-0.0f64).to_bits()));
        assert_eq!(num("9007199254740992"), Some(9007199254740992.0));
        // Beyond 2^53, an exponent beyond 22, a leading zero, a bare point.
        for s in ["9007199254740993", "1e23", "01", "1.", ".5", "-", "1e", "1e+"] {
            assert_eq!(num(s), None, "{s}");
        }
    }

    #[test]
    fn plain_runs_end_at_the_first_quote_backslash_or_control_character() {
        for len in 0..20 {
            for stop in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                let mut b = vec![b'a'; len];
                // Bytes that look like stops after a borrow must not hide the first stop.
                b.extend_from_slice(&[stop, 0x21, b'"', 0x00, 0x80, 0xff]);
                assert_eq!(plain_len(&b), len, "{len} {stop}");
            }
            let plain: Vec<u8> =
                (0..len).map(|i| [b'a', 0x20, 0x7f, 0x80, 0xc3, 0xff, b'#', b']'][i % 8]).collect();
            assert_eq!(plain_len(&plain), len);
        }
    }

    #[test]
    fn integer_fields_take_only_integers() {
        let int = |s: &str| Parser { text: s, pos: 0 }.i64();
        assert_eq!(int("-12"), Some(-12));
        assert_eq!(int("1772409600000000"), Some(1_772_409_600_000_000));
        assert_eq!(int("999999999999999999"), Some(999_999_999_999_999_999));
        for s in ["-0", "1.0", "1e3", "1000000000000000000"] {
            assert_eq!(int(s), None, "{s}");
        }
        assert_eq!(Parser { text: "4294967296", pos: 0 }.u32(), None);
        assert_eq!(Parser { text: "4294967295", pos: 0 }.u32(), Some(u32::MAX));
    }

    #[test]
    fn escapes_decode_and_dubious_ones_are_refused() {
        let s = |t: &str| Parser { text: t, pos: 0 }.string().map(Cow::into_owned);
        assert_eq!(s(r#""r\u00e9sum\u00e9 \"q\" \\ \/ \n""#).as_deref(), Some("résumé \"q\" \\ / \n"));
        assert_eq!(s(r#""\ud83d\ude00x""#).as_deref(), Some("😀x"));
        for t in [r#""\ud800""#, r#""\ude00""#, r#""\x""#, "\"tab\tin\"", r#""open"#] {
            assert_eq!(s(t), None, "{t}");
        }
    }
}
