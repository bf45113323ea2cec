//! A parser of the Prometheus text exposition format, version 0.0.4.
//!
//! Written here rather than taken from a crate: the existing parsers (e.g. `prometheus-parse`)
//! drop bad lines silently and pull in `chrono` and `regex`, while the sidecar must count every
//! malformed line (`skipped("malformed_line", n)`) and stay small. It never panics, whatever
//! the input (a property test checks it).
//!
//! Grammar (one item per line, `\n` or `\r\n`):
//! - blank lines are ignored;
//! - `# HELP name text` is accepted and ignored; `# TYPE name counter|gauge|histogram|summary|untyped`
//!   declares the family's type (a second `TYPE` for one family, an unknown type or a bad name
//!   is a malformed line); any other `#` line is a comment;
//! - a sample: `name[{label="value",...}] value [timestamp]` where `name` is
//!   `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names are `[a-zA-Z_][a-zA-Z0-9_]*`, label values are
//!   double-quoted with the escapes `\\`, `\"` and `\n`, a trailing comma is allowed, the
//!   value is a float (`NaN`, `+Inf`, `-Inf` included) and the timestamp an integer number of
//!   milliseconds since the Unix epoch. Blanks (spaces, tabs) separate the parts. A repeated
//!   label name, a missing value or anything after the timestamp makes the line malformed.
//!
//! The family of a series named `x_bucket`, `x_sum` or `x_count` is `x` when `x` is declared
//! a histogram or summary ([`Exposition::kind_of`]).

use std::collections::HashMap;

/// The type a `# TYPE` line declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// A monotonically increasing count.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// `_bucket`, `_sum` and `_count` series, all cumulative.
    Histogram,
    /// Quantile series (gauges) and cumulative `_sum` and `_count`.
    Summary,
    /// Declared `untyped`.
    Untyped,
}

/// How a series' values are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Cumulative: turned into a per-second rate between scrapes.
    Counter,
    /// Taken as it is.
    Gauge,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Metric name of the series (`http_requests_total`, `rpc_seconds_bucket`).
    pub name: String,
    /// Labels in the order written.
    pub labels: Vec<(String, String)>,
    /// The value (may be NaN or infinite).
    pub value: f64,
    /// The exposition timestamp, ms since the Unix epoch.
    pub ts_ms: Option<i64>,
}

/// A line that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub reason: &'static str,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    /// The samples, in order.
    pub series: Vec<Series>,
    /// Declared family types.
    pub types: HashMap<String, MetricType>,
    /// Malformed lines (at most the first 100 are kept; see `malformed`).
    pub errors: Vec<LineError>,
    /// Number of malformed lines.
    pub malformed: u64,
}

impl Exposition {
    /// The declared type of the series' family, with histogram and summary suffixes resolved.
    pub fn type_of(&self, series_name: &str) -> Option<(MetricType, &'static str)> {
        if let Some(t) = self.types.get(series_name) {
            return Some((*t, ""));
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = series_name.strip_suffix(suffix) {
                match self.types.get(base) {
                    Some(MetricType::Histogram) => return Some((MetricType::Histogram, suffix)),
                    Some(MetricType::Summary) if suffix != "_bucket" => {
                        return Some((MetricType::Summary, suffix));
                    }
                    _ => {}
                }
            }
        }
        None
    }

    /// Counter or gauge: counters are `TYPE counter`, every series of a histogram, the `_sum`
    /// and `_count` of a summary, and undeclared (or `untyped`) names ending in `_total`.
    pub fn kind_of(&self, series_name: &str) -> ValueKind {
        match self.type_of(series_name) {
            Some((MetricType::Counter, _)) | Some((MetricType::Histogram, _)) => ValueKind::Counter,
            Some((MetricType::Summary, "")) => ValueKind::Gauge,
            Some((MetricType::Summary, _)) => ValueKind::Counter,
            Some((MetricType::Gauge, _)) => ValueKind::Gauge,
            Some((MetricType::Untyped, _)) | None => {
                if series_name.ends_with("_total") {
                    ValueKind::Counter
                } else {
                    ValueKind::Gauge
                }
            }
        }
    }
}

