//! Golden vectors of the original stack (`tests/data/pcs-vectors.json`): every vector's
//! canonical bytes, message, HMAC and Ed25519 signatures, verification, recomputed D̂, regime,
//! budget and `pcs_id` must agree byte for byte; tampering must be caught with the right reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use coherence_core::pcs::{
    Escalation, KeyEnv, Outcome, Params, Pcs, Rejection, SignAlg, Signer, Verifier,
};
use coherence_core::signals::{self, BudgetParams, Regime, RegimeThresholds};
use serde_json::Value;

struct Vectors {
    hmac_key: String,
    seed: [u8; 32],
    pub_b64: String,
    vectors: Vec<Value>,
}

fn load() -> Vectors {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/pcs-vectors.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).expect(path)).unwrap();
    let seed: [u8; 32] = hex::decode(doc["ed25519_seed_hex"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let vectors = doc["vectors"].as_array().unwrap().clone();
    assert_eq!(vectors.len(), 8, "the vector file changed");
    Vectors {
        hmac_key: doc["hmac_key_utf8"].as_str().unwrap().to_owned(),
        seed,
        pub_b64: doc["ed25519_pub_b64"].as_str().unwrap().to_owned(),
        vectors,
    }
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("{k}"))
}

fn signed(pcs: &Pcs, sig: &str) -> Pcs {
    let mut p = pcs.clone();
    p.sig = sig.to_owned();
    p
}

#[test]
fn canonical_bytes_message_and_signatures_match() {
    let vs = load();
    let hmac = Signer::hmac(vs.hmac_key.as_bytes());
    let ed = Signer::ed25519_from_seed(&vs.seed);
    for (i, v) in vs.vectors.iter().enumerate() {
        let pcs = Pcs::from_value(&v["pcs"]).unwrap_or_else(|e| panic!("vector {i}: {e}"));
        assert_eq!(
            pcs.canonical_subset().unwrap(),
            s(v, "canonical"),
            "vector {i}"
        );
        let msg = pcs.signing_message().unwrap();
        assert_eq!(hex::encode(msg), s(v, "message_sha256_hex"), "vector {i}");
        assert_eq!(hmac.sign_digest(&msg), s(v, "hmac_sig"), "vector {i}");
        assert_eq!(ed.sign_digest(&msg), s(v, "ed25519_sig"), "vector {i}");
    }
}

#[test]
fn ed25519_public_key_matches() {
    let vs = load();
    let Signer::Ed25519(sk) = Signer::ed25519_from_seed(&vs.seed) else {
        panic!("not ed25519")
    };
    assert_eq!(B64.encode(sk.verifying_key().to_bytes()), vs.pub_b64);
}

#[test]
fn pcs_id_is_the_hash_of_root_epoch_shard() {
    let vs = load();
    for (i, v) in vs.vectors.iter().enumerate() {
        let pcs = Pcs::from_value(&v["pcs"]).unwrap();
        assert_eq!(pcs.expected_pcs_id(), pcs.pcs_id, "vector {i}");
    }
}

#[test]
fn d_hat_and_regime_recompute_exactly() {
    let vs = load();
    for (i, v) in vs.vectors.iter().enumerate() {
        let pcs = Pcs::from_value(&v["pcs"]).unwrap();
        let exp = &v["expected"];
        let want = exp["D_hat_recomputed"].as_f64().unwrap();
        let got = pcs.recompute_d_hat().unwrap();
        assert!((got - want).abs() <= 1e-12, "vector {i}: {got} vs {want}");
        let reg = signals::regime(pcs.coh_star, got, &RegimeThresholds::default());
        assert_eq!(Some(reg), Regime::parse(s(exp, "regime")), "vector {i}");
        assert_eq!(reg, pcs.regime, "vector {i}");
    }
}

/// Index of the one vector whose `budget` (1.0, also its `expected.budget`) is not what the
/// design's formula gives for its `r`, `D_hat` and `coh_star` (≈ 0.5606).
const BUDGET_OUTLIER: usize = 4;

#[test]
fn budget_recomputes_except_one_outlier() {
    let vs = load();
    for (i, v) in vs.vectors.iter().enumerate() {
        let pcs = Pcs::from_value(&v["pcs"]).unwrap();
        let want = v["expected"]["budget"].as_f64().unwrap();
        let got = signals::budget(pcs.r, pcs.d_hat, pcs.coh_star, &BudgetParams::default());
        if i == BUDGET_OUTLIER {
            assert_eq!(want, 1.0);
            assert!((got - 0.560_601_212_599_725_4).abs() < 1e-12, "{got}");
        } else {
            assert!((got - want).abs() <= 1e-12, "vector {i}: {got} vs {want}");
        }
    }
}

