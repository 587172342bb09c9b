//! request-validation's JSON body reader: the body as the `serde_json::Value`
//! that `serde_json::from_slice` gives (same parser, limits and errors; the
//! same map, last key wins), together with whether the bytes as sent could
//! be read as anything other than that value.
//!
//! The upstream must parse exactly what was validated. Re-encoding every
//! body guarantees it but costs about as much as parsing; it is needed only
//! where JSON parsers disagree about text serde_json accepts:
//!
//! - a key repeated in an object (`{"a":1,"a":2}`, also when spelled with
//!   escapes, `"\u0061"`): parsers keep the first, the last, or refuse;
//! - a number serde_json reads inexactly: more significant digits than an
//!   f64 holds (`100000000000000000000000000001`, `1.00000000000000000001`)
//!   or beyond the normal range (`1e-400` is read as 0): a parser keeping
//!   integers or decimals exactly sees another value than the validator.
//!
//! Such a body is re-encoded from the validated value. What serde_json
//! refuses cannot pass at all: a UTF-8 byte order mark, a lone surrogate
//! escape (`"\ud800"`), invalid UTF-8, control characters in strings,
//! numbers beyond f64's range, trailing text, nesting deeper than 128.

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Why a body must be re-encoded before it goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Differential {
    /// An object names a key twice; the value holds the last.
    DuplicateKey,
    /// A number literal says (or, the test being conservative, may say)
    /// another value than the one the validator saw.
    InexactNumber,
}

pub(super) struct JsonBody {
    pub(super) value: Value,
    /// `None`: the bytes as sent say exactly `value` (no key twice, every
    /// number exact), so a conforming parser reads what was validated.
    pub(super) differential: Option<Differential>,
}

/// Parse `raw` as `serde_json::from_slice::<Value>` does.
pub(super) fn parse(raw: &[u8]) -> Result<JsonBody, serde_json::Error> {
    let notes = Notes::default();
    let mut de = serde_json::Deserializer::from_slice(raw);
    let value = ValueSeed(&notes).deserialize(&mut de)?;
    de.end()?;
    let differential = if notes.duplicate_key.get() {
        Some(Differential::DuplicateKey)
    } else if !notes.numbers_exact(raw) {
        Some(Differential::InexactNumber)
    } else {
        None
    };
    Ok(JsonBody {
        value,
        differential,
    })
}

#[derive(Default)]
pub(super) struct Notes {
    duplicate_key: Cell<bool>,
    /// Numbers seen so far; serde_json visits each number literal once, in
    /// the order of the text.
    numbers: Cell<usize>,
    /// Which of them (counting from 1) was the last that serde_json handed
    /// over as an f64 (a fraction, an exponent, `-0`, an integer beyond
    /// u64/i64); 0 for none. Integers within u64/i64 are read exactly.
    last_float: Cell<usize>,
}

impl Notes {
    /// An integer serde_json read exactly.
    pub(super) fn number(&self) {
        self.numbers.set(self.numbers.get() + 1);
    }

    /// A number serde_json handed over as an f64.
    pub(super) fn float(&self) {
        self.number();
        self.last_float.set(self.numbers.get());
    }

    /// Whether every number literal of `raw` says exactly what serde_json
    /// read (see [`numbers_read_exactly`]).
    pub(super) fn numbers_exact(&self, raw: &[u8]) -> bool {
        self.last_float.get() == 0 || numbers_read_exactly(raw, self.last_float.get())
    }
}

/// `serde_json::Value`'s own `Deserialize`, noting what [`Notes`] asks.
/// serde_json's `Deserializer` (without `arbitrary_precision`) calls only
/// the methods below; recursion depth is its business, as for `Value`.
#[derive(Clone, Copy)]
struct ValueSeed<'a>(&'a Notes);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        self.0.number();
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        self.0.number();
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        self.0.float();
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(self)?;
            // As serde_json's `Value`: the last value, at the first key's
            // place (preserve_order).
            if object.insert(key, value).is_some() {
                self.0.duplicate_key.set(true);
            }
        }
        Ok(Value::Object(object))
    }
}

