//! Any bytes through the signal report parser: never a panic.
#![no_main]

use coherence_core::pcs::Verifier;
use coherence_core::report::SignalReport;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(r) = SignalReport::from_json(text) {
        let _ = r.verify(&Verifier::hmac(vec![b"fuzz".to_vec()]));
    }
});
