//! Any JSON document through the canonicaliser: never a panic, and the canonical text is a
//! fixed point (canonicalising it again gives the same bytes).
#![no_main]

use coherence_core::canon::canonical_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if let Ok(c) = canonical_json(&v) {
        let back: serde_json::Value = serde_json::from_str(&c).expect("canonical JSON parses");
        assert_eq!(canonical_json(&back).expect("canonical again"), c);
    }
});
