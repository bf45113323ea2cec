//! `type: http`: pull a JSON API of coherence summaries (the original `/signals/summary`
//! adapter).
//!
//! **Requests.** `GET url?since=S&until=U&pageSize=N[&cursor=C|&page=P]`, with
//! `Authorization: Bearer <token>` when a token is configured. `since` and `until` are RFC
//! 3339 (UTC, milliseconds when not zero). The first poll looks back `lookback` (default 5m);
//! later polls start at the newest item timestamp seen (inclusive: items at that instant are
//! asked again and dropped by the dedup), or look back again while nothing was seen.
//!
//! **Answers accepted.**
//! - a JSON array of items;
//! - an object with the items in `items`, `data`, `results` or `signals` (the first that is an
//!   array), and optionally a cursor in `next`, `nextCursor` or `next_cursor`;
//! - an object without any of those arrays: one item.
//!
//! **Pagination.** When the object has a cursor field, a non-empty string (or number) is the
//! next page — an absolute `http(s)://` URL or a path starting with `/` is requested as it is,
//! anything else is sent back as `cursor=` — and `null`/`""`/absent-on-a-later-page ends.
//! Without a cursor field, pages are numbered: while a page holds `pageSize` items, `page=2`,
//! `page=3`, ... follow (the first request carries no `page`). At most `maxPages` pages are
//! read per poll (the rest is read on the next poll, from the newest timestamp).
//!
//! **Items** are objects; spellings of the original API are accepted:
//! - time: `timestamp`, `ts` or `time` (RFC 3339, or ms / s since the Unix epoch);
//! - `coherenceScore` / `coherence_score`: a number → signal `coherenceScore`;
//! - `eventCount` / `event_count`: a number → signal `eventCount`;
//! - `agentStates` / `agent_states`: an object (agent → state) gives the number of agents, an
//!   array the number of states, a number itself → signal `agentStates`.
//!
//! **Reliability.** Network errors and 5xx are retried `retries` times (default 3) with
//! exponential backoff and full jitter from `backoffBase` (default 200ms, capped at 10s); 4xx
//! are not retried. Every failed request is counted as a poll error (`connect`, `timeout`,
//! `status_503`, ...), also when a retry then succeeds. A poll is all or nothing: when a page
//! fails, nothing of that poll is yielded and the next poll asks again. Samples are deduplicated
//! by (signal, timestamp) across polls, keeping at most 50 000 keys (the oldest go first).
//!
//! Skip reasons: `bad_item`, `bad_timestamp`, `empty_item`, `not_a_number`, `page_limit`.
//! Poll errors also: `bad_json`, `token_file`, `missing_token`.

use super::net::{self, Retry, Secret};
use super::{PollError, Polled, json_ts_ms, now_ms};
use crate::config::ConfigError;
use crate::sample::{Dur, Sample, SourceStats};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// Largest page read, bytes.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// Most (timestamp, signal) keys kept for dedup.
const MAX_SEEN: usize = 50_000;

/// Settings of an `http` source.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpConfig {
    /// Source name.
    pub name: String,
    /// The API, e.g. `http://127.0.0.1:8080/signals/summary`.
    pub url: String,
    /// Poll interval (default 30s).
    #[serde(default = "default_interval")]
    pub interval: Dur,
    /// Timeout of one request (default 10s, at most the interval).
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// File holding the bearer token (a mounted Secret; re-read when it changes).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the bearer token (read once, at configuration time).
    #[serde(default)]
    pub token_env: Option<String>,
    /// Items per page asked for (default 100).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// How far back the first query looks (default 5m).
    #[serde(default = "default_lookback")]
    pub lookback: Dur,
    /// Retries of a request after a network error or a 5xx (default 3).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// First backoff before a retry (default 200ms).
    #[serde(default = "default_backoff_base")]
    pub backoff_base: Dur,
    /// Most pages read per poll (default 50).
    #[serde(default = "default_max_pages")]
    pub max_pages: u32,
    /// PEM CA bundle for an https URL (required for https: system roots are not used).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Which of the normalised signals to keep (`coherenceScore`, `agentStates`,
    /// `eventCount`); default all three.
    #[serde(default)]
    pub signals: Option<Vec<String>>,
    /// The token of `tokenEnv`, once resolved ([`super::SourceConfig::resolve_env`]).
    #[serde(skip)]
    pub token: Option<Secret>,
}

