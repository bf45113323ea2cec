//! The outbox: a durable, bounded queue of signed records waiting for delivery.
//!
//! **Files.** The outbox directory holds segments `outbox-<first seq, 20 digits>.seg` and the
//! dead-letter file `dlq.jsonl`. A segment starts with the 8-byte magic `COHOBX01`, then frames
//! `len: u32 LE | crc32(payload): u32 LE | payload`, as in the verifier's inbox WAL. Payloads:
//! - `Record` (1): `seq u64 | kind u8 | id (u16 len) | body` — a PCS or a SignalReport;
//! - `Ack` (2): `seq u64` — the record was delivered (the verifier answered 200/202);
//! - `Dead` (3): `seq u64 | cause u8 | at_ms i64` — the record went to the dead-letter file
//!   (cause 1: a permanent rejection or too many attempts, 2: the outbox overflowed, 3: its
//!   bytes could not be read back);
//! - `Skip` (4): any bytes — written over a frame whose bytes were unreadable, once they are in
//!   the dead-letter file; ignored when read.
//!
//! **One writer.** [`Outbox::open`] takes an exclusive advisory lock (`flock`) on
//! `outbox.lock` in the directory before it reads anything, and holds it until the outbox is
//! dropped. A second open of the same directory — another sidecar, or a second open in the same
//! process — fails with [`OutboxError::Locked`] instead of appending to the same segments. The
//! kernel releases the lock when the process exits, however it exits.
//!
//! **Durability.** [`Outbox::append`], [`Outbox::ack`] and [`Outbox::dead_letter`] write their
//! frame and `fdatasync` the segment before they return: a record whose seq was handed to the
//! engine is never lost, and after a restart exactly the records without an `Ack` or `Dead`
//! frame are pending again, in seq order. Dead-lettering first appends the record to
//! `dlq.jsonl` and syncs it, then writes the `Dead` frame: a crash in between puts the record
//! in the dead-letter file twice, never zero times.
//!
//! **Failed writes.** If a write or a sync fails (a full disk, an I/O error), the file is cut
//! back to its last synced length and the error is returned: the record was not stored and the
//! caller keeps it (the engine retries it at the next epoch). When the cut itself fails, the
//! tail of the file is unknown and writes are refused until it is repaired: the next write first
//! reopens the file and cuts it to the last synced length again, and goes on once that worked.
//! Nothing that was synced is touched, so a transient error never stops the outbox for good.
//! Failures and repairs are counted ([`OutboxStats::write_errors`],
//! [`OutboxStats::recoveries`]).
//!
//! **Recovery.** [`Outbox::open`] reads every segment in order. A short or CRC-bad frame at the
//! end of the newest segment is a torn write (the process died before the append returned): it
//! is cut off with a warning. A CRC-bad or undecodable frame whose length leads to a good frame
//! is damage to that frame only: its raw bytes go to the dead-letter file (reason
//! `unreadable: crc mismatch at offset N in SEGMENT`), it is overwritten with a `Skip` frame
//! of the same length, and reading goes on after it. When the next boundary cannot be found in
//! an older segment (a bad length, a frame cut short), the rest of that segment goes to the
//! dead-letter file raw (`unreadable: framing lost at offset N ...`), the segment is cut there
//! and counted in [`OutboxStats::corrupt_segments`]. Both count in
//! [`OutboxStats::unreadable_total`].
//!
//! **Unreadable records.** A pending record whose bytes no longer read back as the record that
//! was written (damaged on disk while the sidecar runs) is met by [`Outbox::peek_batch`]: its
//! raw bytes go to the dead-letter file with reason `unreadable: <why> at offset N in
//! SEGMENT`, a `Dead` frame (cause 3) resolves it, its frame is overwritten with a `Skip`
//! frame, and the batch goes on with the next record, so the sender is never stuck on it.
//! [`Outbox::dead_letter`] and an overflow likewise write the raw bytes of a record they cannot
//! read back, with `; unreadable: ...` added to their reason. Numbering goes
//! on after the highest seq seen (or the name of the newest segment, which survives even when
//! every record in it was delivered).
//!
//! **Rotation and deletion.** A segment is sealed when it reaches `segmentBytes`, and a new
//! one named after the next seq is started. Sealed segments are deleted from the oldest on,
//! as soon as every record in them is acknowledged or dead-lettered; a segment is kept while an
//! older one is still kept, so the `Ack`/`Dead` frames it holds for records of older segments
//! are never lost before those records are. Delivery is in seq order, so this rarely keeps a
//! segment longer than needed.
//!
//! **Bound.** Pending bytes (the frames of pending records) never exceed `maxBytes`. An append
//! that would exceed it first moves the **oldest** pending records to the dead-letter file
//! (reason `outbox_overflow`) until the new record fits; they are counted in
//! [`OutboxStats::overflow_total`] and the outbox turns *degraded*: [`Outbox::degraded_since`]
//! returns when it happened and [`Outbox::fallbacks`] returns `["outbox_overflow"]`, for the
//! engine to put in `ft.degraded` / `ft.fallbacks` of later records. Degraded clears once the
//! outbox has drained to zero pending records. After a restart the outbox is degraded again if
//! an overflow frame is still on disk and records are pending.
//!
//! **Dead-letter file.** `dlq.jsonl`, one JSON object per line:
//! `{"seq", "kind": "pcs"|"signals", "id", "reason", "at": RFC 3339, "body"}` where `body` is
//! the record's JSON; a body that is not JSON is written as `"body_base64"` instead. Bytes that
//! could not be read back are written as `{"seq", "kind", "id" (when the record is known),
//! "reason", "at", "segment", "offset", "raw_base64"}`: nothing is dropped unseen. A partial
//! last line (a crash mid-append) is cut off at open; its record is still pending.
//!
//! **Threads.** Every method takes `&self` (one internal mutex): the engine and the sender share
//! an `Arc<Outbox>`. The methods block on disk I/O (one `fdatasync` per write); async callers
//! with tight latency needs may call them through `tokio::task::spawn_blocking`. The sender
//! waits on [`Outbox::notified`], which an append wakes.
//!
//! Counters (`acked_total`, `dlq_total`, `overflow_total`) count since the process started.

use crate::config::OutboxSettings;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

const MAGIC: &[u8; 8] = b"COHOBX01";
const FRAME_HEADER: usize = 8;
/// No frame is larger: a length beyond it is corruption, not a record.
const MAX_FRAME: usize = 16 << 20;
/// The dead-letter file in the outbox directory.
pub const DLQ_FILE: &str = "dlq.jsonl";
/// The lock file in the outbox directory: the open outbox holds an exclusive lock on it.
pub const LOCK_FILE: &str = "outbox.lock";
/// The fallback the engine reports while the outbox is degraded by an overflow.
pub const FALLBACK_OVERFLOW: &str = "outbox_overflow";
/// The dead-letter reason of records dropped to make room.
pub const REASON_OVERFLOW: &str = "outbox_overflow";

const T_RECORD: u8 = 1;
const T_ACK: u8 = 2;
const T_DEAD: u8 = 3;
/// A frame whose bytes were unreadable and went to the dead-letter file; ignored when read.
const T_SKIP: u8 = 4;

const CAUSE_REJECTED: u8 = 1;
const CAUSE_OVERFLOW: u8 = 2;
const CAUSE_UNREADABLE: u8 = 3;

/// What a record is, and so where it is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A PCS, delivered to `/v1/pcs/submit`.
    Pcs,
    /// A SignalReport, delivered to `/v1/signals/submit`.
    Signals,
}

impl Kind {
    /// `pcs` or `signals`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pcs => "pcs",
            Kind::Signals => "signals",
        }
    }

    fn byte(self) -> u8 {
        match self {
            Kind::Pcs => 1,
            Kind::Signals => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Pcs),
            2 => Some(Kind::Signals),
            _ => None,
        }
    }
}

/// One record waiting for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number (unique, increasing; `ft.outbox_seq`).
    pub seq: u64,
    /// PCS or SignalReport.
    pub kind: Kind,
    /// `pcs_id` or `report_id`.
    pub id: String,
    /// The signed JSON, as it is sent.
    pub body: Vec<u8>,
}

/// Why the outbox failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A file operation failed.
    #[error("outbox {path}: {op}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// A record larger than the whole outbox (`maxBytes`) cannot be kept.
    #[error("outbox: a record of {size} bytes is larger than outbox.maxBytes ({max})")]
    TooLarge {
        /// Size of the record's frame.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Another process (or another open outbox in this process) holds the outbox directory.
    #[error(
        "outbox directory {dir} is held by another process (lock on {dir}/{LOCK_FILE}); \
         each sidecar needs its own outbox.dir"
    )]
    Locked {
        /// The outbox directory.
        dir: String,
    },
    /// A record's id is longer than 65535 bytes.
    #[error("outbox: a record id of {0} bytes is longer than 65535")]
    IdTooLong(usize),
    /// An earlier write or sync failed; the outbox refuses writes until it is reopened.
    #[error("outbox: refusing writes after an earlier failure: {0}")]
    Failed(String),
    /// A pending record could not be read back from its segment.
    #[error("outbox {path}: record {seq} cannot be read back: {why}")]
    Unreadable {
        /// The segment.
        path: String,
        /// The record.
        seq: u64,
        /// What is wrong.
        why: String,
    },
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> OutboxError + use<> {
    let path = path.display().to_string();
    move |source| OutboxError::Io { path, op, source }
}