#[test]
fn every_vector_verifies_with_both_algorithms() {
    let vs = load();
    let env = |alg: &str| KeyEnv {
        sign_alg: Some(alg.to_owned()),
        hmac_key: Some(vs.hmac_key.clone()),
        ed25519_pub_b64: Some(vs.pub_b64.clone()),
        ..KeyEnv::default()
    };
    let hmac = Verifier::from_env(&env("hmac")).unwrap();
    let ed = Verifier::from_env(&env("ed25519")).unwrap();
    let params = Params::default();
    for (i, v) in vs.vectors.iter().enumerate() {
        let pcs = Pcs::from_value(&v["pcs"]).unwrap();
        for (verifier, sig, alg) in [
            (&hmac, s(v, "hmac_sig"), SignAlg::Hmac),
            (&ed, s(v, "ed25519_sig"), SignAlg::Ed25519),
        ] {
            let report = verifier.verify(&signed(&pcs, sig), &params);
            assert_eq!(report.alg, Some(alg), "vector {i}: {:?}", report.reasons());
            if i == BUDGET_OUTLIER {
                assert_eq!(report.outcome, Outcome::Escalated);
                assert!(matches!(
                    report.escalations.as_slice(),
                    [Escalation::Budget { claimed, .. }] if *claimed == 1.0
                ));
                assert_eq!(report.http_status(), 202);
            } else {
                assert_eq!(
                    report.outcome,
                    Outcome::Accepted,
                    "vector {i}: {:?}",
                    report.reasons()
                );
                assert_eq!(report.http_status(), 200);
            }
        }
        // An HMAC verifier does not accept the Ed25519 signature and vice versa.
        assert_eq!(
            hmac.verify(&signed(&pcs, s(v, "ed25519_sig")), &params)
                .http_status(),
            401
        );
        assert_eq!(
            ed.verify(&signed(&pcs, s(v, "hmac_sig")), &params)
                .http_status(),
            401
        );
    }
}

fn first() -> (Vectors, Pcs, Verifier) {
    let vs = load();
    let pcs = signed(
        &Pcs::from_value(&vs.vectors[0]["pcs"]).unwrap(),
        s(&vs.vectors[0], "hmac_sig"),
    );
    let verifier = Verifier::hmac(vec![vs.hmac_key.as_bytes().to_vec()]);
    (vs, pcs, verifier)
}

#[test]
fn tampering_with_a_signed_field_breaks_the_signature() {
    let (_, pcs, verifier) = first();
    let params = Params::default();
    assert!(verifier.verify(&pcs, &params).is_accepted());
    let tampered: Vec<(&str, Pcs)> = vec![
        (
            "D_hat",
            Pcs {
                d_hat: pcs.d_hat + 0.01,
                ..pcs.clone()
            },
        ),
        (
            "coh_star",
            Pcs {
                coh_star: 0.9,
                ..pcs.clone()
            },
        ),
        (
            "r",
            Pcs {
                r: 0.5,
                ..pcs.clone()
            },
        ),
        (
            "budget",
            Pcs {
                budget: 0.3,
                ..pcs.clone()
            },
        ),
        (
            "epoch",
            Pcs {
                epoch: pcs.epoch + 1,
                ..pcs.clone()
            },
        ),
        (
            "shard_id",
            Pcs {
                shard_id: "default/web/web-1".into(),
                ..pcs.clone()
            },
        ),
        (
            "merkle_root",
            Pcs {
                merkle_root: "0".repeat(64),
                ..pcs.clone()
            },
        ),
        (
            "pcs_id",
            Pcs {
                pcs_id: "f".repeat(64),
                ..pcs.clone()
            },
        ),
    ];
    for (field, p) in tampered {
        let report = verifier.verify(&p, &params);
        assert_eq!(report.outcome, Outcome::Rejected, "{field}");
        assert!(
            matches!(report.rejection, Some(Rejection::BadSignature { .. })),
            "{field}: {:?}",
            report.rejection
        );
        assert_eq!(report.http_status(), 401);
    }
    // Below the 9-decimal rounding the signed bytes do not change.
    let p = Pcs {
        d_hat: pcs.d_hat + 1e-12,
        ..pcs.clone()
    };
    assert!(verifier.verify(&p, &params).is_accepted());
}