fn default_interval() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_page_size() -> u32 {
    100
}
fn default_lookback() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_retries() -> u32 {
    3
}
fn default_backoff_base() -> Dur {
    Dur(Duration::from_millis(200))
}
fn default_max_pages() -> u32 {
    50
}

impl HttpConfig {
    pub(crate) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        super::validate_url(at, "url", &self.url, self.ca.as_deref())?;
        super::validate_timeout(at, self.timeout, self.interval)?;
        if self.token_file.is_some() && self.token_env.is_some() {
            return Err(ConfigError::new(
                format!("{at}.tokenEnv"),
                "expected only one of tokenFile and tokenEnv",
            ));
        }
        if self
            .token_env
            .as_deref()
            .is_some_and(|v| v.trim().is_empty())
        {
            return Err(ConfigError::new(
                format!("{at}.tokenEnv"),
                "expected the name of an environment variable",
            ));
        }
        if let Some(list) = &self.signals {
            if list.is_empty() {
                return Err(ConfigError::new(
                    format!("{at}.signals"),
                    "expected at least one signal, or no list for all three",
                ));
            }
            for (i, name) in list.iter().enumerate() {
                if !SIGNALS.contains(&name.as_str()) {
                    return Err(ConfigError::new(
                        format!("{at}.signals[{i}]"),
                        format!("expected one of {}, got {name:?}", SIGNALS.join(", ")),
                    ));
                }
            }
        }
        if !(1..=10_000).contains(&self.page_size) {
            return Err(ConfigError::new(
                format!("{at}.pageSize"),
                format!("expected 1 to 10000, got {}", self.page_size),
            ));
        }
        if self.retries > 10 {
            return Err(ConfigError::new(
                format!("{at}.retries"),
                format!("expected at most 10, got {}", self.retries),
            ));
        }
        if self.max_pages == 0 {
            return Err(ConfigError::new(
                format!("{at}.maxPages"),
                "expected at least 1",
            ));
        }
        Ok(())
    }

    pub(crate) fn resolve_env(
        &mut self,
        at: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let Some(var) = &self.token_env else {
            return Ok(());
        };
        if self.token.is_some() {
            return Ok(());
        }
        match lookup(var).map(|v| v.trim().to_string()) {
            Some(v) if !v.is_empty() => {
                self.token = Some(Secret::new(v));
                Ok(())
            }
            _ => Err(ConfigError::new(
                format!("{at}.tokenEnv"),
                format!(
                    "expected the environment variable {var} to hold the bearer token, it is unset or empty"
                ),
            )),
        }
    }
}

/// The signals an item yields.
pub const SIGNALS: [&str; 3] = ["coherenceScore", "agentStates", "eventCount"];

/// An item normalised: its time and the values it carries, in [`SIGNALS`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Time, ms since the Unix epoch.
    pub ts_ms: i64,
    /// `coherenceScore`, `agentStates`, `eventCount`.
    pub values: [Option<f64>; 3],
}

fn field<'a>(obj: &'a serde_json::Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
    names
        .iter()
        .find_map(|n| obj.get(*n).filter(|v| !v.is_null()))
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|x: &f64| x.is_finite())
}

/// Normalises one item; the error is its skip reason. `not_a_number` counts fields present
/// but unusable.
pub fn normalise(item: &Value, not_a_number: &mut u64) -> Result<Summary, &'static str> {
    let Value::Object(obj) = item else {
        return Err("bad_item");
    };
    let ts_ms = field(obj, &["timestamp", "ts", "time"])
        .and_then(json_ts_ms)
        .ok_or("bad_timestamp")?;
    let mut values = [None; 3];
    let mut present = false;
    let mut take = |slot: usize, v: Option<&Value>, f: &dyn Fn(&Value) -> Option<f64>| {
        if let Some(v) = v {
            present = true;
            match f(v) {
                Some(x) => values[slot] = Some(x),
                None => *not_a_number += 1,
            }
        }
    };
    take(
        0,
        field(obj, &["coherenceScore", "coherence_score"]),
        &number,
    );
    take(
        1,
        field(obj, &["agentStates", "agent_states"]),
        &|v| match v {
            Value::Object(m) => Some(m.len() as f64),
            Value::Array(a) => Some(a.len() as f64),
            other => number(other),
        },
    );
    take(2, field(obj, &["eventCount", "event_count"]), &number);
    if !present {
        return Err("empty_item");
    }
    Ok(Summary { ts_ms, values })
}