/// Counters and sizes of the outbox, for `/metrics` and `/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutboxStats {
    /// Records waiting for delivery (`coherence_sidecar_outbox_pending`).
    pub pending: u64,
    /// Bytes of their frames (at most `maxBytes`).
    pub pending_bytes: u64,
    /// Records acknowledged since start.
    pub acked_total: u64,
    /// Records written to the dead-letter file since start, for any reason
    /// (`coherence_sidecar_dlq_total`).
    pub dlq_total: u64,
    /// Of those, records dropped because the outbox was full.
    pub overflow_total: u64,
    /// Of those, records or segment regions whose bytes could not be read back (CRC mismatch,
    /// undecodable, framing lost), kept in base64 (`coherence_sidecar_outbox_unreadable_total`).
    pub unreadable_total: u64,
    /// Whether records were dropped and the outbox has not drained since.
    pub degraded: bool,
    /// The seq the next append gets.
    pub next_seq: u64,
    /// Segment files on disk.
    pub segments: u64,
    /// Bytes cut off a torn tail when the outbox was opened.
    pub torn_bytes: u64,
    /// Older segments found corrupt when the outbox was opened (their rest was skipped).
    pub corrupt_segments: u64,
    /// Writes or syncs that failed since start (the record or mark was not stored).
    pub write_errors: u64,
    /// Times a file whose tail was unknown after a failed write was cut back and reopened.
    pub recoveries: u64,
    /// Whether writes are refused until the next repair attempt succeeds.
    pub failed: bool,
}

// ---------------------------------------------------------------------------------------------
// Frames

enum Entry {
    Record { seq: u64, kind: Kind, id: String },
    Ack(u64),
    Dead { seq: u64, cause: u8, at_ms: i64 },
    Skip,
}

fn push_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

fn record_payload(seq: u64, kind: Kind, id: &str, body: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(1 + 8 + 1 + 2 + id.len() + body.len());
    p.push(T_RECORD);
    p.extend_from_slice(&seq.to_le_bytes());
    p.push(kind.byte());
    p.extend_from_slice(&(id.len() as u16).to_le_bytes());
    p.extend_from_slice(id.as_bytes());
    p.extend_from_slice(body);
    p
}

fn ack_payload(seq: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(9);
    p.push(T_ACK);
    p.extend_from_slice(&seq.to_le_bytes());
    p
}

fn dead_payload(seq: u64, cause: u8, at_ms: i64) -> Vec<u8> {
    let mut p = Vec::with_capacity(18);
    p.push(T_DEAD);
    p.extend_from_slice(&seq.to_le_bytes());
    p.push(cause);
    p.extend_from_slice(&at_ms.to_le_bytes());
    p
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// Decodes a record payload into `(seq, kind, id, body)`.
fn decode_record(p: &[u8]) -> Result<(u64, Kind, String, &[u8]), String> {
    if p.first() != Some(&T_RECORD) {
        return Err("not a record frame".into());
    }
    let seq = u64_at(p, 1).ok_or("short record header")?;
    let kind = p
        .get(9)
        .and_then(|b| Kind::from_byte(*b))
        .ok_or("unknown record kind")?;
    let n = p
        .get(10..12)
        .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
        .ok_or("short record header")?;
    let id = p.get(12..12 + n).ok_or("short record id")?;
    let id = String::from_utf8(id.to_vec()).map_err(|_| "record id is not UTF-8")?;
    Ok((seq, kind, id, &p[12 + n..]))
}

fn decode(p: &[u8]) -> Result<Entry, String> {
    match p.first() {
        Some(&T_RECORD) => {
            let (seq, kind, id, _) = decode_record(p)?;
            Ok(Entry::Record { seq, kind, id })
        }
        Some(&T_ACK) if p.len() == 9 => Ok(Entry::Ack(u64_at(p, 1).ok_or("short ack")?)),
        Some(&T_DEAD) if p.len() == 18 => Ok(Entry::Dead {
            seq: u64_at(p, 1).ok_or("short dead frame")?,
            cause: p[9],
            at_ms: u64_at(p, 10).ok_or("short dead frame")? as i64,
        }),
        Some(&T_SKIP) => Ok(Entry::Skip),
        Some(t) => Err(format!(
            "unknown frame type {t} or wrong length {}",
            p.len()
        )),
        None => Err("empty frame".into()),
    }
}

struct Scan {
    /// `(offset of the frame in the file, frame length, entry)`.
    entries: Vec<(u64, u64, Entry)>,
    /// Bad frames followed by a good one: `(offset, frame length, what is wrong)`.
    unreadable: Vec<(u64, u64, String)>,
    /// Offset just past the last good frame.
    good_len: usize,
    stop: Option<String>,
}

/// Reads frames of a whole segment file (magic included).
fn scan(buf: &[u8]) -> Scan {
    let mut s = Scan {
        entries: Vec::new(),
        unreadable: Vec::new(),
        good_len: MAGIC.len(),
        stop: None,
    };
    let mut off = MAGIC.len();
    while off < buf.len() {
        let rest = &buf[off..];
        if rest.len() < FRAME_HEADER {
            s.stop = Some(format!("short frame header at byte {off}"));
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len > MAX_FRAME {
            s.stop = Some(format!(
                "frame length {len} at byte {off} is beyond {MAX_FRAME}"
            ));
            break;
        }
        if rest.len() < FRAME_HEADER + len {
            s.stop = Some(format!(
                "frame at byte {off} needs {len} bytes, {} remain",
                rest.len() - FRAME_HEADER
            ));
            break;
        }
        let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
        let bad = if crc32fast::hash(payload) != crc {
            Some(format!("crc mismatch at offset {off}"))
        } else {
            match decode(payload) {
                Ok(e) => {
                    s.entries.push((off as u64, (FRAME_HEADER + len) as u64, e));
                    None
                }
                Err(why) => Some(format!("undecodable frame at offset {off}: {why}")),
            }
        };
        if let Some(why) = bad {
            // The frame's length still leads to a good frame: only this frame is bad, and the
            // framing goes on after it. Otherwise the next boundary is unknown.
            if good_frame_at(buf, off + FRAME_HEADER + len) {
                s.unreadable
                    .push((off as u64, (FRAME_HEADER + len) as u64, why));
            } else {
                s.stop = Some(why);
                break;
            }
        }
        off += FRAME_HEADER + len;
        s.good_len = off;
    }
    s
}

/// Whether a whole frame with a matching CRC and a known type starts at `off`.
fn good_frame_at(buf: &[u8], off: usize) -> bool {
    let Some(h) = buf.get(off..off + FRAME_HEADER) else {
        return false;
    };
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len > MAX_FRAME {
        return false;
    }
    let start = off + FRAME_HEADER;
    match buf.get(start..start + len) {
        Some(p) => crc32fast::hash(p) == crc && decode(p).is_ok(),
        None => false,
    }
}

/// A frame of exactly `frame_len` bytes that marks its place as dead-lettered.
fn skip_frame(frame_len: u64) -> Vec<u8> {
    let mut payload = vec![0u8; (frame_len as usize).saturating_sub(FRAME_HEADER).max(1)];
    payload[0] = T_SKIP;
    let mut out = Vec::with_capacity(frame_len as usize);
    push_frame(&mut out, &payload);
    out
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A dead-letter line without `at` (added when written).
type DlqLine = serde_json::Map<String, serde_json::Value>;

fn record_line(r: &Record, reason: &str) -> DlqLine {
    let mut line = serde_json::Map::new();
    line.insert("seq".into(), r.seq.into());
    line.insert("kind".into(), r.kind.as_str().into());
    line.insert("id".into(), r.id.clone().into());
    line.insert("reason".into(), reason.into());
    match serde_json::from_slice::<serde_json::Value>(&r.body) {
        Ok(v) => {
            line.insert("body".into(), v);
        }
        Err(_) => {
            line.insert("body_base64".into(), base64(&r.body).into());
        }
    }
    line
}

/// The line of bytes that could not be read back as a record: `seq`, `kind` and `id` as the
/// outbox indexed them when known, the segment and offset, and the raw bytes.
fn raw_line(
    known: Option<(u64, &Pending)>,
    segment: &Path,
    offset: u64,
    raw: &[u8],
    reason: &str,
) -> DlqLine {
    let mut line = serde_json::Map::new();
    if let Some((seq, p)) = known {
        line.insert("seq".into(), seq.into());
        line.insert("kind".into(), p.kind.as_str().into());
        line.insert("id".into(), p.id.clone().into());
    }
    line.insert("reason".into(), reason.into());
    let name = segment
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    line.insert("segment".into(), name.into());
    line.insert("offset".into(), offset.into());
    line.insert("raw_base64".into(), base64(raw).into());
    line
}

/// Overwrites the frame at `offset` (of `frame_len` bytes) with a skip frame, synced.
/// A frame too short to hold a skip frame (an empty payload) is left as it is.
fn overwrite_with_skip(path: &Path, offset: u64, frame_len: u64) -> Result<(), OutboxError> {
    if frame_len <= FRAME_HEADER as u64 {
        return Ok(());
    }
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path, "open"))?;
    f.write_all_at(&skip_frame(frame_len), offset)
        .map_err(io_err(path, "overwrite unreadable frame"))?;
    f.sync_data().map_err(io_err(path, "fdatasync"))
}

fn segment_name(first_seq: u64) -> String {
    format!("outbox-{first_seq:020}.seg")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("outbox-")?
        .strip_suffix(".seg")?
        .parse()
        .ok()
}

fn sync_dir(dir: &Path) -> Result<(), OutboxError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir, "fsync directory"))
}

fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The outbox

#[derive(Debug, Clone)]
struct Pending {
    kind: Kind,
    id: String,
    /// The segment (its first seq).
    seg: u64,
    /// Offset of the frame in the segment.
    offset: u64,
    /// Length of the frame.
    len: u64,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Records of this segment that are neither acknowledged nor dead-lettered.
    open_records: u64,
}

struct Inner {
    dir: PathBuf,
    /// The open lock file: its exclusive lock is held as long as the outbox is open.
    _lock: File,
    max_bytes: u64,
    segment_bytes: u64,
    segments: BTreeMap<u64, Segment>,
    active: u64,
    file: File,
    size: u64,
    dlq: File,
    pending: BTreeMap<u64, Pending>,
    pending_bytes: u64,
    next_seq: u64,
    acked_total: u64,
    dlq_total: u64,
    overflow_total: u64,
    unreadable_total: u64,
    degraded_since_ms: Option<i64>,
    torn_bytes: u64,
    corrupt_segments: u64,
    /// Length of `dlq.jsonl` after its last synced line.
    dlq_len: u64,
    write_errors: u64,
    recoveries: u64,
    /// Set when a failed write could not be cut back: the tail of a file is unknown.
    failed: Option<String>,
    /// Writes still to fail on purpose ([`Outbox::inject_write_failures`]).
    inject_failures: u32,
}

/// The durable, bounded outbox. See the module documentation.
pub struct Outbox {
    inner: Mutex<Inner>,
    notify: tokio::sync::Notify,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.lock();
        write!(
            f,
            "Outbox({}, {} pending)",
            g.dir.display(),
            g.pending.len()
        )
    }
}

fn open_segment_file(path: &Path) -> Result<File, OutboxError> {
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(io_err(path, "open"))
}

/// Creates a new segment with its magic, synced, and its directory entry synced.
fn create_segment(dir: &Path, first_seq: u64) -> Result<(File, PathBuf), OutboxError> {
    let path = dir.join(segment_name(first_seq));
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path, "create"))?;
    f.write_all(MAGIC).map_err(io_err(&path, "write magic"))?;
    f.sync_all().map_err(io_err(&path, "fsync"))?;
    drop(f);
    sync_dir(dir)?;
    Ok((open_segment_file(&path)?, path))
}

/// Opens the dead-letter file for appending, cutting off a partial last line; returns the
/// file and its length.
fn open_dlq(dir: &Path) -> Result<(File, u64), OutboxError> {
    let path = dir.join(DLQ_FILE);
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path, "open"))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(io_err(&path, "read"))?;
    if !buf.is_empty() && buf.last() != Some(&b'\n') {
        let keep = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        f.set_len(keep as u64)
            .map_err(io_err(&path, "truncate partial line"))?;
        f.sync_all().map_err(io_err(&path, "fsync"))?;
        tracing::warn!(file = %path.display(), cut = buf.len() - keep, "dead-letter file: partial last line cut off");
        return Ok((f, keep as u64));
    }
    Ok((f, buf.len() as u64))
}

/// Takes the exclusive lock on the outbox directory's lock file, without waiting. The lock
/// belongs to this open file description (`flock`): it is released when the file is closed or
/// the process exits (even by `SIGKILL`), and a second open in the same process is refused too.
fn lock_dir(dir: &Path) -> Result<File, OutboxError> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path, "open lock file"))?;
    // `fs4` (`flock(LOCK_EX | LOCK_NB)` through rustix) rather than `File::try_lock`, which
    // needs Rust 1.89.
    match fs4::FileExt::try_lock(&f) {
        Ok(()) => Ok(f),
        Err(fs4::TryLockError::WouldBlock) => Err(OutboxError::Locked {
            dir: dir.display().to_string(),
        }),
        Err(fs4::TryLockError::Error(e)) => Err(io_err(&path, "lock")(e)),
    }
}

