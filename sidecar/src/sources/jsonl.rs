//! `type: jsonl`: follow a JSON-lines file like `tail -F`.
//!
//! Following: the file is opened at its start (`from: start`, default) or its end
//! (`from: end`, only for the first file; later files are always read from 0). Every
//! `interval` the new bytes are read (at most 1 MiB per read; with more pending the next read
//! follows at once). A partial last line is kept until its newline arrives. When the file
//! shrinks below the read position it was truncated (`copytruncate`): reading restarts at 0.
//! When the path names another file (inode or device changed: `mv`/`create` rotation), the
//! old file is read to its end (its last line counts even without a newline), then the new
//! one is opened from 0. While the path is missing, the old file is kept; a path that never
//! existed is the poll error `not_found`. A truncation and regrowth past the read position
//! within one interval cannot be seen (as with `tail`).
//!
//! Lines: optionally `encrypted` (base64 of AES-256-GCM, the format of `coherence encrypt`,
//! key `COHERENCE_AES_KEY` handed over by the engine), then one JSON object each. The
//! timestamp field (`timestampField`, default `ts`) is an RFC 3339 string or a number of
//! milliseconds since the Unix epoch — or of seconds when below 10^11. `match` keeps only
//! lines whose string fields equal the given values. `signals` lists the fields read (a
//! number, or a string holding a number); without it every top-level number except the
//! timestamp is a signal.
//!
//! Skip reasons: `decrypt`, `bad_utf8`, `bad_json` (not JSON, or not an object),
//! `bad_timestamp` (missing or unreadable), `non_finite` (a listed field holding `"NaN"`,
//! `"Infinity"`, ...), `not_a_number` (a listed field of another type), `missing_field` (a
//! listed field absent), `line_too_long` (beyond `maxLineBytes`). Poll errors: `not_found`,
//! `io`, `missing_key`.

use super::{Polled, now_ms};
use crate::config::ConfigError;
use crate::sample::{Dur, Sample, SourceStats};
use coherence_core::linecipher::LineCipher;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Bytes read per poll at most.
const READ_CHUNK: usize = 1024 * 1024;

/// Where the first file is read from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// From its first byte.
    #[default]
    Start,
    /// From its end at start-up: only lines written afterwards.
    End,
}

/// Settings of a `jsonl` source.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonlConfig {
    /// Source name.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// How often the file is checked (default 1s).
    #[serde(default = "default_interval")]
    pub interval: Dur,
    /// `start` (default) or `end`.
    #[serde(default)]
    pub from: StartAt,
    /// The timestamp field (default `ts`).
    #[serde(default = "default_ts_field")]
    pub timestamp_field: String,
    /// Fields read as signals (default: every top-level number but the timestamp).
    #[serde(default)]
    pub signals: Option<Vec<String>>,
    /// Keep only lines whose string fields equal these values.
    #[serde(default, rename = "match")]
    pub match_fields: BTreeMap<String, String>,
    /// Lines are AES-256-GCM encrypted with `COHERENCE_AES_KEY`.
    #[serde(default)]
    pub encrypted: bool,
    /// Longest line kept, bytes (default 1 MiB).
    #[serde(default = "default_max_line")]
    pub max_line_bytes: usize,
}

fn default_interval() -> Dur {
    Dur(Duration::from_secs(1))
}

fn default_ts_field() -> String {
    "ts".into()
}

fn default_max_line() -> usize {
    1024 * 1024
}

impl JsonlConfig {
    pub(crate) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(ConfigError::new(
                format!("{at}.path"),
                "expected a file path",
            ));
        }
        if self.timestamp_field.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.timestampField"),
                "expected a field name",
            ));
        }
        if let Some(signals) = &self.signals {
            if signals.is_empty() {
                return Err(ConfigError::new(
                    format!("{at}.signals"),
                    "expected at least one field (or leave signals out to read every number)",
                ));
            }
            for (i, s) in signals.iter().enumerate() {
                if s.is_empty() || *s == self.timestamp_field {
                    return Err(ConfigError::new(
                        format!("{at}.signals[{i}]"),
                        format!("expected a field name other than the timestamp, got {s:?}"),
                    ));
                }
            }
        }
        if self.max_line_bytes < 64 {
            return Err(ConfigError::new(
                format!("{at}.maxLineBytes"),
                "expected at least 64",
            ));
        }
        Ok(())
    }
}

/// Identity of a file: device and inode.
fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        (meta.dev(), meta.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        (0, 0)
    }
}

/// What one read of the followed file gave.
#[derive(Debug, Default, PartialEq)]
pub struct TailRead {
    /// Complete lines (without their newline).
    pub lines: Vec<Vec<u8>>,
    /// Lines dropped for being longer than the limit.
    pub too_long: u64,
    /// More bytes are waiting.
    pub more: bool,
}

