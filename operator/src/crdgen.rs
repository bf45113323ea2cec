//! The CRD YAML checked in under `crds/`, generated from the Rust types.

use crate::crd::{CoherencePolicy, FinOpsGate};
use crate::error::Error;
use kube::CustomResourceExt;

/// Files under `crds/` and their content: one CRD per file.
pub fn files() -> Result<Vec<(&'static str, String)>, Error> {
    Ok(vec![
        ("coherencepolicy.yaml", to_yaml(&CoherencePolicy::crd())?),
        ("finopsgate.yaml", to_yaml(&FinOpsGate::crd())?),
    ])
}

/// Both CRDs as one multi-document YAML stream (what `coherence-operator crdgen` prints).
pub fn multi_document() -> Result<String, Error> {
    let mut out = String::new();
    for (_, doc) in files()? {
        out.push_str("---\n");
        out.push_str(&doc);
    }
    Ok(out)
}

fn to_yaml<T: serde::Serialize>(v: &T) -> Result<String, Error> {
    serde_yaml_ng::to_string(v).map_err(|e| Error::Serialize(e.to_string()))
}

/// Writes [`files`] into `dir` (the `crds/` directory).
pub fn write(dir: &std::path::Path) -> Result<(), Error> {
    for (name, content) in files()? {
        std::fs::write(dir.join(name), content)
            .map_err(|e| Error::Serialize(format!("{}: {e}", dir.join(name).display())))?;
    }
    Ok(())
}