/// Whether every number literal in `raw` (JSON serde_json has accepted),
/// up to the `last_float`th, denotes exactly the value serde_json read and
/// would write back: then a parser keeping decimals or big integers exactly
/// sees what the validator saw, and one reading f64 too (serde_json's floats
/// are correctly rounded: jsonschema turns on its `float_roundtrip`).
/// Literals after the last float are integers serde_json read exactly.
///
/// Integers within u64 (negative: within i64) are read exactly. Other
/// literals are exact when they have at most 15 significant digits and lie
/// in f64's normal range (or are zero): two different decimals of 15 digits
/// are more than one f64 step apart, so the literal is the shortest text of
/// its f64, the one serde_json writes. The test is conservative: a 16- or
/// 17-digit literal that happens to be exact is re-encoded all the same.
fn numbers_read_exactly(raw: &[u8], last_float: usize) -> bool {
    let mut seen = 0;
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        i = match b {
            b'"' => skip_string(raw, i + 1),
            b'-' | b'0'..=b'9' => {
                let (end, exact) = number(raw, i);
                seen += 1;
                if !exact {
                    return false;
                }
                if seen == last_float {
                    return true;
                }
                end
            }
            _ => i + 1,
        };
    }
    // Fewer literals than serde_json visited: this reading went wrong
    // somewhere, so the body is not vouched for.
    false
}

/// Bytes of a string read one by one before handing the rest to memchr.
const SHORT_STRING: usize = 24;