/// What comes after a page.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// No more pages.
    End,
    /// Send `cursor=` this.
    Cursor(String),
    /// Request this URL as it is.
    Url(String),
    /// Page-numbered API: the next page if this one was full.
    PageIfFull,
}

/// One page of an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Items of the page.
    pub items: Vec<Value>,
    /// What follows.
    pub next: Next,
}

/// Parses one answer (shapes in the module documentation).
pub fn parse_page(body: &[u8]) -> Result<Page, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    match v {
        Value::Array(items) => Ok(Page {
            items,
            next: Next::PageIfFull,
        }),
        Value::Object(mut obj) => {
            let key = ["items", "data", "results", "signals"]
                .into_iter()
                .find(|k| obj.get(*k).is_some_and(Value::is_array));
            let cursor_key = ["next", "nextCursor", "next_cursor"]
                .into_iter()
                .find(|k| obj.contains_key(*k));
            let Some(key) = key else {
                return Ok(Page {
                    items: vec![Value::Object(obj)],
                    next: Next::End,
                });
            };
            let items = match obj.remove(key) {
                Some(Value::Array(a)) => a,
                _ => vec![],
            };
            let next = match cursor_key.and_then(|k| obj.get(k)) {
                None => Next::PageIfFull,
                Some(Value::String(s)) if s.is_empty() => Next::End,
                Some(Value::String(s)) => {
                    if s.starts_with("http://") || s.starts_with("https://") || s.starts_with('/') {
                        Next::Url(s.clone())
                    } else {
                        Next::Cursor(s.clone())
                    }
                }
                Some(Value::Number(n)) => Next::Cursor(n.to_string()),
                Some(_) => Next::End,
            };
            Ok(Page { items, next })
        }
        _ => Err("answer is neither an array nor an object".into()),
    }
}

/// A token file and what was last read from it.
#[derive(Debug)]
struct TokenFile {
    path: PathBuf,
    stamp: Option<(Option<SystemTime>, u64)>,
    token: Option<Secret>,
}

impl TokenFile {
    /// The token, re-read when the file's modification time or size changed.
    fn get(&mut self) -> Result<Secret, PollError> {
        let err = |e: std::io::Error| {
            PollError::new(
                "token_file",
                format!("tokenFile {}: {e}", self.path.display()),
            )
        };
        let meta = std::fs::metadata(&self.path).map_err(err)?;
        let stamp = Some((meta.modified().ok(), meta.len()));
        if stamp != self.stamp || self.token.is_none() {
            let text = std::fs::read_to_string(&self.path).map_err(err)?;
            let t = text.trim();
            if t.is_empty() {
                return Err(PollError::new(
                    "token_file",
                    format!(
                        "tokenFile {}: expected a token, the file is empty",
                        self.path.display()
                    ),
                ));
            }
            self.token = Some(Secret::new(t));
            self.stamp = stamp;
        }
        self.token
            .clone()
            .ok_or_else(|| PollError::new("token_file", "no token"))
    }
}

/// The state of one running `http` source.
pub(crate) struct Puller {
    cfg: HttpConfig,
    client: reqwest::Client,
    retry: Retry,
    token_file: Option<TokenFile>,
    /// Newest item time seen.
    newest_ms: Option<i64>,
    /// (time, signal index) already yielded.
    seen: BTreeSet<(i64, u8)>,
}

impl Puller {
    pub(crate) fn new(cfg: HttpConfig) -> Result<Self, PollError> {
        let client = net::client(cfg.timeout.get(), cfg.ca.as_deref())?;
        let retry = Retry {
            retries: cfg.retries,
            base: cfg.backoff_base.get(),
            cap: Duration::from_secs(10),
        };
        let token_file = cfg.token_file.clone().map(|path| TokenFile {
            path,
            stamp: None,
            token: None,
        });
        Ok(Self {
            cfg,
            client,
            retry,
            token_file,
            newest_ms: None,
            seen: BTreeSet::new(),
        })
    }

    fn token(&mut self) -> Result<Option<Secret>, PollError> {
        if let Some(tf) = self.token_file.as_mut() {
            return tf.get().map(Some);
        }
        if self.cfg.token_env.is_some() {
            return match &self.cfg.token {
                Some(t) => Ok(Some(t.clone())),
                None => Err(PollError::new(
                    "missing_token",
                    format!(
                        "tokenEnv: the environment variable {} is unset or empty",
                        self.cfg.token_env.as_deref().unwrap_or_default()
                    ),
                )),
            };
        }
        Ok(None)
    }

