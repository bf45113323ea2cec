//! Links `coherence-operator` with the functions it runs placed first and together.
//!
//! The kernel maps a binary's code into the resident set 64 KiB at a time around every page
//! that is executed ("fault-around"), so code that runs scattered among code that never runs
//! (the `crdgen` and `inject` commands, error paths, kubeconfig formats a pod never sees) keeps
//! nearly the whole binary resident. `symbol-order.txt` lists the functions a running operator
//! executes — reconciling, watching, serving the webhook and its metrics — as recorded by
//! `bench/operator_symbol_order.py`; LLD's `--symbol-ordering-file` puts them at the start of
//! `.text`. A list made from an older build only loses effect: names it lists that no longer
//! exist are skipped, and functions it does not list go after the others.
//!
//! Applied where the linker is LLD — `x86_64-unknown-linux-gnu`, Rust's default there — and
//! not when `COHERENCE_SYMBOL_ORDER=0`.

use std::path::Path;

fn main() {
    println!("cargo::rerun-if-changed=symbol-order.txt");
    println!("cargo::rerun-if-env-changed=COHERENCE_SYMBOL_ORDER");
    let target = std::env::var("TARGET").unwrap_or_default();
    let wanted = !matches!(std::env::var("COHERENCE_SYMBOL_ORDER").as_deref(), Ok("0"));
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("symbol-order.txt");
    if target != "x86_64-unknown-linux-gnu" || !wanted || !order.exists() {
        return;
    }
    // The list's length and a checksum in the environment of the crate: a new list relinks.
    let text = std::fs::read(&order).unwrap_or_default();
    let sum = text.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    println!("cargo::rustc-env=COHERENCE_SYMBOL_ORDER_SUM={sum:016x}");
    println!(
        "cargo::rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo::rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}
