//! Canonical JSON: the exact bytes that PCS signatures are computed over.
//!
//! The original stack signs `json.dumps(obj, sort_keys=True, separators=(",", ":"))` after
//! passing every float through `round(x, 9)`. Signatures only verify across implementations if
//! every byte agrees, so this module reproduces that output exactly:
//!
//! - object keys sorted by code point, no whitespace;
//! - strings escaped as Python's `ensure_ascii=True` does: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`,
//!   `\f`, every other character below U+0020 or above U+007E as `\uXXXX` (lower-case hex,
//!   UTF-16 surrogate pairs above U+FFFF);
//! - integers (JSON numbers without fraction or exponent that fit `i64`/`u64`) as integers;
//! - floats as Python's `repr(round(x, 9))` (see [`py_round`] and [`py_float_repr`]), so `1.0`
//!   stays `1.0` and `1.234e-05` keeps Python's exponent form;
//! - NaN and infinities are an error: Python would emit `NaN`/`Infinity`, which is not JSON.
//!
//! Integers too large for `u64` are parsed by `serde_json` as floats and are therefore written
//! as floats; Python would keep them as integers. No PCS field can hold such a value.

use serde_json::Value;
use std::fmt::Write as _;
use thiserror::Error;

/// Decimal digits every float is rounded to before it is written.
pub const FLOAT_DIGITS: i32 = 9;

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CanonError {
    /// A float is NaN or infinite.
    #[error("{path}: expected a finite number, found {value}")]
    NonFinite {
        /// JSON path of the value (`$` is the root, e.g. `$.D_hat`).
        path: String,
        /// The value as Rust prints it (`NaN`, `inf`, `-inf`).
        value: String,
    },
}

/// Python's `round(x, ndigits)` for floats: the float nearest to `x` rounded to `ndigits`
/// decimal digits, ties to even on the exact binary value of `x` (so `round(2.675, 2)` is
/// `2.67`, because 2.675 is stored as 2.67499999…).
///
/// Negative `ndigits` round to tens, hundreds, …; NaN, infinities and zeros are returned as is.
/// Where Python raises `OverflowError` (rounding the largest floats to a negative number of
/// digits) this returns an infinity of the same sign.
pub fn py_round(x: f64, ndigits: i32) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    // Every f64 has an exact decimal expansion with at most 1074 fractional digits, so
    // rounding at or beyond that position never changes the value.
    if ndigits >= 1075 {
        return x;
    }
    if ndigits >= 0 {
        return round_small(x, ndigits.unsigned_abs())
            .unwrap_or_else(|| round_by_text(x, ndigits.unsigned_abs()));
    }
    round_left_of_point(x, ndigits.unsigned_abs())
}

/// `py_round` for `ndigits >= 0` through text. Rust's fixed-precision formatting is exact and
/// rounds ties to even, which is exactly what Python's dtoa-based round does; parsing back is
/// correctly rounded too.
fn round_by_text(x: f64, ndigits: u32) -> f64 {
    let s = format!("{:.*}", ndigits as usize, x);
    s.parse::<f64>().unwrap_or(x)
}

/// `py_round` in integer arithmetic, for `ndigits <= 15` and results below 2^53 units of
/// `10^-ndigits` (every PCS float), `None` elsewhere. `x = m * 2^e` exactly, so `x * 10^nd` is
/// the integer `m * 10^nd` shifted right by `-e`, which is rounded to the nearest integer, ties
/// to even; that integer `q` and `10^nd` are both exact in an f64, and the IEEE division
/// `q / 10^nd` is the float nearest to the decimal result, as parsing it would give.
fn round_small(x: f64, ndigits: u32) -> Option<f64> {
    const POW10: [u64; 16] = [
        1,
        10,
        100,
        1_000,
        10_000,
        100_000,
        1_000_000,
        10_000_000,
        100_000_000,
        1_000_000_000,
        10_000_000_000,
        100_000_000_000,
        1_000_000_000_000,
        10_000_000_000_000,
        100_000_000_000_000,
        1_000_000_000_000_000,
    ];
    let scale = *POW10.get(ndigits as usize)?;
    let bits = x.abs().to_bits();
    let biased = (bits >> 52) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    // x = mant * 2^exp with an integer mantissa (subnormals have no implicit bit).
    let (mant, exp) = if biased == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), biased - 1075)
    };
    if exp >= 0 {
        // An integer: rounding to a fraction of a unit never changes it.
        return Some(x);
    }
    let shift = exp.unsigned_abs();
    let scaled = u128::from(mant) * u128::from(scale);
    let q = if shift >= 128 {
        // Below 2^-75 units: nearer to zero than to one unit.
        0
    } else {
        let q = scaled >> shift;
        let rem = scaled - (q << shift);
        let half = 1u128 << (shift - 1);
        if rem > half || (rem == half && q & 1 == 1) {
            q + 1
        } else {
            q
        }
    };
    if q >= 1u128 << 53 {
        return None;
    }
    let r = q as f64 / scale as f64;
    Some(if x.is_sign_negative() { -r } else { r })
}

