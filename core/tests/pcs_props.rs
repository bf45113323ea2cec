//! Properties of the PCS building blocks over generated inputs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coherence_core::canon::{canonical_json, py_round};
use coherence_core::merkle::{inclusion_proof, merkle_root, verify_inclusion};
use coherence_core::pcs::{BuildInput, Params, Pcs, Signer, build};
use coherence_core::signals::{BudgetParams, budget, theil_sen_slope};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        -1e6..1e6f64,
        -1.0..1.0f64,
        any::<f64>().prop_filter("finite", |x| x.is_finite()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn theil_sen_ignores_point_order(
        pts in prop::collection::vec((-100i32..100, -1e3..1e3f64), 2..12),
        rot in 0usize..12,
    ) {
        let xs: Vec<f64> = pts.iter().map(|p| f64::from(p.0)).collect();
        let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
        let a = theil_sen_slope(&xs, &ys);
        let mut rev: Vec<(f64, f64)> = xs.iter().copied().zip(ys.iter().copied()).rev().collect();
        let k = rot % rev.len();
        rev.rotate_left(k);
        let xs2: Vec<f64> = rev.iter().map(|p| p.0).collect();
        let ys2: Vec<f64> = rev.iter().map(|p| p.1).collect();
        let b = theil_sen_slope(&xs2, &ys2);
        match (a, b) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a.to_bits(), b.to_bits()),
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "{a:?} vs {b:?}"),
        }
    }

    #[test]
    fn theil_sen_recovers_an_exact_line(
        slope in -10.0..10.0f64,
        icept in -10.0..10.0f64,
        n in 2usize..10,
    ) {
        let xs: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let ys: Vec<f64> = xs.iter().map(|x| slope * x + icept).collect();
        let got = theil_sen_slope(&xs, &ys).unwrap();
        prop_assert!((got - slope).abs() < 1e-9, "{got} vs {slope}");
    }

    #[test]
    fn budget_is_always_in_unit_interval(
        r in finite(), d in finite(), coh in finite(),
        base in -2.0..2.0f64, alpha in -2.0..2.0f64, beta in -2.0..2.0f64,
        gamma in -2.0..2.0f64, d0 in -5.0..5.0f64,
    ) {
        let b = budget(r, d, coh, &BudgetParams { base, alpha, beta, gamma, d0 });
        prop_assert!((0.0..=1.0).contains(&b), "{b}");
        let b = budget(r, d, coh, &BudgetParams::default());
        prop_assert!((0.0..=1.0).contains(&b), "{b}");
    }

    #[test]
    fn py_round_is_idempotent(x in finite(), nd in -5i32..17) {
        let once = py_round(x, nd);
        prop_assert_eq!(py_round(once, nd).to_bits(), once.to_bits());
        // Rounding never moves a value by more than half a unit of the last kept digit
        // (plus the float spacing of the result).
        let unit = 10f64.powi(-nd);
        prop_assert!((once - x).abs() <= unit / 2.0 + once.abs() * f64::EPSILON + f64::MIN_POSITIVE);
    }

    #[test]
    fn canonical_json_ignores_insertion_order(
        entries in prop::collection::btree_map("[a-zA-Z_é😀\"\\\\\n]{0,6}", prop_oneof![
            finite().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            "[ -~é]{0,8}".prop_map(Value::from),
        ], 0..8),
        seed in any::<u64>(),
    ) {
        let items: Vec<(String, Value)> = entries.into_iter().collect();
        let mut forward = Map::new();
        for (k, v) in &items {
            forward.insert(k.clone(), v.clone());
        }
        // Insert in a seed-dependent order and nest the object once more.
        let mut shuffled = items.clone();
        let len = shuffled.len().max(1);
        shuffled.rotate_left((seed as usize) % len);
        shuffled.reverse();
        let mut backward = Map::new();
        for (k, v) in &shuffled {
            backward.insert(k.clone(), v.clone());
        }
        let a = canonical_json(&Value::Object(forward.clone())).unwrap();
        let b = canonical_json(&Value::Object(backward)).unwrap();
        prop_assert_eq!(&a, &b);
        prop_assert!(a.is_ascii());
        // Re-parsing the canonical text and canonicalising again is a fixed point.
        let reparsed: Value = serde_json::from_str(&a).unwrap();
        prop_assert_eq!(canonical_json(&reparsed).unwrap(), a);
    }

    #[test]
    fn merkle_proofs_verify_for_every_index(
        leaves in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..16), 1..24),
        flip in any::<u8>(),
    ) {
        let root = merkle_root(&leaves);
        for (i, leaf) in leaves.iter().enumerate() {
            let proof = inclusion_proof(&leaves, i).unwrap();
            prop_assert!(verify_inclusion(&root, leaf, &proof));
            let mut changed = leaf.clone();
            match changed.first_mut() {
                Some(b) => *b ^= flip | 1,
                None => changed.push(flip),
            }
            prop_assert!(!verify_inclusion(&root, &changed, &proof));
        }
    }

    #[test]
    fn built_records_verify_with_their_signer(
        values in prop::collection::vec(-1e3..1e3f64, 3..300),
        events in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..8), 0..10),
        epoch in any::<u64>(),
        seed in any::<u64>(),
        key in prop::collection::vec(any::<u8>(), 1..40),
        ed_seed in any::<[u8; 32]>(),
        use_ed in any::<bool>(),
    ) {
        let params = Params::default();
        let mut pcs = build(&BuildInput {
            values: &values,
            events: &events,
            shard_id: "ns/workload/pod-1",
            epoch,
            attempt: 1,
            sent_at: "2026-11-01T00:00:00Z",
            seed,
            scales: &[2, 4, 8, 16, 32],
        }, &params).unwrap();
        let signer = if use_ed { Signer::ed25519_from_seed(&ed_seed) } else { Signer::hmac(key) };
        signer.sign(&mut pcs).unwrap();
        let report = signer.verifier().verify(&pcs, &params);
        prop_assert!(report.is_accepted(), "{:?}", report.reasons());
        // The JSON form verifies the same way.
        let reparsed = Pcs::from_json(&pcs.to_json()).unwrap();
        prop_assert_eq!(&reparsed, &pcs);
        prop_assert!(signer.verifier().verify(&reparsed, &params).is_accepted());
    }

    #[test]
    fn parsing_never_panics(text in "\\PC{0,200}") {
        let _ = Pcs::from_json(&text);
    }

    #[test]
    fn parsing_mutated_records_never_panics(
        field in prop::sample::select(vec![
            "pcs_id", "schema", "version", "shard_id", "epoch", "attempt", "sent_at", "seed",
            "scales", "N_j", "coh_star", "v_star", "D_hat", "r", "regime", "budget",
            "merkle_root", "sig", "ft",
        ]),
        replacement in prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            finite().prop_map(Value::from),
            "[a-z/]{0,10}".prop_map(Value::from),
            Just(serde_json::json!([0, 1, 2])),
            Just(serde_json::json!({"2": 0})),
        ],
    ) {
        let text = include_str!("data/pcs-vectors.json");
        let doc: Value = serde_json::from_str(text).unwrap();
        let mut record = doc["vectors"][0]["pcs"].clone();
        record[field] = replacement;
        if let Err(e) = Pcs::from_value(&record) {
            prop_assert!(!e.field.is_empty() && !e.expected.is_empty());
        }
    }
}
