//! Optional rolling persistence of computed metrics, as the original engine had:
//! `PERSISTENCE=csv` appends rows to a CSV file, `sqlite` inserts them into the table
//! `rolling_metrics`; rows older than the retention are deleted (SQLite) or rotated away (CSV:
//! the file is renamed to `<file>.1` once its first row is older than the retention).

use crate::config::{PersistenceKind, PersistenceSettings};
use coherence_core::report::WindowReport;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Default retention of persisted rows.
pub const DEFAULT_RETENTION_MS: i64 = 7 * 86_400_000;

/// Columns of a persisted row, in order (CSV header and SQLite columns).
pub const COLUMNS: [&str; 9] = [
    "ts_ms",
    "shard_id",
    "signal",
    "window",
    "n",
    "mean",
    "stdev",
    "volatility_index",
    "drift_risk",
];

/// A store of rows.
#[derive(Debug)]
pub enum Store {
    /// Nothing is kept.
    None,
    /// A CSV file.
    Csv(CsvStore),
    /// A SQLite database.
    Sqlite(SqliteStore),
}

/// A persistence failure, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("persistence {path}: {message}")]
pub struct PersistError {
    /// The file.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

fn perr(path: &Path, e: impl std::fmt::Display) -> PersistError {
    PersistError {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl Store {
    /// Opens the store the settings ask for; `default_dir` holds it when no path is given.
    pub fn open(settings: &PersistenceSettings, default_dir: &Path) -> Result<Store, PersistError> {
        let retention_ms = settings
            .retention
            .map_or(DEFAULT_RETENTION_MS, |d| d.as_millis_i64());
        match settings.kind {
            PersistenceKind::None => Ok(Store::None),
            PersistenceKind::Csv => {
                let path = settings
                    .path
                    .clone()
                    .unwrap_or_else(|| default_dir.join("rolling_metrics.csv"));
                CsvStore::open(path, retention_ms).map(Store::Csv)
            }
            PersistenceKind::Sqlite => {
                let path = settings
                    .path
                    .clone()
                    .unwrap_or_else(|| default_dir.join("rolling_metrics.db"));
                SqliteStore::open(path, retention_ms).map(Store::Sqlite)
            }
        }
    }

    /// Keeps the rows of one epoch, stamped `ts_ms`.
    pub fn write(
        &mut self,
        ts_ms: i64,
        shard_id: &str,
        rows: &[WindowReport],
    ) -> Result<usize, PersistError> {
        match self {
            Store::None => Ok(0),
            Store::Csv(s) => s.write(ts_ms, shard_id, rows),
            Store::Sqlite(s) => s.write(ts_ms, shard_id, rows),
        }
    }
}

/// Rows appended to a CSV file.
#[derive(Debug)]
pub struct CsvStore {
    path: PathBuf,
    file: File,
    first_ts_ms: Option<i64>,
    retention_ms: i64,
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

impl CsvStore {
    fn open(path: PathBuf, retention_ms: i64) -> Result<CsvStore, PersistError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| perr(dir, e))?;
        }
        let first_ts_ms = Self::first_ts(&path);
        let file = Self::open_file(&path)?;
        Ok(CsvStore {
            path,
            file,
            first_ts_ms,
            retention_ms,
        })
    }

    fn open_file(path: &Path) -> Result<File, PersistError> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| perr(path, e))?;
        let empty = file.metadata().map_err(|e| perr(path, e))?.len() == 0;
        if empty {
            writeln!(file, "{}", COLUMNS.join(",")).map_err(|e| perr(path, e))?;
        }
        Ok(file)
    }

    // The first data row's timestamp, if the file has one.
    fn first_ts(path: &Path) -> Option<i64> {
        let f = File::open(path).ok()?;
        let mut lines = BufReader::new(f).lines();
        lines.next()?.ok()?;
        let row = lines.next()?.ok()?;
        row.split(',').next()?.parse().ok()
    }

    fn write(
        &mut self,
        ts_ms: i64,
        shard_id: &str,
        rows: &[WindowReport],
    ) -> Result<usize, PersistError> {
        if self
            .first_ts_ms
            .is_some_and(|first| ts_ms - first > self.retention_ms)
        {
            let old = self.path.with_extension("csv.1");
            std::fs::rename(&self.path, &old).map_err(|e| perr(&self.path, e))?;
            self.file = Self::open_file(&self.path)?;
            self.first_ts_ms = None;
        }
        let mut out = String::new();
        for r in rows {
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{}\n",
                ts_ms,
                csv_field(shard_id),
                csv_field(&r.signal),
                r.window,
                r.n,
                r.mean,
                r.stdev,
                r.volatility_index,
                r.drift_risk.as_str()
            ));
        }
        self.file
            .write_all(out.as_bytes())
            .map_err(|e| perr(&self.path, e))?;
        if !rows.is_empty() && self.first_ts_ms.is_none() {
            self.first_ts_ms = Some(ts_ms);
        }
        Ok(rows.len())
    }
}

/// Rows in the SQLite table `rolling_metrics`.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    conn: rusqlite::Connection,
    retention_ms: i64,
}