/// `py_round` for negative `ndigits`: rounds the exact integer part at `places` digits left of
/// the decimal point, ties to even.
fn round_left_of_point(x: f64, places: u32) -> f64 {
    let negative = x.is_sign_negative();
    // The exact decimal expansion of |x|; only the integer part and whether anything non-zero
    // follows matter.
    let exact = format!("{:.1074}", x.abs());
    let (int_part, frac_part) = exact.split_once('.').unwrap_or((exact.as_str(), ""));
    let frac_nonzero = frac_part.bytes().any(|b| b != b'0');
    let digits: Vec<u8> = int_part.bytes().map(|b| b - b'0').collect();
    let places = places as usize;
    let signed_zero = if negative { -0.0 } else { 0.0 };
    if places > digits.len() {
        return signed_zero;
    }
    let keep = digits.len() - places;
    let (head, tail) = digits.split_at(keep);
    // Compare the dropped part with one half of 10^places.
    let first = tail.first().copied().unwrap_or(0);
    let rest_nonzero = tail.iter().skip(1).any(|&d| d != 0) || frac_nonzero;
    let round_up = match first.cmp(&5) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => rest_nonzero || head.last().is_some_and(|d| d % 2 == 1),
    };
    let mut kept: Vec<u8> = head.to_vec();
    if round_up {
        let mut i = kept.len();
        loop {
            if i == 0 {
                kept.insert(0, 1);
                break;
            }
            i -= 1;
            if kept[i] == 9 {
                kept[i] = 0;
            } else {
                kept[i] += 1;
                break;
            }
        }
    }
    if kept.iter().all(|&d| d == 0) {
        return signed_zero;
    }
    let mut s = String::with_capacity(kept.len() + places + 1);
    if negative {
        s.push('-');
    }
    s.extend(kept.iter().map(|&d| char::from(b'0' + d)));
    s.extend(std::iter::repeat_n('0', places));
    s.parse::<f64>().unwrap_or(x)
}

/// Python's `repr(float)`: the shortest digits that round-trip, in fixed notation when
/// `1e-4 <= |x| < 1e16` (with `.0` on integral values) and as `d.ddde±XX` otherwise
/// (`1e-05`, `1e+16`, `1.2345678901234568e+17`). NaN and infinities give `nan`, `inf`, `-inf`.
pub fn py_float_repr(x: f64) -> String {
    let mut out = String::with_capacity(24);
    write_py_float_repr(&mut out, x);
    out
}

/// A fixed buffer for one `{:e}` rendering of an f64 (at most 24 bytes: `-1.7976931348623157e308`).
struct SciBuf {
    buf: [u8; 32],
    len: usize,
}

impl std::fmt::Write for SciBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// [`py_float_repr`] appended to `out`.
fn write_py_float_repr(out: &mut String, x: f64) {
    if x.is_nan() {
        out.push_str("nan");
        return;
    }
    if x.is_infinite() {
        out.push_str(if x > 0.0 { "inf" } else { "-inf" });
        return;
    }
    // `{:e}` yields the shortest round-trip digits with a decimal exponent, e.g. `-1.234e-5`.
    let mut sci = SciBuf {
        buf: [0; 32],
        len: 0,
    };
    if write!(sci, "{:e}", x.abs()).is_err() {
        // Cannot happen for an f64; keep the slow path rather than a wrong answer.
        let owned = format!("{:e}", x.abs());
        return write_sci_as_python(out, x.is_sign_negative(), owned.as_bytes());
    }
    write_sci_as_python(out, x.is_sign_negative(), &sci.buf[..sci.len]);
}

/// Rewrites Rust's `d.ddde-X` (of a non-negative finite float) in Python's notation.
fn write_sci_as_python(out: &mut String, negative: bool, sci: &[u8]) {
    let at = sci.iter().position(|&b| b == b'e').unwrap_or(sci.len());
    let (mantissa, exp) = sci.split_at(at);
    let exp: i32 = std::str::from_utf8(exp.get(1..).unwrap_or_default())
        .ok()
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    // The digits without the point: at most 17, all ASCII.
    let mut digits = [0u8; 24];
    let mut n = 0;
    for &b in mantissa {
        if b != b'.' && n < digits.len() {
            digits[n] = b;
            n += 1;
        }
    }
    let digits = std::str::from_utf8(&digits[..n]).unwrap_or("0");
    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let sign = if exp < 0 { '-' } else { '+' };
        let _ = write!(out, "e{sign}{:02}", exp.unsigned_abs());
    }
}