/// Follows one path across truncation and rotation; synchronous (run it off the runtime).
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    from_end: bool,
    max_line: usize,
    file: Option<(File, (u64, u64))>,
    pos: u64,
    partial: Vec<u8>,
    /// Inside a line longer than the limit: drop bytes until its newline.
    discarding: bool,
    opened_once: bool,
}

impl Tail {
    /// Follows `path`, from its end when `from_end` (first file only).
    pub fn new(path: PathBuf, from_end: bool, max_line: usize) -> Self {
        Self {
            path,
            from_end,
            max_line,
            file: None,
            pos: 0,
            partial: Vec::new(),
            discarding: false,
            opened_once: false,
        }
    }

    /// Reads what is new.
    pub fn read(&mut self) -> std::io::Result<TailRead> {
        let mut out = TailRead::default();
        if self.file.is_none() {
            let f = File::open(&self.path)?;
            let meta = f.metadata()?;
            self.pos = if self.from_end && !self.opened_once {
                meta.len()
            } else {
                0
            };
            self.opened_once = true;
            self.file = Some((f, file_id(&meta)));
            self.partial.clear();
            self.discarding = false;
        }
        let Some((file, id)) = self.file.as_mut() else {
            return Ok(out);
        };
        let id = *id;
        let len = file.metadata()?.len();
        if len < self.pos {
            // Truncated in place: start again from 0.
            self.pos = 0;
            self.partial.clear();
            self.discarding = false;
        }
        let drained = self.read_chunk(&mut out)?;
        if !drained {
            out.more = true;
            return Ok(out);
        }
        // Rotated? Only once the old file is read to its end.
        match std::fs::metadata(&self.path) {
            Ok(meta) if file_id(&meta) != id => {
                let rest = std::mem::take(&mut self.partial);
                if !rest.is_empty() && !self.discarding {
                    out.lines.push(rest);
                }
                self.file = None;
                self.discarding = false;
                out.more = true;
            }
            _ => {}
        }
        Ok(out)
    }

    /// Reads up to [`READ_CHUNK`] bytes; `true` when the file's end was reached.
    fn read_chunk(&mut self, out: &mut TailRead) -> std::io::Result<bool> {
        let Some((file, _)) = self.file.as_mut() else {
            return Ok(true);
        };
        file.seek(SeekFrom::Start(self.pos))?;
        let mut buf = Vec::with_capacity(64 * 1024);
        let n = file
            .by_ref()
            .take(READ_CHUNK as u64)
            .read_to_end(&mut buf)?;
        self.pos += n as u64;
        let mut rest = &buf[..];
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (piece, after) = rest.split_at(nl);
            if self.discarding {
                self.discarding = false;
            } else if self.partial.len() + piece.len() > self.max_line {
                self.partial.clear();
                out.too_long += 1;
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(piece);
                out.lines.push(line);
            }
            rest = &after[1..];
        }
        if !self.discarding {
            if self.partial.len() + rest.len() > self.max_line {
                self.partial.clear();
                self.discarding = true;
                out.too_long += 1;
            } else {
                self.partial.extend_from_slice(rest);
            }
        }
        Ok(n < READ_CHUNK)
    }
}

/// Counts of what one batch of lines skipped, by reason.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Skips(pub BTreeMap<&'static str, u64>);

impl Skips {
    fn add(&mut self, reason: &'static str) {
        *self.0.entry(reason).or_default() += 1;
    }
}

/// Turns one line into samples, or says why it is skipped. `Ok(empty)` is a line filtered out
/// by `match` (or a blank line).
pub fn line_samples(
    cfg: &JsonlConfig,
    cipher: Option<&LineCipher>,
    raw: &[u8],
    skips: &mut Skips,
) -> Vec<Sample> {
    let Ok(text) = std::str::from_utf8(raw) else {
        skips.add("bad_utf8");
        return vec![];
    };
    let text = text.trim();
    if text.is_empty() {
        return vec![];
    }
    let decrypted;
    let json = if cfg.encrypted {
        match cipher.map(|c| c.decrypt_line(text)) {
            Some(Ok(t)) => {
                decrypted = t;
                decrypted.as_str()
            }
            _ => {
                skips.add("decrypt");
                return vec![];
            }
        }
    } else {
        text
    };
    let obj: Map<String, Value> = match serde_json::from_str(json) {
        Ok(Value::Object(m)) => m,
        _ => {
            skips.add("bad_json");
            return vec![];
        }
    };
    for (k, want) in &cfg.match_fields {
        if obj.get(k).and_then(Value::as_str) != Some(want.as_str()) {
            return vec![];
        }
    }
    let Some(ts_ms) = obj.get(&cfg.timestamp_field).and_then(super::json_ts_ms) else {
        skips.add("bad_timestamp");
        return vec![];
    };
    let mut out = Vec::new();
    match &cfg.signals {
        None => {
            for (k, v) in &obj {
                if *k == cfg.timestamp_field {
                    continue;
                }
                if let Some(x) = v.as_f64().filter(|x| x.is_finite()) {
                    out.push(Sample {
                        signal: k.clone(),
                        ts_ms,
                        value: x,
                    });
                }
            }
        }
        Some(fields) => {
            for f in fields {
                let value = match obj.get(f) {
                    None => {
                        skips.add("missing_field");
                        continue;
                    }
                    Some(Value::Number(n)) => n.as_f64(),
                    Some(Value::String(s)) => match s.trim().parse::<f64>() {
                        Ok(x) => Some(x),
                        Err(_) => {
                            skips.add("not_a_number");
                            continue;
                        }
                    },
                    Some(_) => {
                        skips.add("not_a_number");
                        continue;
                    }
                };
                match value.filter(|x| x.is_finite()) {
                    Some(x) => out.push(Sample {
                        signal: f.clone(),
                        ts_ms,
                        value: x,
                    }),
                    None => skips.add("non_finite"),
                }
            }
        }
    }
    out
}

