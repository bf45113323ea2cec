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
//! Relative relocations are packed (`-z pack-relative-relocs`, DT_RELR): a position-independent
//! binary otherwise carries 24 bytes per pointer to relocate at start (360 KB here), read once
//! and then resident for the life of the process. The loader needs glibc 2.36 (Debian 12, the
//! image's base); packing is used when the glibc of the build is at least that.
//!
//! Both are applied where the linker is LLD — `x86_64-unknown-linux-gnu`, Rust's default there;
//! `COHERENCE_SYMBOL_ORDER=0` turns the order off, `COHERENCE_PACK_RELOCS=0` the packing.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=symbol-order.txt");
    println!("cargo::rerun-if-env-changed=COHERENCE_SYMBOL_ORDER");
    println!("cargo::rerun-if-env-changed=COHERENCE_PACK_RELOCS");
    if std::env::var("TARGET").unwrap_or_default() != "x86_64-unknown-linux-gnu" {
        return;
    }
    let off = |var: &str| matches!(std::env::var(var).as_deref(), Ok("0"));
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("symbol-order.txt");
    if !off("COHERENCE_SYMBOL_ORDER") && order.exists() {
        // The list's checksum in the environment of the crate: a new list relinks.
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
    if !off("COHERENCE_PACK_RELOCS") && glibc_at_least(2, 36) {
        println!("cargo::rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// The glibc of this machine (`getconf GNU_LIBC_VERSION`, e.g. `glibc 2.36`) is at least
/// `major.minor`; `false` when it cannot be told.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = text
        .trim()
        .trim_start_matches("glibc ")
        .split('.')
        .map(|p| p.parse::<u32>().ok());
    match (v.next().flatten(), v.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}