#[test]
fn resigned_tampering_is_escalated_with_the_right_reason() {
    let (vs, pcs, verifier) = first();
    let signer = Signer::hmac(vs.hmac_key.as_bytes());
    let params = Params::default();
    let resign = |mut p: Pcs| {
        signer.sign(&mut p).unwrap();
        verifier.verify(&p, &params)
    };

    // D_hat beyond tolD (budget and regime are consistent with the claimed D_hat here).
    let d = pcs.d_hat + 0.2;
    let budget = signals::budget(pcs.r, d, pcs.coh_star, &params.budget);
    let report = resign(Pcs {
        d_hat: d,
        budget,
        ..pcs.clone()
    });
    assert_eq!(report.outcome, Outcome::Escalated);
    match report.escalations.as_slice() {
        [
            Escalation::DHat {
                claimed,
                recomputed,
                tolerance,
            },
        ] => {
            assert_eq!(*claimed, d);
            assert!((recomputed - pcs.d_hat).abs() < 1e-12);
            assert_eq!(*tolerance, 0.15);
        }
        other => panic!("{other:?}"),
    }
    assert!(report.reasons()[0].contains("D̂"));
    // Within tolD it passes.
    let d = pcs.d_hat + 0.1;
    let budget = signals::budget(pcs.r, d, pcs.coh_star, &params.budget);
    assert!(
        resign(Pcs {
            d_hat: d,
            budget,
            ..pcs.clone()
        })
        .is_accepted()
    );

    // coh_star above 1 + tolCoh.
    let budget = signals::budget(pcs.r, pcs.d_hat, 1.2, &params.budget);
    let report = resign(Pcs {
        coh_star: 1.2,
        budget,
        ..pcs.clone()
    });
    assert!(
        matches!(
            report.escalations.as_slice(),
            [Escalation::CohStar { claimed, max, .. }] if *claimed == 1.2 && (*max - 1.05).abs() < 1e-12
        ),
        "{:?}",
        report.escalations
    );

    // Budget off the formula.
    let report = resign(Pcs {
        budget: 0.9,
        ..pcs.clone()
    });
    assert!(
        matches!(
            report.escalations.as_slice(),
            [Escalation::Budget { claimed, recomputed, .. }]
                if *claimed == 0.9 && (*recomputed - 0.275741330607465).abs() < 1e-12
        ),
        "{:?}",
        report.escalations
    );

    // Regime inconsistent with the thresholds.
    let report = resign(Pcs {
        regime: Regime::Sticky,
        ..pcs.clone()
    });
    assert!(
        matches!(
            report.escalations.as_slice(),
            [Escalation::Regime {
                claimed: Regime::Sticky,
                recomputed: Regime::Mixed,
                ..
            }]
        ),
        "{:?}",
        report.escalations
    );

    // A wrong pcs_id under a valid signature is rejected, naming both ids.
    let report = resign(Pcs {
        pcs_id: "a".repeat(64),
        ..pcs.clone()
    });
    assert_eq!(report.outcome, Outcome::Rejected);
    assert!(matches!(
        &report.rejection,
        Some(Rejection::PcsIdMismatch { claimed, recomputed })
            if *claimed == "a".repeat(64) && *recomputed == pcs.pcs_id
    ));
    assert_eq!(report.http_status(), 400);
}

#[test]
fn rotation_old_keys_in_the_list_still_verify() {
    let (vs, pcs, _) = first();
    let params = Params::default();
    let env = KeyEnv {
        hmac_key: Some("brand-new-key".into()),
        hmac_keys: Some(format!("another-key, {} ,third", vs.hmac_key)),
        ..KeyEnv::default()
    };
    let verifier = Verifier::from_env(&env).unwrap();
    assert_eq!(verifier.len(), 4);
    let report = verifier.verify(&pcs, &params);
    assert!(report.is_accepted(), "{:?}", report.reasons());
    assert_eq!(report.key.unwrap().to_string(), "PCS_HMAC_KEYS[1]");

    let without = KeyEnv {
        hmac_keys: Some("another-key,third".into()),
        ..KeyEnv::default()
    };
    let report = Verifier::from_env(&without).unwrap().verify(&pcs, &params);
    assert!(matches!(
        report.rejection,
        Some(Rejection::BadSignature { .. })
    ));

    // Ed25519: the second public key of the list is the right one.
    let other = Signer::ed25519_from_seed(&[9; 32]);
    let Signer::Ed25519(other_sk) = &other else {
        panic!()
    };
    let env = KeyEnv {
        sign_alg: Some("ed25519".into()),
        ed25519_pub_b64: Some(format!(
            "{},{}",
            B64.encode(other_sk.verifying_key().to_bytes()),
            vs.pub_b64
        )),
        ..KeyEnv::default()
    };
    let ed_pcs = signed(&pcs, s(&vs.vectors[0], "ed25519_sig"));
    let report = Verifier::from_env(&env).unwrap().verify(&ed_pcs, &params);
    assert!(report.is_accepted(), "{:?}", report.reasons());
    assert_eq!(report.key.unwrap().to_string(), "PCS_ED25519_PUB_B64[1]");
}

#[test]
fn ed25519_keypair_form_is_accepted() {
    let vs = load();
    let Signer::Ed25519(sk) = Signer::ed25519_from_seed(&vs.seed) else {
        panic!()
    };
    let env = KeyEnv {
        sign_alg: Some("ed25519".into()),
        ed25519_key_b64: Some(B64.encode(sk.to_keypair_bytes())),
        ..KeyEnv::default()
    };
    let signer = Signer::from_env(&env).unwrap();
    let pcs = Pcs::from_value(&vs.vectors[1]["pcs"]).unwrap();
    let msg = pcs.signing_message().unwrap();
    assert_eq!(signer.sign_digest(&msg), s(&vs.vectors[1], "ed25519_sig"));
    // A keypair whose halves do not belong together is refused.
    let mut bad = sk.to_keypair_bytes();
    bad[40] ^= 1;
    let env = KeyEnv {
        ed25519_key_b64: Some(B64.encode(bad)),
        ..env
    };
    assert_eq!(
        Signer::from_env(&env).unwrap_err().var,
        "PCS_ED25519_KEY_B64"
    );
}