impl SqliteStore {
    fn open(path: PathBuf, retention_ms: i64) -> Result<SqliteStore, PersistError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| perr(dir, e))?;
        }
        let conn = rusqlite::Connection::open(&path).map_err(|e| perr(&path, e))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS rolling_metrics (
                 ts_ms INTEGER NOT NULL,
                 shard_id TEXT NOT NULL,
                 signal TEXT NOT NULL,
                 window TEXT NOT NULL,
                 n INTEGER NOT NULL,
                 mean REAL NOT NULL,
                 stdev REAL NOT NULL,
                 volatility_index REAL NOT NULL,
                 drift_risk TEXT NOT NULL,
                 PRIMARY KEY (ts_ms, shard_id, signal, window)
             );
             CREATE INDEX IF NOT EXISTS rolling_metrics_signal ON rolling_metrics (signal, window, ts_ms);",
        )
        .map_err(|e| perr(&path, e))?;
        Ok(SqliteStore {
            path,
            conn,
            retention_ms,
        })
    }

    fn write(
        &mut self,
        ts_ms: i64,
        shard_id: &str,
        rows: &[WindowReport],
    ) -> Result<usize, PersistError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| perr(&path, e))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO rolling_metrics
                     (ts_ms, shard_id, signal, window, n, mean, stdev, volatility_index, drift_risk)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .map_err(|e| perr(&path, e))?;
            for r in rows {
                stmt.execute(rusqlite::params![
                    ts_ms,
                    shard_id,
                    r.signal,
                    r.window.to_string(),
                    i64::try_from(r.n).unwrap_or(i64::MAX),
                    r.mean,
                    r.stdev,
                    r.volatility_index,
                    r.drift_risk.as_str()
                ])
                .map_err(|e| perr(&path, e))?;
            }
            tx.execute(
                "DELETE FROM rolling_metrics WHERE ts_ms < ?1",
                [ts_ms - self.retention_ms],
            )
            .map_err(|e| perr(&path, e))?;
        }
        tx.commit().map_err(|e| perr(&path, e))?;
        Ok(rows.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use coherence_core::window::DriftRisk;

    fn row(signal: &str, mean: f64) -> WindowReport {
        WindowReport {
            signal: signal.into(),
            window: "5m".parse().unwrap(),
            mean,
            stdev: 1.5,
            volatility_index: 1.5 / mean,
            drift_risk: DriftRisk::Medium,
            n: 30,
            window_start_ms: 0,
            window_end_ms: 300_000,
        }
    }

    #[test]
    fn sqlite_keeps_rows_and_deletes_past_retention() {
        let dir = tempfile::tempdir().unwrap();
        let settings = PersistenceSettings {
            kind: PersistenceKind::Sqlite,
            path: None,
            retention: Some("1h".parse().unwrap()),
        };
        let mut s = Store::open(&settings, dir.path()).unwrap();
        assert_eq!(
            s.write(1_000, "ns/w/p", &[row("cpu", 10.0), row("mem", 20.0)])
                .unwrap(),
            2
        );
        assert_eq!(s.write(2_000, "ns/w/p", &[row("cpu", 11.0)]).unwrap(), 1);
        let conn = rusqlite::Connection::open(dir.path().join("rolling_metrics.db")).unwrap();
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM rolling_metrics", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
        let (mean, risk): (f64, String) = conn
            .query_row(
                "SELECT mean, drift_risk FROM rolling_metrics WHERE ts_ms = 2000 AND signal = 'cpu'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((mean, risk.as_str()), (11.0, "medium"));
        // An hour and a bit later, the first two epochs are gone.
        s.write(3_600_000 + 1_500, "ns/w/p", &[row("cpu", 12.0)])
            .unwrap();
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM rolling_metrics", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn csv_appends_with_one_header_and_rotates_after_retention() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        let settings = PersistenceSettings {
            kind: PersistenceKind::Csv,
            path: Some(path.clone()),
            retention: Some("1h".parse().unwrap()),
        };
        let mut s = Store::open(&settings, dir.path()).unwrap();
        s.write(1_000, "ns/w/p", &[row("a,b", 10.0)]).unwrap();
        drop(s);
        // Reopened, it appends without a second header and remembers the first row's time.
        let mut s = Store::open(&settings, dir.path()).unwrap();
        s.write(2_000, "ns/w/p", &[row("cpu", 11.0)]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], COLUMNS.join(","));
        assert_eq!(lines.len(), 3);
        assert!(
            lines[1].starts_with("1000,ns/w/p,\"a,b\",5m,30,10,1.5,0.15,medium"),
            "{}",
            lines[1]
        );
        s.write(3_700_000, "ns/w/p", &[row("cpu", 12.0)]).unwrap();
        let rotated = std::fs::read_to_string(dir.path().join("m.csv.1")).unwrap();
        assert_eq!(rotated.lines().count(), 3);
        let fresh = std::fs::read_to_string(&path).unwrap();
        assert_eq!(fresh.lines().count(), 2);
        assert!(fresh.lines().nth(1).unwrap().starts_with("3700000,"));
    }
}
