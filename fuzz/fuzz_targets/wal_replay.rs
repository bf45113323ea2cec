//! Any bytes as WAL frames and as a whole segment file: decoding never panics, never reads past
//! what it reports as good, and replay of a damaged segment recovers a prefix and truncates.
#![no_main]

use coherence_verifier::wal::{replay, scan_frames};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let scan = scan_frames(data);
    assert!(scan.good_len <= data.len());
    let dir = tempfile::tempdir().expect("temp dir");
    let mut seg = b"COHWAL01".to_vec();
    seg.extend_from_slice(data);
    std::fs::write(dir.path().join("inbox-00000000000000000001.wal"), &seg).expect("write");
    let mut n = 0u64;
    let report = replay(dir.path(), |_| n += 1).expect("replay of one segment");
    assert_eq!(report.records, n);
    assert_eq!(n as usize, scan.entries.len());
    // A second replay finds the truncated segment clean.
    let again = replay(dir.path(), |_| {}).expect("second replay");
    assert_eq!(again.torn_bytes, 0);
    assert_eq!(again.records, n);
});