impl Outbox {
    /// Opens (creating if needed) the outbox in `settings.dir`, recovering what is on disk.
    /// Fails with [`OutboxError::Locked`], touching nothing, while another open outbox (in this
    /// or another process) holds the directory.
    pub fn open(settings: &OutboxSettings) -> Result<Outbox, OutboxError> {
        let dir = settings.dir.clone();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir, "create"))?;
        let lock = lock_dir(&dir)?;
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io_err(&dir, "list"))? {
            let e = e.map_err(io_err(&dir, "list"))?;
            if let Some(seq) = e.file_name().to_str().and_then(parse_segment_name) {
                found.push((seq, e.path()));
            }
        }
        found.sort();

        let mut segments = BTreeMap::new();
        let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
        let mut resolved: Vec<u64> = Vec::new();
        let mut next_seq = 1u64;
        let mut torn_bytes = 0u64;
        let mut corrupt_segments = 0u64;
        let mut overflow_seen: Option<i64> = None;
        let mut active: Option<(u64, u64)> = None;
        // Bad bytes to move to the dead-letter file once it is open:
        // `(segment, offset, bytes, why, cut the segment there rather than overwrite them)`.
        let mut bad: Vec<(PathBuf, u64, Vec<u8>, String, bool)> = Vec::new();
        let count = found.len();
        for (i, (first, path)) in found.into_iter().enumerate() {
            let newest = i + 1 == count;
            next_seq = next_seq.max(first);
            let mut buf = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut buf))
                .map_err(io_err(&path, "read"))?;
            if buf.len() < MAGIC.len() || &buf[..MAGIC.len()] != MAGIC {
                if newest && buf.len() < MAGIC.len() && MAGIC.starts_with(&buf) {
                    // Died while creating the segment: nothing in it was acknowledged.
                    tracing::warn!(segment = %path.display(), "outbox: torn new segment removed");
                    torn_bytes += buf.len() as u64;
                    std::fs::remove_file(&path).map_err(io_err(&path, "remove torn segment"))?;
                    continue;
                }
                // Not an outbox segment any more: set aside (kept for inspection), and never
                // reused as a segment name.
                let aside = path.with_extension("seg.corrupt");
                tracing::error!(segment = %path.display(), renamed = %aside.display(), "outbox: segment has no magic; set aside");
                std::fs::rename(&path, &aside)
                    .map_err(io_err(&path, "set corrupt segment aside"))?;
                corrupt_segments += 1;
                next_seq = next_seq.max(first + 1);
                continue;
            }
            let s = scan(&buf);
            for (off, len, why) in &s.unreadable {
                let bytes = buf
                    .get(*off as usize..(*off + *len) as usize)
                    .unwrap_or_default()
                    .to_vec();
                bad.push((path.clone(), *off, bytes, why.clone(), false));
            }
            for (offset, len, e) in s.entries {
                match e {
                    Entry::Record { seq, kind, id, .. } => {
                        next_seq = next_seq.max(seq + 1);
                        pending.insert(
                            seq,
                            Pending {
                                kind,
                                id,
                                seg: first,
                                offset,
                                len,
                            },
                        );
                    }
                    Entry::Ack(seq) => resolved.push(seq),
                    Entry::Skip => {}
                    Entry::Dead { seq, cause, at_ms } => {
                        if cause == CAUSE_OVERFLOW {
                            overflow_seen = Some(overflow_seen.map_or(at_ms, |t| t.min(at_ms)));
                        }
                        resolved.push(seq);
                    }
                }
            }
            let mut size = buf.len() as u64;
            if let Some(why) = s.stop {
                if newest {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_err(&path, "open"))?;
                    f.set_len(s.good_len as u64)
                        .map_err(io_err(&path, "truncate torn tail"))?;
                    f.sync_all().map_err(io_err(&path, "fsync"))?;
                    let cut = buf.len() - s.good_len;
                    torn_bytes += cut as u64;
                    size = s.good_len as u64;
                    tracing::warn!(segment = %path.display(), %why, cut, "outbox: torn tail truncated");
                } else {
                    corrupt_segments += 1;
                    tracing::error!(segment = %path.display(), %why, "outbox: segment corrupt; rest moved to the dead-letter file");
                    let rest = buf.get(s.good_len..).unwrap_or_default().to_vec();
                    let why = format!("framing lost at offset {} ({why})", s.good_len);
                    bad.push((path.clone(), s.good_len as u64, rest, why, true));
                }
            }
            if newest {
                active = Some((first, size));
            }
            segments.insert(
                first,
                Segment {
                    path,
                    open_records: 0,
                },
            );
        }
        for seq in resolved {
            pending.remove(&seq);
        }
        let mut pending_bytes = 0u64;
        for p in pending.values() {
            pending_bytes += p.len;
            if let Some(s) = segments.get_mut(&p.seg) {
                s.open_records += 1;
            }
        }
        let (active, file, size) = match active {
            Some((first, size)) => {
                let path = dir.join(segment_name(first));
                (first, open_segment_file(&path)?, size)
            }
            None => {
                let (f, path) = create_segment(&dir, next_seq)?;
                segments.insert(
                    next_seq,
                    Segment {
                        path,
                        open_records: 0,
                    },
                );
                (next_seq, f, MAGIC.len() as u64)
            }
        };
        let (dlq, dlq_len) = open_dlq(&dir)?;
        let degraded_since_ms = if pending.is_empty() {
            None
        } else {
            overflow_seen
        };
        let mut inner = Inner {
            dir,
            _lock: lock,
            max_bytes: settings.max_bytes,
            segment_bytes: settings.segment_bytes,
            segments,
            active,
            file,
            size,
            dlq,
            pending,
            pending_bytes,
            next_seq,
            acked_total: 0,
            dlq_total: 0,
            overflow_total: 0,
            unreadable_total: 0,
            degraded_since_ms,
            torn_bytes,
            corrupt_segments,
            dlq_len,
            write_errors: 0,
            recoveries: 0,
            failed: None,
            inject_failures: 0,
        };
        for (path, offset, bytes, why, cut) in bad {
            inner.dead_letter_region(&path, offset, &bytes, &why, cut);
        }
        inner.rotate_if_full()?;
        inner.delete_resolved_segments()?;
        if inner.pending.len() as u64 > 0 {
            tracing::info!(
                pending = inner.pending.len(),
                bytes = inner.pending_bytes,
                next_seq = inner.next_seq,
                "outbox: recovered pending records"
            );
        }
        Ok(Outbox {
            inner: Mutex::new(inner),
            notify: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a record and returns its seq once it is durable. When the outbox would exceed
    /// `maxBytes`, the oldest pending records are dead-lettered first (see the module docs).
    pub fn append(&self, kind: Kind, id: &str, body: &[u8]) -> Result<u64, OutboxError> {
        self.append_with(kind, id, |_| body.to_vec())
    }

    /// Like [`Outbox::append`], with the body made by `make(seq)` once the seq is known (so
    /// the engine can put `ft.outbox_seq` in the signed record). `make` runs under the
    /// outbox's lock: keep it short.
    pub fn append_with(
        &self,
        kind: Kind,
        id: &str,
        make: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<u64, OutboxError> {
        if id.len() > u16::MAX as usize {
            return Err(OutboxError::IdTooLong(id.len()));
        }
        let seq = {
            let mut g = self.lock();
            g.repair()?;
            let seq = g.next_seq;
            let body = make(seq);
            g.append(seq, kind, id, &body)?;
            seq
        };
        self.notify.notify_one();
        Ok(seq)
    }

    /// The seq the next append gets.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// Records waiting for delivery.
    pub fn pending_len(&self) -> usize {
        self.lock().pending.len()
    }

    /// Bytes of the pending records' frames.
    pub fn pending_bytes(&self) -> u64 {
        self.lock().pending_bytes
    }

    /// Up to `max` pending records, oldest first, read back from their segments.
    ///
    /// A record whose bytes cannot be read back as the record that was written (a CRC
    /// mismatch, an undecodable frame, a segment cut short) is moved to the dead-letter file
    /// with its raw bytes and reason `unreadable: ...`, counted in
    /// [`OutboxStats::unreadable_total`], and the batch goes on with the next record. `Err`
    /// only when a read or that move failed, which may work on the next call.
    pub fn peek_batch(&self, max: usize) -> Result<Vec<Record>, OutboxError> {
        let mut g = self.lock();
        let mut out = Vec::new();
        let mut from = 0u64;
        while out.len() < max {
            let Some((seq, p)) = g.pending.range(from..).next().map(|(s, p)| (*s, p.clone()))
            else {
                break;
            };
            from = seq + 1;
            match g.read_frame(seq, &p)? {
                Ok(rec) => out.push(rec),
                Err((why, raw)) => g.quarantine(seq, &p, &why, &raw)?,
            }
        }
        Ok(out)
    }

    /// Marks a record delivered (durably). Returns false when it was not pending (already
    /// acknowledged, dead-lettered, or unknown).
    pub fn ack(&self, seq: u64) -> Result<bool, OutboxError> {
        let mut g = self.lock();
        g.repair()?;
        if !g.pending.contains_key(&seq) {
            return Ok(false);
        }
        let mut buf = Vec::new();
        push_frame(&mut buf, &ack_payload(seq));
        g.write_synced(&buf)?;
        g.resolve(seq);
        g.acked_total += 1;
        g.after_resolve()?;
        Ok(true)
    }

    /// Moves a pending record to the dead-letter file with `reason` (durably). Returns false
    /// when it was not pending.
    pub fn dead_letter(&self, seq: u64, reason: &str) -> Result<bool, OutboxError> {
        let mut g = self.lock();
        g.repair()?;
        let Some(p) = g.pending.get(&seq).cloned() else {
            return Ok(false);
        };
        let line = g.line_for(seq, &p, reason)?;
        let at = now_ms();
        g.write_dlq(vec![line], at)?;
        let mut buf = Vec::new();
        push_frame(&mut buf, &dead_payload(seq, CAUSE_REJECTED, at));
        g.write_synced(&buf)?;
        g.resolve(seq);
        g.dlq_total += 1;
        g.after_resolve()?;
        Ok(true)
    }

    /// Counters and sizes.
    pub fn stats(&self) -> OutboxStats {
        let g = self.lock();
        OutboxStats {
            pending: g.pending.len() as u64,
            pending_bytes: g.pending_bytes,
            acked_total: g.acked_total,
            dlq_total: g.dlq_total,
            overflow_total: g.overflow_total,
            unreadable_total: g.unreadable_total,
            degraded: g.degraded_since_ms.is_some(),
            next_seq: g.next_seq,
            segments: g.segments.len() as u64,
            torn_bytes: g.torn_bytes,
            corrupt_segments: g.corrupt_segments,
            write_errors: g.write_errors,
            recoveries: g.recoveries,
            failed: g.failed.is_some(),
        }
    }

    /// When records were first dropped by an overflow that has not drained yet (ms since the
    /// Unix epoch), or `None` when the outbox is not degraded.
    pub fn degraded_since(&self) -> Option<i64> {
        self.lock().degraded_since_ms
    }

    /// The fallbacks to report in `ft.fallbacks`: `["outbox_overflow"]` while degraded.
    pub fn fallbacks(&self) -> Vec<String> {
        if self.lock().degraded_since_ms.is_some() {
            vec![FALLBACK_OVERFLOW.to_owned()]
        } else {
            Vec::new()
        }
    }

    /// Resolves when a record was appended since the last call (a wake-up is kept if nobody
    /// waits, so none is lost between a `peek_batch` that found nothing and this call).
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// The outbox directory.
    pub fn dir(&self) -> PathBuf {
        self.lock().dir.clone()
    }

    /// The dead-letter file.
    pub fn dlq_path(&self) -> PathBuf {
        self.lock().dir.join(DLQ_FILE)
    }

    /// Makes the next `n` writes (segment or dead-letter file) fail as a full disk would, before
    /// anything reaches the file. For tests of what happens to a record that could not be
    /// stored; a running sidecar never calls it.
    #[doc(hidden)]
    pub fn inject_write_failures(&self, n: u32) {
        self.lock().inject_failures = n;
    }

    /// Makes the next write fail *and* leaves the outbox refusing writes until its repair (as
    /// when a failed write could not be cut back), for tests of the repair.
    #[doc(hidden)]
    pub fn inject_unknown_tail(&self) {
        let mut g = self.lock();
        g.failed = Some("injected: tail of the active segment unknown".into());
        g.write_errors += 1;
    }
}

impl Inner {
    /// After a write that could not be cut back: reopens the active segment and the
    /// dead-letter file and cuts both to their last synced length. Refuses (`Failed`) while
    /// that does not work.
    fn repair(&mut self) -> Result<(), OutboxError> {
        let Some(why) = self.failed.clone() else {
            return Ok(());
        };
        let seg = self.active_path();
        let dlq_path = self.dir.join(DLQ_FILE);
        let cut = |path: &Path, len: u64| -> Result<File, OutboxError> {
            let f = OpenOptions::new()
                .read(true)
                .append(true)
                .open(path)
                .map_err(io_err(path, "reopen"))?;
            f.set_len(len).map_err(io_err(path, "cut back"))?;
            f.sync_all().map_err(io_err(path, "fsync"))?;
            Ok(f)
        };
        let repaired = cut(&seg, self.size).and_then(|f| Ok((f, cut(&dlq_path, self.dlq_len)?)));
        match repaired {
            Ok((file, dlq)) => {
                self.file = file;
                self.dlq = dlq;
                self.failed = None;
                self.recoveries += 1;
                tracing::warn!(after = %why, "outbox: repaired after a failed write; writing again");
                // A rotation that failed with the write is tried again.
                self.rotate_if_full()
            }
            Err(e) => {
                tracing::error!(error = %e, "outbox: still cannot repair after a failed write");
                Err(OutboxError::Failed(format!("{why}; repair: {e}")))
            }
        }
    }

    /// A write failure injected by [`Outbox::inject_write_failures`].
    fn injected(&mut self, path: &Path, op: &'static str) -> Result<(), OutboxError> {
        if self.inject_failures == 0 {
            return Ok(());
        }
        self.inject_failures -= 1;
        Err(io_err(path, op)(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            "no space left on device (injected)",
        )))
    }

    fn active_path(&self) -> PathBuf {
        self.dir.join(segment_name(self.active))
    }

    /// Appends `buf` to the active segment and syncs it. On failure the segment is cut back to
    /// its last synced size; if that fails too, writes are refused until [`Inner::repair`]
    /// succeeds.
    fn write_synced(&mut self, buf: &[u8]) -> Result<(), OutboxError> {
        let path = self.active_path();
        let res = self.injected(&path, "append").and_then(|()| {
            self.file
                .write_all(buf)
                .map_err(io_err(&path, "append"))
                .and_then(|()| self.file.sync_data().map_err(io_err(&path, "fdatasync")))
        });
        match res {
            Ok(()) => {
                self.size += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.write_errors += 1;
                let len = self.size;
                let cut = self.file.set_len(len).and_then(|()| self.file.sync_all());
                match cut {
                    Ok(()) => tracing::error!(error = %e, "outbox: write failed and was cut back"),
                    Err(te) => {
                        tracing::error!(error = %e, cut_error = %te, "outbox: write failed and cannot be cut back yet; writes wait for a repair");
                        self.failed = Some(e.to_string());
                    }
                }
                Err(e)
            }
        }
    }

    fn segment_path(&self, first: u64) -> PathBuf {
        self.segments
            .get(&first)
            .map(|s| s.path.clone())
            .unwrap_or_else(|| self.dir.join(segment_name(first)))
    }

    /// Reads a pending record back. `Ok(Err((why, raw)))`: its bytes are there but are not the
    /// record that was written (or are gone), and never will be; `Err`: the read itself failed
    /// (it may work later).
    fn read_frame(
        &self,
        seq: u64,
        p: &Pending,
    ) -> Result<Result<Record, (String, Vec<u8>)>, OutboxError> {
        let seg = self.segment_path(p.seg);
        let off = p.offset;
        let f = match File::open(&seg) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Err((
                    format!("segment missing, record at offset {off}"),
                    Vec::new(),
                )));
            }
            Err(e) => return Err(io_err(&seg, "open")(e)),
        };
        let mut frame = vec![0u8; p.len as usize];
        let mut got = 0usize;
        while got < frame.len() {
            match f.read_at(&mut frame[got..], off + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(&seg, "read")(e)),
            }
        }
        if got < frame.len() {
            frame.truncate(got);
            return Ok(Err((
                format!("segment ends inside the record at offset {off}"),
                frame,
            )));
        }
        let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as u64;
        let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let payload = &frame[FRAME_HEADER..];
        if len + FRAME_HEADER as u64 != p.len {
            return Ok(Err((
                format!("frame length changed at offset {off}"),
                frame,
            )));
        }
        if crc32fast::hash(payload) != crc {
            return Ok(Err((format!("crc mismatch at offset {off}"), frame)));
        }
        let (s, kind, id, body) = match decode_record(payload) {
            Ok(d) => d,
            Err(why) => return Ok(Err((format!("undecodable at offset {off}: {why}"), frame))),
        };
        if s != seq || kind != p.kind || id != p.id {
            let why = format!(
                "found seq {s} {} {id:?} at offset {off} where {} {:?} was written",
                kind.as_str(),
                p.kind.as_str(),
                p.id
            );
            return Ok(Err((why, frame)));
        }
        Ok(Ok(Record {
            seq,
            kind,
            id,
            body: body.to_vec(),
        }))
    }

    /// The dead-letter line of a pending record: the record, or its raw bytes when they cannot
    /// be read back (the reason then says why).
    fn line_for(&self, seq: u64, p: &Pending, reason: &str) -> Result<DlqLine, OutboxError> {
        Ok(match self.read_frame(seq, p)? {
            Ok(rec) => record_line(&rec, reason),
            Err((why, raw)) => {
                let seg = self.segment_path(p.seg);
                let reason = format!("{reason}; unreadable: {why} in {}", seg.display());
                raw_line(Some((seq, p)), &seg, p.offset, &raw, &reason)
            }
        })
    }

    /// Moves bytes found unreadable at open to the dead-letter file (raw, reason
    /// `unreadable: ...`), then overwrites them with a skip frame or (`cut`) cuts the segment
    /// there, so a restart does not meet them again. On failure they stay where they are and
    /// the next open tries again.
    fn dead_letter_region(&mut self, seg: &Path, offset: u64, bytes: &[u8], why: &str, cut: bool) {
        let reason = format!("unreadable: {why} in {}", seg.display());
        let res = self
            .write_dlq(vec![raw_line(None, seg, offset, bytes, &reason)], now_ms())
            .and_then(|()| {
                if cut {
                    OpenOptions::new()
                        .write(true)
                        .open(seg)
                        .and_then(|f| {
                            f.set_len(offset)?;
                            f.sync_all()
                        })
                        .map_err(io_err(seg, "cut after the dead-lettered rest"))
                } else {
                    overwrite_with_skip(seg, offset, bytes.len() as u64)
                }
            });
        match res {
            Ok(()) => {
                self.dlq_total += 1;
                self.unreadable_total += 1;
                tracing::error!(segment = %seg.display(), offset, bytes = bytes.len(), %why, "outbox: unreadable bytes moved to the dead-letter file");
            }
            Err(e) => {
                tracing::error!(segment = %seg.display(), offset, error = %e, "outbox: unreadable bytes could not be moved to the dead-letter file; kept for the next start");
            }
        }
    }

    /// Moves a pending record that cannot be read back to the dead-letter file (its raw bytes,
    /// reason `unreadable: ...`), marks it `Dead`, and overwrites its frame with a skip frame
    /// of the same length so a restart does not meet the bad bytes again.
    fn quarantine(
        &mut self,
        seq: u64,
        p: &Pending,
        why: &str,
        raw: &[u8],
    ) -> Result<(), OutboxError> {
        self.repair()?;
        let seg = self.segment_path(p.seg);
        let reason = format!("unreadable: {why} in {}", seg.display());
        tracing::error!(seq, id = %p.id, segment = %seg.display(), %why, "outbox: record cannot be read back; moved to the dead-letter file");
        let at = now_ms();
        self.write_dlq(
            vec![raw_line(Some((seq, p)), &seg, p.offset, raw, &reason)],
            at,
        )?;
        let mut buf = Vec::new();
        push_frame(&mut buf, &dead_payload(seq, CAUSE_UNREADABLE, at));
        self.write_synced(&buf)?;
        self.resolve(seq);
        self.dlq_total += 1;
        self.unreadable_total += 1;
        // Best effort: the `Dead` frame already resolves the record; the skip frame only keeps
        // a restart from dead-lettering the bad bytes a second time.
        if let Err(e) = overwrite_with_skip(&seg, p.offset, p.len) {
            tracing::warn!(error = %e, "outbox: could not overwrite an unreadable frame");
        }
        self.after_resolve()
    }

    fn append(&mut self, seq: u64, kind: Kind, id: &str, body: &[u8]) -> Result<(), OutboxError> {
        let payload = record_payload(seq, kind, id, body);
        let frame_len = (FRAME_HEADER + payload.len()) as u64;
        if frame_len > self.max_bytes || payload.len() > MAX_FRAME {
            return Err(OutboxError::TooLarge {
                size: frame_len,
                max: self.max_bytes.min(MAX_FRAME as u64),
            });
        }
        let mut buf = Vec::with_capacity(frame_len as usize + 64);
        // Make room: the oldest pending records go to the dead-letter file first (synced),
        // then their `Dead` frames are written with the new record in one synced write.
        let mut dropped: Vec<u64> = Vec::new();
        let mut freed = 0u64;
        for (&old, p) in &self.pending {
            if self.pending_bytes - freed + frame_len <= self.max_bytes {
                break;
            }
            dropped.push(old);
            freed += p.len;
        }
        let at = now_ms();
        if !dropped.is_empty() {
            let mut lines = Vec::with_capacity(dropped.len());
            for old in &dropped {
                if let Some(p) = self.pending.get(old) {
                    lines.push(self.line_for(*old, p, REASON_OVERFLOW)?);
                }
            }
            self.write_dlq(lines, at)?;
            for old in &dropped {
                push_frame(&mut buf, &dead_payload(*old, CAUSE_OVERFLOW, at));
            }
            tracing::warn!(
                dropped = dropped.len(),
                bytes = freed,
                "outbox full: oldest records moved to the dead-letter file"
            );
        }
        let offset = self.size + buf.len() as u64;
        push_frame(&mut buf, &payload);
        self.write_synced(&buf)?;
        for old in &dropped {
            self.resolve(*old);
        }
        self.dlq_total += dropped.len() as u64;
        self.overflow_total += dropped.len() as u64;
        if !dropped.is_empty() && self.degraded_since_ms.is_none() {
            self.degraded_since_ms = Some(at);
        }
        self.pending.insert(
            seq,
            Pending {
                kind,
                id: id.to_owned(),
                seg: self.active,
                offset,
                len: frame_len,
            },
        );
        self.pending_bytes += frame_len;
        if let Some(s) = self.segments.get_mut(&self.active) {
            s.open_records += 1;
        }
        self.next_seq = seq + 1;
        // The record is durable: what follows only tidies up, and is tried again after the next
        // write if it fails, so the caller must not store the record a second time.
        if let Err(e) = self
            .rotate_if_full()
            .and_then(|()| self.delete_resolved_segments())
        {
            tracing::error!(error = %e, "outbox: record stored; segment rotation or deletion failed");
        }
        Ok(())
    }

    /// Appends `lines` to the dead-letter file and syncs it.
    fn write_dlq(&mut self, lines: Vec<DlqLine>, at_ms: i64) -> Result<(), OutboxError> {
        let path = self.dir.join(DLQ_FILE);
        let at = rfc3339(at_ms);
        let mut text = Vec::new();
        for mut line in lines {
            line.insert("at".into(), at.clone().into());
            let mut s = serde_json::Value::Object(line).to_string();
            s.push('\n');
            text.extend_from_slice(s.as_bytes());
        }
        let res = self.injected(&path, "append").and_then(|()| {
            self.dlq
                .write_all(&text)
                .map_err(io_err(&path, "append"))
                .and_then(|()| self.dlq.sync_data().map_err(io_err(&path, "fdatasync")))
        });
        match res {
            Ok(()) => {
                self.dlq_len += text.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.write_errors += 1;
                let len = self.dlq_len;
                if let Err(te) = self.dlq.set_len(len).and_then(|()| self.dlq.sync_all()) {
                    tracing::error!(error = %e, cut_error = %te, "outbox: dead-letter write failed and cannot be cut back yet; writes wait for a repair");
                    self.failed = Some(e.to_string());
                } else {
                    tracing::error!(error = %e, "outbox: dead-letter write failed and was cut back");
                }
                Err(e)
            }
        }
    }

    /// Drops `seq` from the pending set (its frame was written and synced).
    fn resolve(&mut self, seq: u64) {
        if let Some(p) = self.pending.remove(&seq) {
            self.pending_bytes -= p.len;
            if let Some(s) = self.segments.get_mut(&p.seg) {
                s.open_records = s.open_records.saturating_sub(1);
            }
        }
    }

    fn after_resolve(&mut self) -> Result<(), OutboxError> {
        if self.pending.is_empty() && self.degraded_since_ms.is_some() {
            tracing::info!("outbox drained: no longer degraded");
            self.degraded_since_ms = None;
        }
        self.rotate_if_full()?;
        self.delete_resolved_segments()
    }

    fn rotate_if_full(&mut self) -> Result<(), OutboxError> {
        if self.size < self.segment_bytes {
            return Ok(());
        }
        // Everything written so far was synced by its writer; the new segment is named after
        // the next seq, so numbering survives even when every older segment is deleted.
        let first = self.next_seq.max(self.active + 1);
        // On failure the active segment stays as it is and the rotation is tried again after
        // the next write.
        let (file, path) = create_segment(&self.dir, first).inspect_err(|_| {
            self.write_errors += 1;
        })?;
        self.segments.insert(
            first,
            Segment {
                path,
                open_records: 0,
            },
        );
        self.file = file;
        self.active = first;
        self.size = MAGIC.len() as u64;
        Ok(())
    }

    /// Deletes sealed segments from the oldest while every record in them is resolved.
    fn delete_resolved_segments(&mut self) -> Result<(), OutboxError> {
        let mut removed = false;
        while let Some((&first, seg)) = self.segments.first_key_value() {
            if first == self.active || seg.open_records > 0 {
                break;
            }
            std::fs::remove_file(&seg.path).map_err(io_err(&seg.path, "remove segment"))?;
            self.segments.remove(&first);
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn settings(dir: &Path, max_bytes: u64, segment_bytes: u64) -> OutboxSettings {
        OutboxSettings {
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes,
        }
    }

    fn body(i: u64) -> Vec<u8> {
        format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(100)).into_bytes()
    }

    fn seqs(o: &Outbox) -> Vec<u64> {
        o.peek_batch(usize::MAX)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(parse_segment_name)
                    .is_some()
            })
            .collect();
        v.sort();
        v
    }

    fn dlq_lines(dir: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join(DLQ_FILE))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused_until_the_first_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let s = settings(d.path(), 1 << 20, 64 << 10);
        let o = Outbox::open(&s).unwrap();
        o.append(Kind::Pcs, "id-1", &body(1)).unwrap();
        let seg = segment_files(d.path()).pop().unwrap();
        let before = std::fs::read(&seg).unwrap();
        let err = Outbox::open(&s).unwrap_err();
        assert!(matches!(err, OutboxError::Locked { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&d.path().display().to_string()), "{msg}");
        assert!(msg.contains("another process"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        assert_eq!(
            std::fs::read(&seg).unwrap(),
            before,
            "the refused open touched nothing"
        );
        // The first one still works, and once it is dropped the directory can be opened again.
        o.append(Kind::Pcs, "id-2", &body(2)).unwrap();
        drop(o);
        let o = Outbox::open(&s).unwrap();
        assert_eq!(seqs(&o), vec![1, 2]);
    }

    #[test]
    fn append_ack_and_restart_keeps_exactly_the_unacked() {
        let d = tempfile::tempdir().unwrap();
        let s = settings(d.path(), 1 << 20, 64 << 10);
        let o = Outbox::open(&s).unwrap();
        assert_eq!(o.next_seq(), 1);
        for i in 1..=6 {
            let kind = if i % 2 == 0 { Kind::Signals } else { Kind::Pcs };
            assert_eq!(o.append(kind, &format!("id-{i}"), &body(i)).unwrap(), i);
        }
        assert!(o.ack(1).unwrap());
        assert!(o.ack(4).unwrap());
        assert!(!o.ack(4).unwrap(), "a second ack is a no-op");
        assert!(!o.ack(99).unwrap());
        assert!(o.dead_letter(2, "401: bad signature").unwrap());
        assert_eq!(seqs(&o), vec![3, 5, 6]);
        let st = o.stats();
        assert_eq!((st.pending, st.acked_total, st.dlq_total), (3, 2, 1));
        let bytes = o.pending_bytes();
        drop(o);

        let o = Outbox::open(&s).unwrap();
        assert_eq!(seqs(&o), vec![3, 5, 6]);
        assert_eq!(o.pending_bytes(), bytes);
        assert_eq!(o.next_seq(), 7);
        let recs = o.peek_batch(2).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(
            recs[0],
            Record {
                seq: 3,
                kind: Kind::Pcs,
                id: "id-3".into(),
                body: body(3)
            }
        );
        assert_eq!(recs[1].kind, Kind::Pcs);
        assert_eq!(o.append(Kind::Pcs, "id-7", &body(7)).unwrap(), 7);
        let dlq = dlq_lines(d.path());
        assert_eq!(dlq.len(), 1);
        assert_eq!(dlq[0]["seq"], 2);
        assert_eq!(dlq[0]["kind"], "signals");
        assert_eq!(dlq[0]["id"], "id-2");
        assert_eq!(dlq[0]["reason"], "401: bad signature");
        assert_eq!(dlq[0]["body"]["n"], 2);
        assert!(dlq[0]["at"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn torn_tail_is_truncated_and_numbering_continues() {
        let d = tempfile::tempdir().unwrap();
        let s = settings(d.path(), 1 << 20, 64 << 10);
        let o = Outbox::open(&s).unwrap();
        for i in 1..=3 {
            o.append(Kind::Pcs, &format!("id-{i}"), &body(i)).unwrap();
        }
        o.ack(1).unwrap();
        drop(o);
        let seg = segment_files(d.path()).pop().unwrap();
        let good = std::fs::metadata(&seg).unwrap().len();
        // A record frame cut in the middle: its header promises more bytes than follow.
        let mut frame = Vec::new();
        push_frame(&mut frame, &record_payload(4, Kind::Pcs, "id-4", &body(4)));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&frame[..frame.len() / 2]).unwrap();
        drop(f);

        let o = Outbox::open(&s).unwrap();
        assert_eq!(seqs(&o), vec![2, 3]);
        assert_eq!(o.stats().torn_bytes, (frame.len() / 2) as u64);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), good);
        assert_eq!(o.append(Kind::Pcs, "id-4", &body(4)).unwrap(), 4);
        drop(o);

        // Garbage after the last frame (a CRC that does not match).
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[40, 0, 0, 0, 1, 2, 3, 4]).unwrap();
        f.write_all(&[0xAB; 40]).unwrap();
        drop(f);
        let o = Outbox::open(&s).unwrap();
        assert_eq!(seqs(&o), vec![2, 3, 4]);
        assert_eq!(o.stats().torn_bytes, 48);
        assert_eq!(o.stats().corrupt_segments, 0);
        o.ack(2).unwrap();
        drop(o);
        let o = Outbox::open(&s).unwrap();
        assert_eq!(seqs(&o), vec![3, 4], "the ack after the cut is kept");
        assert_eq!(o.next_seq(), 5);
    }

    #[test]
    fn torn_new_segment_and_partial_dlq_line_are_cut() {
        let d = tempfile::tempdir().unwrap();
        let s = settings(d.path(), 1 << 20, 64 << 10);
        let o = Outbox::open(&s).unwrap();
        o.append(Kind::Pcs, "a", &body(1)).unwrap();
        o.dead_letter(1, "max_attempts").unwrap();
        o.append(Kind::Pcs, "b", &body(2)).unwrap();
        drop(o);
        std::fs::write(d.path().join(segment_name(50)), &MAGIC[..3]).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.path().join(DLQ_FILE))
            .unwrap();
        f.write_all(b"{\"seq\":2,\"kin").unwrap();
        drop(f);
        let o = Outbox::open(&s).unwrap();
        assert_eq!(seqs(&o), vec![2]);
        // The torn segment was replaced by a whole one of the same name, and numbering goes on
        // from its name.
        assert_eq!(
            std::fs::read(d.path().join(segment_name(50))).unwrap(),
            MAGIC
        );
        assert_eq!(o.stats().torn_bytes, 3);
        assert_eq!(o.next_seq(), 50);
        assert_eq!(dlq_lines(d.path()).len(), 1);
        o.dead_letter(2, "max_attempts").unwrap();
        let lines = dlq_lines(d.path());
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["id"], "b");
    }

    #[test]
    fn overflow_moves_the_oldest_to_the_dlq_and_degrades_until_drained() {
        let d = tempfile::tempdir().unwrap();
        let one = (FRAME_HEADER + record_payload(1, Kind::Pcs, "id-01", &body(1)).len()) as u64;
        // Room for exactly four records.
        let s = settings(d.path(), one * 4 + one / 2, 1 << 20);
        let o = Outbox::open(&s).unwrap();
        for i in 1..=4 {
            o.append(Kind::Pcs, &format!("id-{i:02}"), &body(i))
                .unwrap();
        }
        assert_eq!(o.stats().overflow_total, 0);
        assert!(o.degraded_since().is_none());
        assert!(o.fallbacks().is_empty());
        for i in 5..=7 {
            o.append(Kind::Pcs, &format!("id-{i:02}"), &body(i))
                .unwrap();
        }
        assert_eq!(seqs(&o), vec![4, 5, 6, 7]);
        assert!(o.pending_bytes() <= s.max_bytes);
        let st = o.stats();
        assert_eq!((st.overflow_total, st.dlq_total, st.degraded), (3, 3, true));
        assert_eq!(o.fallbacks(), vec!["outbox_overflow".to_owned()]);
        let dlq = dlq_lines(d.path());
        let dropped: Vec<u64> = dlq.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
        assert_eq!(dropped, vec![1, 2, 3]);
        assert!(dlq.iter().all(|l| l["reason"] == REASON_OVERFLOW));

        // A restart keeps the degraded state while records are pending.
        drop(o);
        let o = Outbox::open(&s).unwrap();
        assert!(o.degraded_since().is_some());
        assert_eq!(seqs(&o), vec![4, 5, 6, 7]);
        for seq in 4..=6 {
            o.ack(seq).unwrap();
            assert!(o.degraded_since().is_some());
        }
        o.ack(7).unwrap();
        assert!(o.degraded_since().is_none(), "drained: no longer degraded");
        assert!(o.fallbacks().is_empty());

        // A record larger than the whole outbox is refused, nothing is dropped for it.
        o.append(Kind::Pcs, "id-08", &body(8)).unwrap();
        let huge = vec![b'x'; s.max_bytes as usize];
        assert!(matches!(
            o.append(Kind::Pcs, "huge", &huge),
            Err(OutboxError::TooLarge { .. })
        ));
        assert_eq!(seqs(&o), vec![8]);
    }

    #[test]
    fn a_failed_write_is_cut_back_and_the_next_append_goes_on() {
        let d = tempfile::tempdir().unwrap();
        let s = settings(d.path(), 1 << 20, 64 << 10);
        let o = Outbox::open(&s).unwrap();
        assert_eq!(o.append(Kind::Pcs, "id-1", &body(1)).unwrap(), 1);
        let seg = segment_files(d.path()).pop().unwrap();
        let len = std::fs::metadata(&seg).unwrap().len();
        o.inject_write_failures(1);
        let err = o.append(Kind::Pcs, "id-2", &body(2)).unwrap_err();
        assert!(err.to_string().contains("no space left"), "{err}");
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);
        let st = o.stats();
        assert_eq!((st.pending, st.write_errors, st.failed), (1, 1, false));
        // The record that failed is stored on the next try, with the seq it would have had.
        assert_eq!(o.append(Kind::Pcs, "id-2", &body(2)).unwrap(), 2);
        // An acknowledgement that fails leaves the record pending; the next one goes through.
        o.inject_write_failures(1);
        assert!(o.ack(1).is_err());
        assert_eq!(seqs(&o), vec![1, 2]);
        assert!(o.ack(1).unwrap());
        drop(o);
        let o = Outbox::open(&s).unwrap();
        assert_eq!(seqs(&o), vec![2]);
        assert_eq!(o.stats().torn_bytes, 0);
        let r = o.peek_batch(1).unwrap();
        assert_eq!((r[0].id.as_str(), r[0].body.clone()), ("id-2", body(2)));
    }

    #[test]
    fn an_unknown_tail_is_cut_off_before_the_next_write() {
        let d = tempfile::tempdir().unwrap();
        let s = settings(d.path(), 1 << 20, 64 << 10);
        let o = Outbox::open(&s).unwrap();
        o.append(Kind::Pcs, "id-1", &body(1)).unwrap();
        let seg = segment_files(d.path()).pop().unwrap();
        let good = std::fs::metadata(&seg).unwrap().len();
        // A write that failed half-way and could not be cut back: half a frame is on disk.
        let mut frame = Vec::new();
        push_frame(&mut frame, &record_payload(2, Kind::Pcs, "id-2", &body(2)));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&frame[..frame.len() / 2]).unwrap();
        drop(f);
        let mut dlq = OpenOptions::new()
            .append(true)
            .open(d.path().join(DLQ_FILE))
            .unwrap();
        dlq.write_all(b"{\"seq\":1,\"ki").unwrap();
        drop(dlq);
        o.inject_unknown_tail();
        assert!(o.stats().failed);
        assert_eq!(o.append(Kind::Pcs, "id-2", &body(2)).unwrap(), 2);
        let st = o.stats();
        assert_eq!((st.failed, st.recoveries, st.write_errors), (false, 1, 1));
        assert_eq!(
            std::fs::metadata(&seg).unwrap().len(),
            good + frame.len() as u64,
            "the half frame was cut before the new one"
        );
        o.dead_letter(1, "max_attempts").unwrap();
        assert_eq!(dlq_lines(d.path()).len(), 1, "the partial line was cut too");
        drop(o);
        let o = Outbox::open(&s).unwrap();
        assert_eq!(seqs(&o), vec![2]);
        assert_eq!(o.stats().torn_bytes, 0);
    }

    #[test]
    fn a_failed_overflow_drops_nothing_and_the_next_append_makes_room() {
        let d = tempfile::tempdir().unwrap();
        let one = (FRAME_HEADER + record_payload(1, Kind::Pcs, "id-01", &body(1)).len()) as u64;
        let s = settings(d.path(), one * 2 + one / 2, 1 << 20);
        let o = Outbox::open(&s).unwrap();
        for i in 1..=2 {
            o.append(Kind::Pcs, &format!("id-{i:02}"), &body(i))
                .unwrap();
        }
        // The dead-letter write of the overflow fails: nothing moves, nothing is appended.
        o.inject_write_failures(1);
        assert!(o.append(Kind::Pcs, "id-03", &body(3)).is_err());
        assert_eq!(seqs(&o), vec![1, 2]);
        assert_eq!(o.stats().overflow_total, 0);
        assert!(dlq_lines(d.path()).is_empty());
        assert_eq!(o.append(Kind::Pcs, "id-03", &body(3)).unwrap(), 3);
        assert_eq!(seqs(&o), vec![2, 3]);
        let dlq = dlq_lines(d.path());
        assert_eq!(dlq.len(), 1);
        assert_eq!(dlq[0]["id"], "id-01");
    }

    #[test]
    fn non_json_bodies_are_dead_lettered_in_base64() {
        let d = tempfile::tempdir().unwrap();
        let o = Outbox::open(&settings(d.path(), 1 << 20, 64 << 10)).unwrap();
        let seq = o.append(Kind::Signals, "r", b"\x00\x01not json").unwrap();
        o.dead_letter(seq, "400: malformed").unwrap();
        let l = &dlq_lines(d.path())[0];
        assert_eq!(l["body_base64"], "AAFub3QganNvbg==");
        assert!(l.get("body").is_none());
    }

    #[test]
    fn resolved_segments_are_deleted_oldest_first() {
        let d = tempfile::tempdir().unwrap();
        // About four records per segment.
        let s = settings(d.path(), 1 << 20, 600);
        let o = Outbox::open(&s).unwrap();
        for i in 1..=12 {
            o.append(Kind::Pcs, &format!("id-{i}"), &body(i)).unwrap();
        }
        let before = segment_files(d.path()).len();
        assert!(before >= 3, "{before} segments");
        assert_eq!(o.stats().segments, before as u64);
        // Resolving a later segment first deletes nothing: an older one is still open.
        for seq in 5..=12 {
            o.ack(seq).unwrap();
        }
        let mid = segment_files(d.path()).len();
        assert!(mid >= before, "{mid} < {before}");
        for seq in 1..=4 {
            o.ack(seq).unwrap();
        }
        let after = segment_files(d.path());
        assert_eq!(after.len(), 1, "only the active segment is left: {after:?}");
        assert_eq!(o.stats().segments, 1);
        assert_eq!(o.pending_len(), 0);
        drop(o);
        let o = Outbox::open(&s).unwrap();
        assert_eq!(o.pending_len(), 0);
        assert_eq!(o.next_seq(), 13, "numbering survives deleting every record");
        assert_eq!(o.append(Kind::Pcs, "id-13", &body(13)).unwrap(), 13);
    }

    #[test]
    fn append_with_sees_its_seq_and_a_wakeup_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let o = Outbox::open(&settings(d.path(), 1 << 20, 64 << 10)).unwrap();
        let seq = o
            .append_with(Kind::Pcs, "x", |seq| {
                format!("{{\"outbox_seq\":{seq}}}").into_bytes()
            })
            .unwrap();
        let r = o.peek_batch(1).unwrap();
        assert_eq!(r[0].body, format!("{{\"outbox_seq\":{seq}}}").into_bytes());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(1), o.notified())
                .await
                .expect("the append's wake-up was kept");
        });
    }

    #[test]
    fn a_corrupt_older_segment_is_skipped_and_counted() {
        let d = tempfile::tempdir().unwrap();
        let s = settings(d.path(), 1 << 20, 600);
        let o = Outbox::open(&s).unwrap();
        for i in 1..=8 {
            o.append(Kind::Pcs, &format!("id-{i}"), &body(i)).unwrap();
        }
        drop(o);
        let first = segment_files(d.path()).remove(0);
        let mut bytes = std::fs::read(&first).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xFF;
        std::fs::write(&first, bytes).unwrap();
        let o = Outbox::open(&s).unwrap();
        assert_eq!(o.stats().corrupt_segments, 1);
        let left = seqs(&o);
        assert!(!left.is_empty() && *left.last().unwrap() == 8, "{left:?}");
        assert_eq!(o.next_seq(), 9);
    }

    fn flip(path: &Path, at: usize) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[at] ^= 0xFF;
        std::fs::write(path, bytes).unwrap();
    }

    fn raw_of(line: &serde_json::Value) -> Vec<u8> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(line["raw_base64"].as_str().unwrap())
            .unwrap()
    }

    #[test]
    fn a_damaged_pending_record_is_dead_lettered_raw_and_the_batch_goes_on() {
        let d = tempfile::tempdir().unwrap();
        let s = settings(d.path(), 1 << 20, 64 << 10);
        let o = Outbox::open(&s).unwrap();
        for i in 1..=4 {
            o.append(Kind::Pcs, &format!("id-{i}"), &body(i)).unwrap();
        }
        let p2 = o.lock().pending.get(&2).cloned().unwrap();
        let seg = segment_files(d.path()).pop().unwrap();
        let original = std::fs::read(&seg).unwrap()
            [p2.offset as usize..(p2.offset + p2.len) as usize]
            .to_vec();
        flip(&seg, (p2.offset + p2.len - 3) as usize);
        let batch = o.peek_batch(2).unwrap();
        assert_eq!(batch.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 3]);
        let st = o.stats();
        assert_eq!((st.unreadable_total, st.dlq_total, st.pending), (1, 1, 3));
        let dlq = dlq_lines(d.path());
        assert_eq!(dlq.len(), 1);
        assert_eq!(
            (dlq[0]["seq"].as_u64(), dlq[0]["id"].as_str()),
            (Some(2), Some("id-2"))
        );
        let reason = dlq[0]["reason"].as_str().unwrap();
        assert!(
            reason.starts_with(&format!("unreadable: crc mismatch at offset {}", p2.offset)),
            "{reason}"
        );
        let mut damaged = original.clone();
        damaged[original.len() - 3] ^= 0xFF;
        assert_eq!(raw_of(&dlq[0]), damaged, "the bytes as they were on disk");
        assert_eq!(dlq[0]["offset"].as_u64(), Some(p2.offset));
        assert!(dlq[0]["at"].as_str().unwrap().ends_with('Z'));
        // After a restart the record stays resolved and its bytes are not dead-lettered again.
        drop(o);
        let o = Outbox::open(&s).unwrap();
        assert_eq!(seqs(&o), vec![1, 3, 4]);
        assert_eq!(o.stats().unreadable_total, 0);
        assert_eq!(o.stats().corrupt_segments, 0);
        assert_eq!(dlq_lines(d.path()).len(), 1);
        assert_eq!(o.next_seq(), 5);
    }

    #[test]
    fn a_damaged_frame_found_at_open_is_dead_lettered_once() {
        let d = tempfile::tempdir().unwrap();
        let s = settings(d.path(), 1 << 20, 64 << 10);
        let o = Outbox::open(&s).unwrap();
        for i in 1..=4 {
            o.append(Kind::Signals, &format!("id-{i}"), &body(i))
                .unwrap();
        }
        let p3 = o.lock().pending.get(&3).cloned().unwrap();
        drop(o);
        let seg = segment_files(d.path()).pop().unwrap();
        // In the newest segment, but followed by a good frame: corruption, not a torn tail.
        flip(&seg, (p3.offset + 30) as usize);
        let o = Outbox::open(&s).unwrap();
        assert_eq!(seqs(&o), vec![1, 2, 4]);
        let st = o.stats();
        assert_eq!(
            (st.unreadable_total, st.dlq_total, st.torn_bytes),
            (1, 1, 0)
        );
        let dlq = dlq_lines(d.path());
        assert_eq!(dlq.len(), 1);
        assert_eq!(
            dlq[0]["reason"].as_str().unwrap(),
            format!(
                "unreadable: crc mismatch at offset {} in {}",
                p3.offset,
                seg.display()
            )
        );
        assert_eq!(raw_of(&dlq[0]).len() as u64, p3.len);
        assert!(
            dlq[0].get("seq").is_none(),
            "the seq of a damaged frame is not trusted"
        );
        drop(o);
        let o = Outbox::open(&s).unwrap();
        assert_eq!(seqs(&o), vec![1, 2, 4]);
        assert_eq!(o.stats().unreadable_total, 0);
        assert_eq!(dlq_lines(d.path()).len(), 1, "not dead-lettered twice");
        assert_eq!(o.append(Kind::Pcs, "id-5", &body(5)).unwrap(), 5);
    }

    #[test]
    fn lost_framing_in_an_older_segment_sends_its_rest_to_the_dlq() {
        let d = tempfile::tempdir().unwrap();
        let s = settings(d.path(), 1 << 20, 600);
        let o = Outbox::open(&s).unwrap();
        for i in 1..=8 {
            o.append(Kind::Pcs, &format!("id-{i}"), &body(i)).unwrap();
        }
        let p2 = o.lock().pending.get(&2).cloned().unwrap();
        drop(o);
        let first = segment_files(d.path()).remove(0);
        let len_before = std::fs::metadata(&first).unwrap().len();
        assert_eq!(p2.seg, 1);
        // The length of the second frame now points past the end: the next boundary is lost.
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[p2.offset as usize + 2] = 0x7F;
        std::fs::write(&first, &bytes).unwrap();
        let rest = bytes[p2.offset as usize..].to_vec();
        let o = Outbox::open(&s).unwrap();
        let left = seqs(&o);
        assert_eq!(left.first(), Some(&1));
        assert!(!left.contains(&2), "{left:?}");
        assert_eq!(*left.last().unwrap(), 8);
        let st = o.stats();
        assert_eq!((st.corrupt_segments, st.unreadable_total), (1, 1));
        let dlq = dlq_lines(d.path());
        assert_eq!(dlq.len(), 1);
        let reason = dlq[0]["reason"].as_str().unwrap();
        assert!(
            reason.starts_with(&format!("unreadable: framing lost at offset {}", p2.offset)),
            "{reason}"
        );
        assert_eq!(
            raw_of(&dlq[0]),
            rest,
            "everything after the boundary is kept"
        );
        assert_eq!(std::fs::metadata(&first).unwrap().len(), p2.offset);
        assert!(p2.offset < len_before);
        drop(o);
        let o = Outbox::open(&s).unwrap();
        assert_eq!(seqs(&o), left);
        assert_eq!(o.stats().corrupt_segments, 0);
        assert_eq!(dlq_lines(d.path()).len(), 1, "not dead-lettered twice");
    }
}