/// The canonical form of one float: `repr(round(x, 9))`, or an error naming `path` for NaN and
/// infinities.
pub fn canonical_float(x: f64, path: &str) -> Result<String, CanonError> {
    let mut out = String::with_capacity(24);
    write_float(&mut out, x, path)?;
    Ok(out)
}

/// [`canonical_float`] appended to `out`.
pub fn write_float(out: &mut String, x: f64, path: &str) -> Result<(), CanonError> {
    if !x.is_finite() {
        return Err(CanonError::NonFinite {
            path: path.to_owned(),
            value: x.to_string(),
        });
    }
    write_py_float_repr(out, py_round(x, FLOAT_DIGITS));
    Ok(())
}

/// The canonical JSON text of `v` (see the module documentation for the exact rules).
pub fn canonical_json(v: &Value) -> Result<String, CanonError> {
    let mut out = String::new();
    write_value(&mut out, v, &mut String::from("$"))?;
    Ok(out)
}

/// The canonical JSON of `v` as UTF-8 bytes (it is pure ASCII).
pub fn canonical_bytes(v: &Value) -> Result<Vec<u8>, CanonError> {
    canonical_json(v).map(String::into_bytes)
}

fn write_value(out: &mut String, v: &Value, path: &mut String) -> Result<(), CanonError> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else {
                write_float(out, n.as_f64().unwrap_or(f64::NAN), path)?;
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let len = path.len();
                let _ = write!(path, "[{i}]");
                write_value(out, item, path)?;
                path.truncate(len);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Byte order of UTF-8 equals code-point order, which is what Python sorts by.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(out, k);
                out.push(':');
                let len = path.len();
                path.push('.');
                path.push_str(k);
                if let Some(item) = map.get(k) {
                    write_value(out, item, path)?;
                }
                path.truncate(len);
            }
            out.push('}');
        }
    }
    Ok(())
}

/// Writes `s` as a JSON string the way Python's `ensure_ascii=True` encoder does.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    // Runs of printable ASCII other than `"` and `\` are copied as they are.
    let plain = |b: u8| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\';
    let mut rest = s;
    while !rest.is_empty() {
        let run = rest.bytes().position(|b| !plain(b)).unwrap_or(rest.len());
        out.push_str(&rest[..run]);
        rest = &rest[run..];
        let Some(c) = rest.chars().next() else { break };
        rest = &rest[c.len_utf8()..];
        write_char(out, c);
    }
    out.push('"');
}

