//! Any bytes through the PCS parser and the verifier: never a panic, and a record that parses
//! re-serialises to a record that parses to the same value.
#![no_main]

use coherence_core::pcs::{Params, Pcs, Verifier};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let verifier = Verifier::hmac(vec![b"fuzz".to_vec()]);
    let report = verifier.verify_json(text, &Params::default());
    let _ = report.http_status();
    if let Ok(p) = Pcs::from_json(text) {
        let again = Pcs::from_json(&p.to_json()).expect("a parsed record re-parses");
        assert_eq!(again, p);
        let _ = p.canonical_subset();
    }
});