/// Parses a whole exposition; malformed lines are counted, never fatal.
pub fn parse(text: &str) -> Exposition {
    let mut out = Exposition::default();
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let result = if line.trim_start_matches([' ', '\t']).starts_with('#') {
            parse_comment(line, &mut out.types)
        } else if line.trim_matches([' ', '\t']).is_empty() {
            Ok(())
        } else {
            parse_sample(line).map(|s| out.series.push(s))
        };
        if let Err(reason) = result {
            out.malformed += 1;
            if out.errors.len() < 100 {
                out.errors.push(LineError {
                    line: i + 1,
                    reason,
                });
            }
        }
    }
    out
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn parse_comment(line: &str, types: &mut HashMap<String, MetricType>) -> Result<(), &'static str> {
    let rest = line.trim_start_matches([' ', '\t']);
    let rest = &rest[1..];
    let mut words = rest.split([' ', '\t']).filter(|w| !w.is_empty());
    match words.next() {
        Some("TYPE") => {
            let name = words.next().ok_or("TYPE without a metric name")?;
            if !valid_metric_name(name) {
                return Err("TYPE with an invalid metric name");
            }
            let t = match words.next() {
                Some("counter") => MetricType::Counter,
                Some("gauge") => MetricType::Gauge,
                Some("histogram") => MetricType::Histogram,
                Some("summary") => MetricType::Summary,
                Some("untyped") => MetricType::Untyped,
                Some(_) => return Err("TYPE with an unknown type"),
                None => return Err("TYPE without a type"),
            };
            if words.next().is_some() {
                return Err("TYPE with extra words");
            }
            match types.entry(name.to_string()) {
                std::collections::hash_map::Entry::Occupied(_) => {
                    Err("second TYPE line for one metric")
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(t);
                    Ok(())
                }
            }
        }
        Some("HELP") => {
            let name = words.next().ok_or("HELP without a metric name")?;
            if valid_metric_name(name) {
                Ok(())
            } else {
                Err("HELP with an invalid metric name")
            }
        }
        _ => Ok(()),
    }
}

fn valid_metric_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_' || b[0] == b':')
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn skip_blanks(&mut self) {
        while self.peek().is_some_and(is_blank) {
            self.pos += 1;
        }
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        // Only ASCII bytes are taken, so both ends are character boundaries.
        self.s.get(start..self.pos).unwrap_or("")
    }
}

fn parse_sample(line: &str) -> Result<Series, &'static str> {
    let mut c = Cursor { s: line, pos: 0 };
    c.skip_blanks();
    let name = c.take_while(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
    if !valid_metric_name(name) {
        return Err("invalid metric name");
    }
    let mut labels = Vec::new();
    let after_name = c.pos;
    c.skip_blanks();
    if c.peek() == Some(b'{') {
        c.pos += 1;
        labels = parse_labels(&mut c)?;
    } else {
        c.pos = after_name;
    }
    let after_name = c.pos;
    c.skip_blanks();
    if c.pos == after_name && c.peek().is_some() {
        return Err("expected a blank before the value");
    }
    let value_text = c.take_while(|b| !is_blank(b));
    if value_text.is_empty() {
        return Err("missing value");
    }
    let value = parse_value(value_text).ok_or("value is not a number")?;
    c.skip_blanks();
    let ts_text = c.take_while(|b| !is_blank(b));
    let ts_ms = if ts_text.is_empty() {
        None
    } else {
        Some(parse_timestamp(ts_text).ok_or("timestamp is not an integer")?)
    };
    c.skip_blanks();
    if c.peek().is_some() {
        return Err("unexpected text after the timestamp");
    }
    Ok(Series {
        name: name.to_string(),
        labels,
        value,
        ts_ms,
    })
}