fn write_char(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{08}' => out.push_str("\\b"),
        '\u{0c}' => out.push_str("\\f"),
        ' '..='~' => out.push(c),
        _ => {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    /// (value, Python `repr(value)`) pairs produced by CPython 3.11.
    const REPRS: &[(f64, &str)] = &[
        (0.1, "0.1"),
        (1e-05, "1e-05"),
        (123456789012345678.0, "1.2345678901234568e+17"),
        (0.0001, "0.0001"),
        (1e16, "1e+16"),
        (-0.0, "-0.0"),
        (0.0, "0.0"),
        (1.0, "1.0"),
        (-2.5e-07, "-2.5e-07"),
        (1.234e-05, "1.234e-05"),
        (9999999999999998.0, "9999999999999998.0"),
        (1e15, "1000000000000000.0"),
        (123.456, "123.456"),
        (0.00012345, "0.00012345"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (1152921504606846976.0, "1.152921504606847e+18"),
        (0.30000000000000004, "0.30000000000000004"),
        (-1e100, "-1e+100"),
        (12345.678901234567, "12345.678901234567"),
        (1.5e300, "1.5e+300"),
        (0.99999, "0.99999"),
    ];

    #[test]
    fn repr_matches_python() {
        for (x, want) in REPRS {
            assert_eq!(py_float_repr(*x), *want, "repr({x:e})");
        }
        assert_eq!(py_float_repr(f64::NAN), "nan");
        assert_eq!(py_float_repr(f64::NEG_INFINITY), "-inf");
    }

    /// (x, ndigits, Python `repr(round(x, ndigits))`) from CPython 3.11.
    const ROUNDS: &[(f64, i32, &str)] = &[
        (2.675, 2, "2.67"),
        (0.5, 0, "0.0"),
        (1.5, 0, "2.0"),
        (2.5, 0, "2.0"),
        (-0.5, 0, "-0.0"),
        (0.125, 2, "0.12"),
        (0.375, 2, "0.38"),
        (0.7312345678, 9, "0.731234568"),
        (1.9477593894860437, 9, "1.947759389"),
        (1.234e-05, 9, "1.234e-05"),
        (1e-10, 9, "0.0"),
        (-1e-10, 9, "-0.0"),
        (5e-10, 9, "1e-09"),
        (1.5e-09, 9, "1e-09"),
        (123456789.12345679, 9, "123456789.12345679"),
        (1e300, 9, "1e+300"),
        (1234.5, -1, "1230.0"),
        (1235.0, -1, "1240.0"),
        (1225.0, -2, "1200.0"),
        (1250.0, -2, "1200.0"),
        (1350.0, -2, "1400.0"),
        (-1250.1, -2, "-1300.0"),
        (49.0, -2, "0.0"),
        (-49.0, -2, "-0.0"),
        (99999.0, -3, "100000.0"),
        (1.7976931348623157e308, -300, "1.79769313e+308"),
        (0.275741330607465, 9, "0.275741331"),
    ];

    #[test]
    fn round_matches_python() {
        for (x, nd, want) in ROUNDS {
            assert_eq!(
                py_float_repr(py_round(*x, *nd)),
                *want,
                "round({x:e}, {nd})"
            );
        }
        assert!(py_round(f64::NAN, 3).is_nan());
        assert_eq!(py_round(0.1, 2000), 0.1);
        assert_eq!(py_round(1.7976931348623157e308, -308), f64::INFINITY);
    }

    #[test]
    fn json_matches_python_dumps() {
        // json.dumps(obj, sort_keys=True, separators=(",", ":")) in CPython 3.11.
        let v = json!({
            "b": [1, 2.0, -3, 1e-05, true, null],
            "a": "h\u{e9}llo \u{1f600} \"q\" \\ \n\t\u{01}\u{7f}\u{08}\u{0c}\r",
            "\u{e9}": {"z": 0.1234567891234, "y": 18446744073709551615u64},
            "A": -9223372036854775808i64
        });
        let want = r#"{"A":-9223372036854775808,"a":"h\u00e9llo \ud83d\ude00 \"q\" \\ \n\t\u0001\u007f\b\f\r","b":[1,2.0,-3,1e-05,true,null],"\u00e9":{"y":18446744073709551615,"z":0.123456789}}"#;
        assert_eq!(canonical_json(&v).unwrap(), want);
    }

    /// Every float class the integer rounding must agree with the text rounding on: values
    /// near ties, subnormals, integers, results near 2^53 units.
    fn interesting_floats() -> impl proptest::strategy::Strategy<Value = f64> {
        use proptest::prelude::*;
        prop_oneof![
            any::<f64>().prop_filter("finite", |x| x.is_finite()),
            -1e7f64..1e7,
            -1.0f64..1.0,
            (any::<i32>(), 0u32..12).prop_map(|(m, k)| f64::from(m) / 10f64.powi(k as i32)),
            (any::<i64>(), 1u32..20).prop_map(|(m, k)| (m >> 11) as f64 / 2f64.powi(k as i32)),
            (0u64..1 << 52).prop_map(f64::from_bits),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        #[test]
        fn integer_rounding_equals_text_rounding(x in interesting_floats(), nd in 0u32..16) {
            if let Some(r) = round_small(x, nd) {
                let want = round_by_text(x, nd);
                proptest::prop_assert_eq!(r.to_bits(), want.to_bits(), "round({:e}, {})", x, nd);
            }
        }

        #[test]
        fn string_runs_are_escaped_as_one_char_at_a_time(s in "\\PC{0,40}|[ -~\\\\\"\\n\\x01\\u{e9}\\u{1f600}]{0,40}") {
            let mut fast = String::new();
            write_str(&mut fast, &s);
            let mut slow = String::from("\"");
            for c in s.chars() {
                write_char(&mut slow, c);
            }
            slow.push('"');
            proptest::prop_assert_eq!(fast, slow);
        }
    }

    #[test]
    fn integer_rounding_covers_the_pcs_floats_and_leaves_the_rest_to_text() {
        assert_eq!(round_small(0.275741330607465, 9), Some(0.275741331));
        assert_eq!(round_small(2.675, 2), Some(2.67));
        assert_eq!(
            round_small(-1e-10, 9).map(f64::to_bits),
            Some((-0.0f64).to_bits())
        );
        assert_eq!(round_small(1e300, 9), Some(1e300));
        assert_eq!(round_small(1e8, 9), None, "10^17 units is past 2^53");
        assert_eq!(round_small(0.5, 16), None);
    }

    #[test]
    fn non_finite_is_an_error_naming_the_path() {
        let err = canonical_float(f64::NAN, "$.D_hat").unwrap_err();
        assert_eq!(
            err.to_string(),
            "$.D_hat: expected a finite number, found NaN"
        );
        assert!(canonical_float(f64::INFINITY, "$.r").is_err());
    }
}
