//! The operator's one error type. `metric_label()` is the `reason` of
//! `coherence_reconcile_errors_total` and tells `error_policy` whether to wait for a change
//! (the object is invalid) or back off and retry (something transient).

/// Everything that can go wrong while building or applying desired state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object's spec cannot be used; the field and what was expected.
    #[error("invalid spec: {field}: {message}")]
    InvalidSpec {
        /// Path of the field (`spec.windows[1]`).
        field: String,
        /// What was expected, and what was found.
        message: String,
    },
    /// The object has no name, namespace or uid yet (it did not come from the API server).
    #[error("object is missing metadata.{0}")]
    MissingMetadata(&'static str),
    /// An object the spec refers to does not exist or cannot be used.
    #[error("{kind} {name}: {message}")]
    Reference {
        /// Kind of the referenced object.
        kind: &'static str,
        /// Its name.
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// A desired object could not be serialized.
    #[error("serialize: {0}")]
    Serialize(String),
    /// The verifier could not be read.
    #[error("verifier: {0}")]
    Verifier(String),
}

impl Error {
    /// Short, bounded label for metrics (`coherence_reconcile_errors_total{reason}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidSpec { .. } => "invalid_spec",
            Error::MissingMetadata(_) => "missing_metadata",
            Error::Reference { .. } => "reference",
            Error::Serialize(_) => "serialize",
            Error::Verifier(_) => "verifier",
        }
    }

    /// `true` when retrying cannot help until the object changes.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::InvalidSpec { .. } | Error::MissingMetadata(_) | Error::Serialize(_)
        )
    }

    /// An invalid-spec error.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidSpec {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn labels_are_bounded_and_permanence_decides_the_retry() {
        let all = [
            (
                Error::invalid("spec.windows[0]", "bad"),
                "invalid_spec",
                true,
            ),
            (Error::MissingMetadata("uid"), "missing_metadata", true),
            (
                Error::Reference {
                    kind: "Deployment",
                    name: "web".into(),
                    message: "not found".into(),
                },
                "reference",
                false,
            ),
            (Error::Serialize("x".into()), "serialize", true),
            (Error::Verifier("timeout".into()), "verifier", false),
        ];
        for (e, label, permanent) in all {
            assert_eq!(
                (e.metric_label(), e.is_permanent()),
                (label, permanent),
                "{e}"
            );
        }
        assert_eq!(
            Error::invalid("spec.windows[0]", "expected 5m").to_string(),
            "invalid spec: spec.windows[0]: expected 5m"
        );
    }
}
