//! `coherence-operator`: the CRD types of `coherence.dev/v1alpha1` and the pure build step of
//! the controllers — functions from plain values to the desired Kubernetes objects (sidecar
//! ConfigMap, HPA, PDB, NetworkPolicy, status, FinOps grades, veto plans). The reconcilers read
//! what these need, call them, and apply what they return; nothing here talks to a cluster.
//!
//! Sidecar injection is the same: [`inject`] is the pure decision and JSON Patch; [`webhook`]
//! serves it as a mutating admission webhook (and builds its MutatingWebhookConfiguration).

pub mod alerts;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod error;

pub use error::Error;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod finops;
pub mod inject;
pub mod lease;
pub mod metrics;
pub mod owner;
pub mod packed;
pub mod protect;
pub mod render;
pub mod run;
pub mod selector;
pub mod status;
pub mod verifier;
pub mod veto;
pub mod webhook;
