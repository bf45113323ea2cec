//! Any bytes through the PCS parser and the verifier: never a panic, a record that parses
//! re-serialises to a record that parses to the same value, and the typed reading of
//! `Pcs::from_json` accepts exactly what the document reading (`Pcs::from_value`) accepts.
#![no_main]

use coherence_core::pcs::{Params, Pcs, Verifier};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let verifier = Verifier::hmac(vec![b"fuzz".to_vec()]);
    let report = verifier.verify_json(text, &Params::default());
    let _ = report.http_status();
    let parsed = Pcs::from_json(text);
    let document = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .map(|v| Pcs::from_value(&v));
    match (&parsed, &document) {
        (Ok(p), Some(Ok(d))) => assert_eq!(p, d),
        (Ok(_), _) => panic!("read as a record, refused as a document"),
        _ => {}
    }
    if let Ok(p) = parsed {
        let again = Pcs::from_json(&p.to_json()).expect("a parsed record re-parses");
        assert_eq!(again, p);
        let _ = p.canonical_subset();
    }
});