fn parse_labels(c: &mut Cursor<'_>) -> Result<Vec<(String, String)>, &'static str> {
    let mut labels: Vec<(String, String)> = Vec::new();
    loop {
        c.skip_blanks();
        match c.peek() {
            Some(b'}') => {
                c.pos += 1;
                return Ok(labels);
            }
            None => return Err("unclosed label set"),
            _ => {}
        }
        let lname = c.take_while(|b| b.is_ascii_alphanumeric() || b == b'_');
        let lb = lname.as_bytes();
        if lb.is_empty() || lb[0].is_ascii_digit() {
            return Err("invalid label name");
        }
        c.skip_blanks();
        if c.peek() != Some(b'=') {
            return Err("expected = after a label name");
        }
        c.pos += 1;
        c.skip_blanks();
        if c.peek() != Some(b'"') {
            return Err("expected a quoted label value");
        }
        c.pos += 1;
        let value = parse_quoted(c)?;
        if labels.iter().any(|(n, _)| n == lname) {
            return Err("repeated label name");
        }
        labels.push((lname.to_string(), value));
        c.skip_blanks();
        match c.peek() {
            Some(b',') => c.pos += 1,
            Some(b'}') => {}
            _ => return Err("expected , or } after a label"),
        }
    }
}

/// Reads a label value after its opening quote, through the closing quote.
fn parse_quoted(c: &mut Cursor<'_>) -> Result<String, &'static str> {
    let rest = c.s.get(c.pos..).ok_or("unclosed label value")?;
    let mut out = String::new();
    let mut chars = rest.char_indices();
    while let Some((i, ch)) = chars.next() {
        match ch {
            '"' => {
                c.pos += i + 1;
                return Ok(out);
            }
            '\\' => match chars.next() {
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                Some((_, 'n')) => out.push('\n'),
                Some(_) => return Err("invalid escape in a label value"),
                None => return Err("unclosed label value"),
            },
            other => out.push(other),
        }
    }
    Err("unclosed label value")
}

/// A Go-style float: decimal or exponent notation, `NaN`, `[+-]Inf`.
fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => return Some(f64::NAN),
        "+Inf" | "Inf" => return Some(f64::INFINITY),
        "-Inf" => return Some(f64::NEG_INFINITY),
        _ => {}
    }
    // Rust's parser also takes "inf", "infinity" and "nan" in any case; the format does not.
    if !s
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    s.parse().ok()
}