    pub(crate) async fn poll(&mut self, stats: &SourceStats) -> Polled {
        let started = Instant::now();
        match self.poll_pages(stats).await {
            Ok((samples, skips)) => {
                for (reason, n) in skips {
                    stats.skipped(reason, n);
                }
                stats.poll_ok(started.elapsed(), samples.len(), now_ms());
                Polled {
                    samples,
                    more: false,
                }
            }
            Err(Some(e)) => {
                stats.poll_error(&e.reason, e.message);
                Polled::default()
            }
            // Already recorded, attempt by attempt.
            Err(None) => Polled::default(),
        }
    }

    async fn poll_pages(
        &mut self,
        stats: &SourceStats,
    ) -> Result<(Vec<Sample>, Vec<(&'static str, u64)>), Option<PollError>> {
        let token = self.token().map_err(Some)?;
        let now = now_ms();
        let since = self
            .newest_ms
            .unwrap_or_else(|| now - self.cfg.lookback.as_millis_i64());
        let base = reqwest::Url::parse(&self.cfg.url)
            .map_err(|e| Some(PollError::new("config", format!("url: {e}"))))?;
        let mut summaries = Vec::new();
        let mut next_url: Option<reqwest::Url> = None;
        let mut cursor: Option<String> = None;
        let mut page_no = 1u32;
        let mut skips: Vec<(&'static str, u64)> = Vec::new();
        for pages_read in 0..=self.cfg.max_pages {
            if pages_read == self.cfg.max_pages {
                skips.push(("page_limit", 1));
                break;
            }
            let url = match next_url.take() {
                Some(u) => u,
                None => {
                    let mut u = base.clone();
                    {
                        let mut q = u.query_pairs_mut();
                        q.append_pair("since", &coherence_core::telemetry::format_ts_ms(since));
                        q.append_pair("until", &coherence_core::telemetry::format_ts_ms(now));
                        q.append_pair("pageSize", &self.cfg.page_size.to_string());
                        if let Some(c) = &cursor {
                            q.append_pair("cursor", c);
                        } else if page_no > 1 {
                            q.append_pair("page", &page_no.to_string());
                        }
                    }
                    u
                }
            };
            let client = &self.client;
            let make = || {
                let mut r = client.get(url.clone()).header("Accept", "application/json");
                if let Some(t) = &token {
                    r = r.bearer_auth(t.expose());
                }
                r
            };
            let fetched = self
                .retry
                .fetch(stats, MAX_BODY, make)
                .await
                .map_err(|_| None)?;
            let page =
                parse_page(&fetched.body).map_err(|e| Some(PollError::new("bad_json", e)))?;
            let full = page.items.len() >= self.cfg.page_size as usize;
            let n_items = page.items.len();
            summaries.extend(page.items);
            match page.next {
                Next::End => break,
                Next::PageIfFull if full && n_items > 0 => page_no += 1,
                Next::PageIfFull => break,
                Next::Cursor(c) => cursor = Some(c),
                Next::Url(u) => {
                    next_url = Some(base.join(&u).map_err(|e| {
                        Some(PollError::new("bad_json", format!("next {u:?}: {e}")))
                    })?);
                }
            }
        }
        let mut samples = Vec::new();
        let mut counts: std::collections::BTreeMap<&'static str, u64> = Default::default();
        let mut not_a_number = 0;
        for item in &summaries {
            match normalise(item, &mut not_a_number) {
                Ok(s) => {
                    self.newest_ms = Some(self.newest_ms.map_or(s.ts_ms, |n| n.max(s.ts_ms)));
                    for (i, v) in s.values.iter().enumerate() {
                        let Some(v) = v else { continue };
                        let wanted = self
                            .cfg
                            .signals
                            .as_ref()
                            .is_none_or(|l| l.iter().any(|n| n == SIGNALS[i]));
                        if wanted && self.seen.insert((s.ts_ms, i as u8)) {
                            samples.push(Sample {
                                signal: SIGNALS[i].to_string(),
                                ts_ms: s.ts_ms,
                                value: *v,
                            });
                        }
                    }
                }
                Err(reason) => *counts.entry(reason).or_default() += 1,
            }
        }
        counts.insert("not_a_number", not_a_number);
        skips.extend(counts);
        // Keys older than the next query's start, less a lookback of slack, cannot come back
        // from a server that honours `since`; and the set never exceeds MAX_SEEN.
        if let Some(newest) = self.newest_ms {
            let floor = newest - self.cfg.lookback.as_millis_i64();
            self.seen = self.seen.split_off(&(floor, 0));
        }
        while self.seen.len() > MAX_SEEN {
            self.seen.pop_first();
        }
        Ok((samples, skips))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn items_normalise_from_both_spellings() {
        let mut nan = 0;
        let a = normalise(
            &json!({"timestamp":"1970-01-01T00:00:05Z","coherenceScore":0.9,"agentStates":{"a":"ok","b":"idle"},"eventCount":7}),
            &mut nan,
        )
        .unwrap();
        assert_eq!(
            a,
            Summary {
                ts_ms: 5000,
                values: [Some(0.9), Some(2.0), Some(7.0)]
            }
        );
        let b = normalise(
            &json!({"ts":6,"coherence_score":"0.5","agent_states":["ok","ok","down"],"event_count":1}),
            &mut nan,
        )
        .unwrap();
        assert_eq!(
            b,
            Summary {
                ts_ms: 6000,
                values: [Some(0.5), Some(3.0), Some(1.0)]
            }
        );
        let c = normalise(
            &json!({"time":7,"agentStates":4,"eventCount":"many"}),
            &mut nan,
        )
        .unwrap();
        assert_eq!(c.values, [None, Some(4.0), None]);
        assert_eq!(nan, 1);
        assert_eq!(normalise(&json!(3), &mut nan), Err("bad_item"));
        assert_eq!(
            normalise(&json!({"coherenceScore":1}), &mut nan),
            Err("bad_timestamp")
        );
        assert_eq!(
            normalise(&json!({"ts":1,"other":1}), &mut nan),
            Err("empty_item")
        );
    }

    #[test]
    fn pages_in_every_accepted_shape() {
        let p = parse_page(br#"[{"ts":1}]"#).unwrap();
        assert_eq!((p.items.len(), p.next), (1, Next::PageIfFull));
        let p = parse_page(br#"{"items":[{"ts":1},{"ts":2}],"nextCursor":"abc"}"#).unwrap();
        assert_eq!((p.items.len(), p.next), (2, Next::Cursor("abc".into())));
        let p = parse_page(br#"{"data":[],"next":null}"#).unwrap();
        assert_eq!((p.items.len(), p.next), (0, Next::End));
        let p = parse_page(br#"{"results":[{"ts":1}],"next":"/api?cursor=2"}"#).unwrap();
        assert_eq!(p.next, Next::Url("/api?cursor=2".into()));
        let p = parse_page(br#"{"signals":[{"ts":1}],"next_cursor":17}"#).unwrap();
        assert_eq!(p.next, Next::Cursor("17".into()));
        let p = parse_page(br#"{"timestamp":1,"coherenceScore":0.7}"#).unwrap();
        assert_eq!((p.items.len(), p.next), (1, Next::End));
        assert!(parse_page(b"nope").is_err());
        assert!(parse_page(b"3").is_err());
    }

    #[test]
    fn the_token_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let mut tf = TokenFile {
            path: path.clone(),
            stamp: None,
            token: None,
        };
        assert_eq!(tf.get().unwrap().expose(), "first");
        std::fs::write(&path, "the-second\n").unwrap();
        assert_eq!(tf.get().unwrap().expose(), "the-second");
        std::fs::write(&path, "  \n").unwrap();
        assert_eq!(tf.get().unwrap_err().reason, "token_file");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(tf.get().unwrap_err().reason, "token_file");
    }

    #[test]
    fn validation_and_env_resolution_name_the_field() {
        let mut c: HttpConfig =
            serde_yaml_ng::from_str("name: h\nurl: http://127.0.0.1:1/s\ntokenEnv: TOK\n").unwrap();
        assert!(c.validate("sources[1]").is_ok());
        let e = c.resolve_env("sources[1]", &|_| None).unwrap_err();
        assert_eq!(e.field, "sources[1].tokenEnv");
        assert!(e.message.contains("TOK"));
        c.resolve_env("sources[1]", &|k| {
            (k == "TOK").then(|| "s3cret\n".to_string())
        })
        .unwrap();
        assert_eq!(c.token.as_ref().unwrap().expose(), "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
        c.token_file = Some("/t".into());
        assert_eq!(c.validate("s").unwrap_err().field, "s.tokenEnv");
        c.token_file = None;
        c.page_size = 0;
        assert_eq!(c.validate("s").unwrap_err().field, "s.pageSize");
    }
}