/// The index after the string whose contents start at `i`. Most strings
/// are short keys and values, where a plain loop beats memchr's setup (a
/// call per string cost about 100 instructions); past their first bytes,
/// memchr finds the next quote or backslash in long ones.
fn skip_string(raw: &[u8], mut i: usize) -> usize {
    let short_end = raw.len().min(i + SHORT_STRING);
    while i < short_end {
        match raw[i] {
            b'"' => return i + 1,
            // Skip the backslash and the character it escapes.
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    loop {
        match memchr::memchr2(b'"', b'\\', raw.get(i..).unwrap_or_default()) {
            None => return raw.len(),
            Some(at) if raw[i + at] == b'"' => return i + at + 1,
            // A backslash: skip it and the character it escapes.
            Some(at) => i += at + 2,
        }
    }
}

/// The number literal at `start` (valid JSON): where it ends and whether it
/// is exact.
fn number(raw: &[u8], start: usize) -> (usize, bool) {
    let digits_from = |mut i: usize| {
        while raw.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let negative = raw.get(start) == Some(&b'-');
    let int_start = start + usize::from(negative);
    let int_end = digits_from(int_start);
    let mut end = int_end;
    if raw.get(end) == Some(&b'.') {
        end = digits_from(end + 1);
    }
    let mantissa_end = end;
    let mut exponent: i64 = 0;
    if matches!(raw.get(end), Some(b'e' | b'E')) {
        end += 1;
        let negative_exponent = raw.get(end) == Some(&b'-');
        if matches!(raw.get(end), Some(b'+' | b'-')) {
            end += 1;
        }
        let exponent_start = end;
        end = digits_from(end);
        for d in &raw[exponent_start..end] {
            exponent = exponent
                .saturating_mul(10)
                .saturating_add(i64::from(d - b'0'));
        }
        if negative_exponent {
            exponent = -exponent;
        }
    }
    let mantissa = &raw[int_start..mantissa_end];
    if mantissa_end == end && mantissa.len() == int_end - int_start {
        // An integer: serde_json keeps it exactly within u64 (negative:
        // within i64, but -0 is a float, which is exact too).
        let fits = mantissa.len() <= 18
            || mantissa
                .iter()
                .try_fold(0u64, |n, d| {
                    n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
                })
                .is_some_and(|n| !negative || n <= 1 << 63);
        if fits {
            return (end, true);
        }
    }
    // The power of ten of the digit at `at` in the mantissa.
    let integer_digits = (int_end - int_start) as i64;
    let power = |at: usize| {
        let at = at as i64;
        if at < integer_digits {
            integer_digits - 1 - at
        } else {
            integer_digits - at
        }
    };
    let significant = |d: &u8| matches!(d, b'1'..=b'9');
    let (Some(lead), Some(last)) = (
        mantissa.iter().position(significant),
        mantissa.iter().rposition(significant),
    ) else {
        // Zero, however written.
        return (end, true);
    };
    let digits = power(lead) - power(last) + 1;
    let magnitude = power(lead).saturating_add(exponent);
    (end, digits <= 15 && (-307..=307).contains(&magnitude))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// serde_json's reading and its text (a preserve_order map compares
    /// equal whatever the order; the text does not).
    fn serde(raw: &[u8]) -> Result<(Value, String), String> {
        serde_json::from_slice::<Value>(raw)
            .map(|v| {
                let text = v.to_string();
                (v, text)
            })
            .map_err(|e| e.to_string())
    }

    fn ours(raw: &[u8]) -> Result<(Value, String), String> {
        parse(raw)
            .map(|b| {
                let text = b.value.to_string();
                (b.value, text)
            })
            .map_err(|e| e.to_string())
    }

    fn differential(raw: &str) -> Option<Differential> {
        parse(raw.as_bytes()).unwrap().differential
    }

    #[test]
    fn reads_every_body_as_serde_json_does() {
        let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        let bodies: Vec<&[u8]> = vec![
            br#"{"a": 1, "b": [true, false, null, -2, 3.5, "x\n\u00e9\ud83d\ude00"], "c": {}}"#,
            br#"{"b": 1, "a": 2, "b": 3}"#,
            br#"{"a": 1, "\u0061": 2}"#,
            br#"[18446744073709551615, 18446744073709551616, -9223372036854775808, -9223372036854775809, -0, 0.0, 1e-400, 1E2]"#,
            b"  \"text\"\r\n",
            b"null",
            b"",
            b"\xEF\xBB\xBF{}",
            br#"{"a": "\ud800"}"#,
            br#"{"a": "\udc00"}"#,
            b"{\"a\": \"\xff\"}",
            b"{\"a\": \"\x01\"}",
            b"{\"a\": 1e400}",
            b"{\"a\": 1} {}",
            b"{\"a\": 1,}",
            b"{\"a\": 01}",
            b"[NaN]",
            b"{\"a\": 1",
            deep.as_bytes(),
        ];
        for raw in bodies {
            assert_eq!(ours(raw), serde(raw), "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn duplicate_keys_are_noted_however_they_are_spelled() {
        assert_eq!(
            differential(r#"{"a": {"b": 1, "b": 2}}"#),
            Some(Differential::DuplicateKey)
        );
        assert_eq!(
            differential(r#"[{"a": 1}, {"a": 1, "\u0061": 1}]"#),
            Some(Differential::DuplicateKey)
        );
        assert_eq!(differential(r#"{"a": 1, "A": 1, "a ": 1}"#), None);
        assert_eq!(differential(r#"[{"a": 1}, {"a": 1}]"#), None);
    }

    #[test]
    fn numbers_serde_json_reads_inexactly_are_noted() {
        for exact in [
            "0",
            "-0",
            "-0.0",
            "0e-999",
            "1",
            "-1",
            "18446744073709551615",
            "-9223372036854775808",
            "1.5",
            "10.5",
            "0.1",
            "-0.000001",
            "1E2",
            "1e+2",
            "1.50000",
            "123456789012345",
            "1.23456789012345e300",
            "1e-307",
            "100000000000000000000",
            "-10000000000000000000",
            "[1.5, \"1.00000000000000000001\", {\"k\\\"1.00000000000000000001\": 2}]",
        ] {
            assert_eq!(differential(exact), None, "{exact}");
        }
        for inexact in [
            "18446744073709551617",
            "-9223372036854775809",
            "100000000000000000000000000001",
            "1.00000000000000000001",
            "0.30000000000000004",
            "1.234567890123456",
            "1e-400",
            "4e-324",
            "1e-308",
            "[1, {\"a\": [2.5, 3.0000000000000000001]}]",
        ] {
            assert_eq!(
                differential(inexact),
                Some(Differential::InexactNumber),
                "{inexact}"
            );
        }
    }

    /// A small deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Numbers in strings are text: the scan passes over every string,
    /// escapes and all, whatever its length, and finds what follows.
    #[test]
    fn strings_are_passed_over_exactly() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let pieces = [
            "a", "\"", "\\", "\u{e9}", "1e-400", ".", "\\u0022", "\n", "/",
        ];
        for _ in 0..3_000 {
            let text: String = (0..rng.below(40))
                .map(|_| pieces[rng.below(pieces.len() as u64) as usize])
                .collect();
            let s = Value::String(text).to_string();
            let after = format!("[{s}, {s}, 1.00000000000000000001, {s}]");
            assert_eq!(
                differential(&after),
                Some(Differential::InexactNumber),
                "{after}"
            );
            let within = format!("[{s}, 1.5, {s}]");
            assert_eq!(differential(&within), None, "{within}");
            assert_eq!(skip_string(s.as_bytes(), 1), s.len(), "{s}");
        }
    }

    fn random_literal(rng: &mut Rng) -> String {
        let mut s = String::new();
        if rng.below(2) == 0 {
            s.push('-');
        }
        let int_digits = 1 + rng.below(22);
        for k in 0..int_digits {
            let d = if k == 0 && int_digits > 1 {
                1 + rng.below(9)
            } else {
                rng.below(10)
            };
            s.push(char::from(b'0' + d as u8));
        }
        if rng.below(2) == 0 {
            s.push('.');
            for _ in 0..1 + rng.below(20) {
                s.push(char::from(b'0' + rng.below(10) as u8));
            }
        }
        if rng.below(2) == 0 {
            s.push(if rng.below(2) == 0 { 'e' } else { 'E' });
            s.push_str(["", "+", "-"][rng.below(3) as usize]);
            s.push_str(&rng.below(330).to_string());
        }
        s
    }

    /// `(negative, digits without leading or trailing zeros, power of ten of
    /// the last digit)` of a decimal literal; zero is `(_, "", 0)`.
    fn decimal(text: &str) -> (bool, String, i64) {
        let (negative, text) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match text.split_once(['e', 'E']) {
            Some((m, e)) => (m, e.trim_start_matches('+').parse::<i64>().unwrap()),
            None => (text, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits = format!("{int}{frac}");
        let trimmed = digits.trim_start_matches('0').trim_end_matches('0');
        if trimmed.is_empty() {
            return (false, String::new(), 0);
        }
        let trailing = (digits.len() - digits.trim_end_matches('0').len()) as i64;
        let last = exponent - frac.len() as i64 + trailing;
        (negative, trimmed.to_string(), last)
    }

    /// Every literal the fast test calls exact says the same decimal as
    /// the text serde_json writes for what it read; and serde_json reads
    /// short literals correctly rounded (as Rust's `str::parse`), which the
    /// fast test relies on: it would fail without `float_roundtrip`.
    #[test]
    fn literals_called_exact_say_what_serde_json_writes() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut exact, mut inexact) = (0, 0);
        for _ in 0..20_000 {
            let literal = random_literal(&mut rng);
            let Ok(value) = serde_json::from_str::<Value>(&literal) else {
                continue;
            };
            let written = value.to_string();
            let (end, is_exact) = number(literal.as_bytes(), 0);
            assert_eq!(end, literal.len(), "{literal}");
            if let (Some(f), Ok(rust)) = (value.as_f64(), literal.parse::<f64>()) {
                if value.is_f64() {
                    assert_eq!(f.to_bits(), rust.to_bits(), "{literal}");
                }
            }
            if is_exact {
                exact += 1;
                let (neg_a, digits_a, last_a) = decimal(&literal);
                let (neg_b, digits_b, last_b) = decimal(&written);
                assert_eq!(
                    (digits_a.as_str(), last_a),
                    (digits_b.as_str(), last_b),
                    "{literal} read as {written}"
                );
                if !digits_a.is_empty() {
                    assert_eq!(neg_a, neg_b, "{literal} read as {written}");
                }
            } else {
                inexact += 1;
            }
        }
        assert!(exact > 1000 && inexact > 1000, "{exact} {inexact}");
    }
}