/// The state of one running `jsonl` source.
pub(crate) struct Follower {
    cfg: JsonlConfig,
    cipher: Option<LineCipher>,
    tail: Option<Tail>,
}

impl Follower {
    pub(crate) fn new(cfg: JsonlConfig, cipher: Option<LineCipher>) -> Self {
        let tail = Tail::new(
            cfg.path.clone(),
            cfg.from == StartAt::End,
            cfg.max_line_bytes,
        );
        Self {
            cfg,
            cipher,
            tail: Some(tail),
        }
    }

    pub(crate) async fn poll(&mut self, stats: &SourceStats) -> Polled {
        if self.cfg.encrypted && self.cipher.is_none() {
            stats.poll_error(
                "missing_key",
                "encrypted: true needs COHERENCE_AES_KEY (standard base64 of 32 bytes)",
            );
            return Polled::default();
        }
        let started = Instant::now();
        let Some(mut tail) = self.tail.take() else {
            return Polled::default();
        };
        // File reads block: run them off the async workers, then take the state back.
        let joined = tokio::task::spawn_blocking(move || {
            let r = tail.read();
            (tail, r)
        })
        .await;
        let (tail, result) = match joined {
            Ok(x) => x,
            Err(e) => {
                // The read panicked or was cancelled: start over from the configured position.
                stats.poll_error("io", format!("read task failed: {e}"));
                self.tail = Some(Tail::new(
                    self.cfg.path.clone(),
                    self.cfg.from == StartAt::End,
                    self.cfg.max_line_bytes,
                ));
                return Polled::default();
            }
        };
        self.tail = Some(tail);
        let read = match result {
            Ok(r) => r,
            Err(e) => {
                let reason = if e.kind() == std::io::ErrorKind::NotFound {
                    "not_found"
                } else {
                    "io"
                };
                stats.poll_error(reason, format!("{}: {e}", self.cfg.path.display()));
                return Polled::default();
            }
        };
        let mut skips = Skips::default();
        let mut samples = Vec::new();
        for line in &read.lines {
            samples.extend(line_samples(
                &self.cfg,
                self.cipher.as_ref(),
                line,
                &mut skips,
            ));
        }
        for (reason, n) in skips.0 {
            stats.skipped(reason, n);
        }
        stats.skipped("line_too_long", read.too_long);
        stats.poll_ok(started.elapsed(), samples.len(), now_ms());
        Polled {
            samples,
            more: read.more,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    fn cfg() -> JsonlConfig {
        serde_yaml_ng::from_str("name: j\npath: /x.jsonl\n").unwrap()
    }

    fn samples(c: &JsonlConfig, line: &str, skips: &mut Skips) -> Vec<(String, i64, f64)> {
        let mut v: Vec<(String, i64, f64)> = line_samples(c, None, line.as_bytes(), skips)
            .into_iter()
            .map(|s| (s.signal, s.ts_ms, s.value))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn lines_become_samples() {
        let c = cfg();
        let mut sk = Skips::default();
        let r = samples(
            &c,
            r#"{"ts":"1970-01-01T00:00:01Z","cpu":50,"mem":1.5,"host":"a","nested":{"x":1}}"#,
            &mut sk,
        );
        assert_eq!(
            r,
            vec![("cpu".into(), 1000, 50.0), ("mem".into(), 1000, 1.5)]
        );
        let r = samples(&c, r#"{"ts":1700000000,"cpu":1}"#, &mut sk);
        assert_eq!(r, vec![("cpu".into(), 1_700_000_000_000, 1.0)]);
        let r = samples(&c, r#"{"ts":1700000000123,"cpu":1}"#, &mut sk);
        assert_eq!(r, vec![("cpu".into(), 1_700_000_000_123, 1.0)]);
        assert!(samples(&c, "not json", &mut sk).is_empty());
        assert!(samples(&c, "[1,2]", &mut sk).is_empty());
        assert!(samples(&c, r#"{"cpu":1}"#, &mut sk).is_empty());
        assert!(samples(&c, r#"{"ts":"soon","cpu":1}"#, &mut sk).is_empty());
        assert!(samples(&c, "   ", &mut sk).is_empty());
        assert!(line_samples(&c, None, &[0xff, b'{'], &mut sk).is_empty());
        assert_eq!(
            sk.0,
            BTreeMap::from([("bad_json", 2), ("bad_timestamp", 2), ("bad_utf8", 1)])
        );
    }

    #[test]
    fn listed_signals_and_match() {
        let mut c = cfg();
        c.signals = Some(vec!["cpu".into(), "qps".into(), "gone".into()]);
        c.match_fields.insert("host".into(), "web-0".into());
        let mut sk = Skips::default();
        let r = samples(
            &c,
            r#"{"ts":10,"host":"web-0","cpu":"NaN","qps":"2.5","mem":9}"#,
            &mut sk,
        );
        assert_eq!(r, vec![("qps".into(), 10_000, 2.5)]);
        assert!(samples(&c, r#"{"ts":10,"host":"web-1","cpu":1,"qps":1}"#, &mut sk).is_empty());
        assert!(samples(&c, r#"{"ts":10,"cpu":1,"qps":1}"#, &mut sk).is_empty());
        let r = samples(
            &c,
            r#"{"ts":10,"host":"web-0","cpu":true,"qps":1,"gone":2}"#,
            &mut sk,
        );
        assert_eq!(
            r,
            vec![("gone".into(), 10_000, 2.0), ("qps".into(), 10_000, 1.0)]
        );
        assert_eq!(
            sk.0,
            BTreeMap::from([("missing_field", 1), ("non_finite", 1), ("not_a_number", 1)])
        );
    }

    #[test]
    fn tail_keeps_partial_lines_and_survives_truncation_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.jsonl");
        let mut f = File::create(&path).unwrap();
        let mut t = Tail::new(path.clone(), false, 16);
        f.write_all(b"a1\na2\npart").unwrap();
        let r = t.read().unwrap();
        assert_eq!(r.lines, vec![b"a1".to_vec(), b"a2".to_vec()]);
        f.write_all(b"ial\n").unwrap();
        assert_eq!(t.read().unwrap().lines, vec![b"partial".to_vec()]);
        // A line over the limit is dropped whole, and the next one is kept.
        f.write_all(b"0123456789abcdefXYZ").unwrap();
        let r = t.read().unwrap();
        assert_eq!((r.lines.len(), r.too_long), (0, 1));
        f.write_all(b"more\nok\n").unwrap();
        assert_eq!(t.read().unwrap().lines, vec![b"ok".to_vec()]);
        // Truncation.
        f.set_len(0).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"b1\n").unwrap();
        assert_eq!(t.read().unwrap().lines, vec![b"b1".to_vec()]);
        // Rotation: the old file gets a last line (without newline), the new one appears.
        f.write_all(b"b2\nb3").unwrap();
        std::fs::rename(&path, dir.path().join("f.jsonl.1")).unwrap();
        std::fs::write(&path, b"c1\n").unwrap();
        let r = t.read().unwrap();
        assert_eq!(r.lines, vec![b"b2".to_vec(), b"b3".to_vec()]);
        assert!(r.more);
        assert_eq!(t.read().unwrap().lines, vec![b"c1".to_vec()]);
        assert!(t.read().unwrap().lines.is_empty());
    }

    #[test]
    fn tail_from_end_skips_existing_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.jsonl");
        std::fs::write(&path, b"old\n").unwrap();
        let mut t = Tail::new(path.clone(), true, 1024);
        assert!(t.read().unwrap().lines.is_empty());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"new\n").unwrap();
        assert_eq!(t.read().unwrap().lines, vec![b"new".to_vec()]);
        let mut missing = Tail::new(dir.path().join("nope"), false, 1024);
        assert_eq!(
            missing.read().unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = cfg();
        assert!(c.validate("s").is_ok());
        c.signals = Some(vec!["a".into(), "ts".into()]);
        assert_eq!(c.validate("s").unwrap_err().field, "s.signals[1]");
        c.signals = Some(vec![]);
        assert_eq!(c.validate("s").unwrap_err().field, "s.signals");
        let e = serde_yaml_ng::from_str::<JsonlConfig>("name: j\npath: /x\nfrom: middle\n");
        assert!(e.is_err());
        let e = serde_yaml_ng::from_str::<JsonlConfig>("name: j\npath: /x\nbogus: 1\n");
        assert!(e.is_err());
    }
}
