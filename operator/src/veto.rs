//! What a veto does, per `spec.veto.mode`, and for `enforce` which Deployments to pause and
//! which to release. Only Deployments carrying our `coherence.dev/paused-by` annotation are
//! ever un-paused: a rollout paused by someone else stays paused.

use crate::crd::VetoMode;
use crate::owner::PAUSED_BY_ANNOTATION;
use serde_json::{Value, json};

/// The effects of a veto under a mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    /// Emit an Event when the veto appears, changes or clears.
    pub event: bool,
    /// Export `coherence_veto_active`.
    pub metric: bool,
    /// Pause the vetoed Deployments.
    pub pause: bool,
}

/// The effects of `mode`; status is written in every mode.
pub fn effects(mode: VetoMode) -> Effects {
    match mode {
        VetoMode::Shadow => Effects {
            event: false,
            metric: false,
            pause: false,
        },
        VetoMode::Recommend => Effects {
            event: true,
            metric: true,
            pause: false,
        },
        VetoMode::Enforce => Effects {
            event: true,
            metric: true,
            pause: true,
        },
    }
}

/// A Deployment as the veto sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentState {
    /// Name.
    pub name: String,
    /// `spec.paused`.
    pub paused: bool,
    /// Value of our `coherence.dev/paused-by` annotation.
    pub paused_by: Option<String>,
    /// A veto holds on this Deployment's workload.
    pub vetoed: bool,
}

/// One change to make.
#[derive(Debug, Clone, PartialEq)]
pub struct PauseChange {
    /// Deployment name.
    pub deployment: String,
    /// `true` pause, `false` release.
    pub pause: bool,
    /// JSON merge patch that makes the change.
    pub patch: Value,
}

/// Value of the annotation for a FinOpsGate (a policy uses its own name; a name cannot hold
/// `/`, so the two never collide).
pub fn gate_owner(gate: &str) -> String {
    format!("finopsgate/{gate}")
}

/// The merge patch that pauses a Deployment for `owner`.
pub fn pause_patch(owner: &str) -> Value {
    json!({"metadata": {"annotations": {PAUSED_BY_ANNOTATION: owner}}, "spec": {"paused": true}})
}

/// The merge patch that releases a Deployment and removes our annotation.
pub fn release_patch() -> Value {
    json!({"metadata": {"annotations": {PAUSED_BY_ANNOTATION: null}}, "spec": {"paused": false}})
}

/// Changes so that exactly the vetoed Deployments are paused by `owner` while `enforce`
/// holds. With `enforce` false (another mode, or the owner being deleted) everything `owner`
/// paused is released.
pub fn plan(owner: &str, enforce: bool, deployments: &[DeploymentState]) -> Vec<PauseChange> {
    let mut out = Vec::new();
    for d in deployments {
        let ours = d.paused_by.as_deref() == Some(owner);
        let want = enforce && d.vetoed;
        if want && !d.paused {
            out.push(PauseChange {
                deployment: d.name.clone(),
                pause: true,
                patch: pause_patch(owner),
            });
        } else if !want && ours {
            out.push(PauseChange {
                deployment: d.name.clone(),
                pause: false,
                patch: release_patch(),
            });
        }
    }
    out
}