fn parse_timestamp(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The `{k="v",...}` form of labels: sorted by name, values escaped as in the exposition.
pub fn labels_text(labels: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = labels.iter().collect();
    sorted.sort();
    let mut out = String::from("{");
    for (i, (k, v)) in sorted.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for ch in v.chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn l(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_typical_exposition_parses() {
        let text = "# HELP http_requests_total The total number of HTTP requests.\n\
            # TYPE http_requests_total counter\n\
            http_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\n\
            http_requests_total{method=\"post\",code=\"400\"}    3 1395066363000\n\
            \n\
            # A plain comment\n\
            msdos_file_access_time_seconds{path=\"C:\\\\DIR\\\\FILE.TXT\",error=\"Cannot find file:\\n\\\"FILE.TXT\\\"\"} 1.458255915e9\n\
            metric_without_timestamp_and_labels 12.47\n\
            something_weird{problem=\"division by zero\"} +Inf -3982045\n\
            # TYPE rpc_duration_seconds histogram\n\
            rpc_duration_seconds_bucket{le=\"0.05\"} 24054\n\
            rpc_duration_seconds_bucket{le=\"+Inf\"} 144320\n\
            rpc_duration_seconds_sum 53423\n\
            rpc_duration_seconds_count 144320\n\
            # TYPE rpc_latency summary\n\
            rpc_latency{quantile=\"0.99\"} NaN\n\
            rpc_latency_count 9\n";
        let e = parse(text);
        assert_eq!(e.malformed, 0, "{:?}", e.errors);
        assert_eq!(e.series.len(), 11);
        assert_eq!(
            e.series[0],
            Series {
                name: "http_requests_total".into(),
                labels: l(&[("method", "post"), ("code", "200")]),
                value: 1027.0,
                ts_ms: Some(1_395_066_363_000),
            }
        );
        assert_eq!(e.series[1].value, 3.0);
        assert_eq!(
            e.series[2].labels,
            l(&[
                ("path", "C:\\DIR\\FILE.TXT"),
                ("error", "Cannot find file:\n\"FILE.TXT\"")
            ])
        );
        assert_eq!(e.series[2].value, 1.458255915e9);
        assert_eq!(e.series[2].ts_ms, None);
        assert_eq!(e.series[3].labels, vec![]);
        assert_eq!(e.series[4].value, f64::INFINITY);
        assert_eq!(e.series[4].ts_ms, Some(-3_982_045));
        assert_eq!(e.series[6].labels, l(&[("le", "+Inf")]));
        assert!(e.series[9].value.is_nan());
        assert_eq!(e.kind_of("http_requests_total"), ValueKind::Counter);
        assert_eq!(e.kind_of("rpc_duration_seconds_bucket"), ValueKind::Counter);
        assert_eq!(e.kind_of("rpc_duration_seconds_sum"), ValueKind::Counter);
        assert_eq!(e.kind_of("rpc_latency"), ValueKind::Gauge);
        assert_eq!(e.kind_of("rpc_latency_count"), ValueKind::Counter);
        assert_eq!(
            e.kind_of("metric_without_timestamp_and_labels"),
            ValueKind::Gauge
        );
        assert_eq!(e.kind_of("untyped_things_total"), ValueKind::Counter);
    }

    #[test]
    fn special_values_and_crlf() {
        let e = parse("a NaN\r\nb -Inf\r\nc +Inf 5\r\nd 1e-3\r\ne -0.5\r\n");
        assert_eq!(e.malformed, 0, "{:?}", e.errors);
        assert!(e.series[0].value.is_nan());
        assert_eq!(e.series[1].value, f64::NEG_INFINITY);
        assert_eq!(e.series[2].value, f64::INFINITY);
        assert_eq!(e.series[2].ts_ms, Some(5));
        assert_eq!(e.series[3].value, 0.001);
        assert_eq!(e.series[4].value, -0.5);
    }

    #[test]
    fn labels_allow_blanks_and_a_trailing_comma() {
        let e = parse("m{ a = \"1\" , b=\"2\", } 7\nn{} 8\n");
        assert_eq!(e.malformed, 0, "{:?}", e.errors);
        assert_eq!(e.series[0].labels, l(&[("a", "1"), ("b", "2")]));
        assert_eq!(e.series[1].labels, vec![]);
        assert_eq!(e.series[1].value, 8.0);
    }

    #[test]
    fn malformed_lines_are_counted_with_their_line_numbers() {
        let text = "good 1\n\
            1bad 2\n\
            m{a=\"1\" 3\n\
            m{a=1} 4\n\
            m{a=\"x\\q\"} 5\n\
            m{a=\"1\",a=\"2\"} 6\n\
            m\n\
            m abc\n\
            m 1 12.5\n\
            m 1 2 3\n\
            m{a=\"1\"}2\n\
            m inf\n\
            # TYPE m bogus\n\
            # TYPE\n\
            # TYPE good gauge\n\
            # TYPE good counter\n\
            also_good{x=\"é ✓\"} 2 3\n";
        let e = parse(text);
        assert_eq!(e.series.len(), 2);
        assert_eq!(e.series[1].labels, l(&[("x", "é ✓")]));
        assert_eq!(e.malformed, 14, "{:?}", e.errors);
        let lines: Vec<usize> = e.errors.iter().map(|x| x.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16]);
        assert_eq!(e.errors[4].reason, "repeated label name");
        // The first TYPE stands.
        assert_eq!(e.types.get("good"), Some(&MetricType::Gauge));
    }

    #[test]
    fn labels_print_sorted_and_escaped() {
        let labels = l(&[("zone", "b"), ("code", "a\"b\\c\nd")]);
        assert_eq!(labels_text(&labels), r#"{code="a\"b\\c\nd",zone="b"}"#);
        // Printed labels parse back to the same set.
        let e = parse(&format!("m{} 1", labels_text(&labels)));
        assert_eq!(e.malformed, 0);
        let mut back = e.series[0].labels.clone();
        back.sort();
        let mut want = labels.clone();
        want.sort();
        assert_eq!(back, want);
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(s in "\\PC*") {
            let e = parse(&s);
            prop_assert!(e.errors.len() as u64 <= e.malformed);
        }

        #[test]
        fn never_panics_on_exposition_like_text(
            s in "[a-z_{}=\",\\\\n# \t0-9.eE+-]{0,80}(\n[a-z_{}=\",\\\\ \t0-9NaIf.+-]{0,40}){0,6}"
        ) {
            let e = parse(&s);
            let lines = s.split('\n').count() as u64;
            prop_assert!(e.malformed + e.series.len() as u64 <= lines);
        }

        #[test]
        fn printed_series_parse_back(
            name in "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
            labels in proptest::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,8}", "\\PC{0,12}", 0..4),
            value in proptest::num::f64::NORMAL | proptest::num::f64::ZERO,
            ts in proptest::option::of(any::<i64>()),
        ) {
            let labels: Vec<(String, String)> = labels.into_iter().collect();
            let mut line = format!("{name}{} {value:e}", labels_text(&labels));
            if let Some(ts) = ts {
                line.push_str(&format!(" {ts}"));
            }
            let e = parse(&line);
            prop_assert_eq!(e.malformed, 0, "{:?} {}", e.errors, line);
            prop_assert_eq!(e.series.len(), 1);
            let s = &e.series[0];
            prop_assert_eq!(&s.name, &name);
            prop_assert_eq!(&s.labels, &labels);
            prop_assert_eq!(s.value, value);
            prop_assert_eq!(s.ts_ms, ts);
        }
    }
}
