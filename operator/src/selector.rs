//! `metav1.LabelSelector` matching, as the API server does it: every `matchLabels` pair and
//! every `matchExpressions` requirement (`In`, `NotIn`, `Exists`, `DoesNotExist`) must hold.
//!
//! An empty selector matches everything here, as in Kubernetes; a policy's selector is never
//! empty (its CRD and [`crate::render::validate`] refuse that).

use crate::error::Error;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use std::collections::BTreeMap;

/// `true` when `labels` satisfy `selector`. An unknown operator, or `In`/`NotIn` without
/// values (which the API server refuses), is an error naming the requirement.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> Result<bool, Error> {
    matches_with(selector, |k| labels.get(k).map(String::as_str))
}

/// [`matches`] against labels read through `label` (the value of a key, if any).
pub fn matches_with<'a>(
    selector: &LabelSelector,
    label: impl Fn(&str) -> Option<&'a str>,
) -> Result<bool, Error> {
    matches_parts(
        selector
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str())),
        selector.match_expressions.as_deref().unwrap_or_default(),
        label,
    )
}

/// [`matches_with`] for a selector held as its `matchLabels` pairs and `matchExpressions`.
pub fn matches_parts<'a, 'b>(
    match_labels: impl IntoIterator<Item = (&'b str, &'b str)>,
    match_expressions: &[LabelSelectorRequirement],
    label: impl Fn(&str) -> Option<&'a str>,
) -> Result<bool, Error> {
    if match_labels.into_iter().any(|(k, v)| label(k) != Some(v)) {
        return Ok(false);
    }
    for (i, req) in match_expressions.iter().enumerate() {
        let field = || format!("selector.matchExpressions[{i}]");
        let value = label(&req.key);
        let values = req.values.as_deref().unwrap_or_default();
        let ok = match req.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(Error::invalid(
                    field(),
                    format!("operator {} needs at least one value", req.operator),
                ));
            }
            "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
            "NotIn" => !value.is_some_and(|v| values.iter().any(|x| x == v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => {
                return Err(Error::invalid(
                    field(),
                    format!("expected operator In, NotIn, Exists or DoesNotExist, got {other:?}"),
                ));
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn sel(ml: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: (!ml.is_empty()).then(|| labels(ml)),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        }
    }

    #[test]
    fn match_labels_need_every_pair() {
        let s = sel(&[("app", "web"), ("tier", "fe")], vec![]);
        assert!(matches(&s, &labels(&[("app", "web"), ("tier", "fe"), ("x", "y")])).unwrap());
        assert!(!matches(&s, &labels(&[("app", "web")])).unwrap());
        assert!(!matches(&s, &labels(&[("app", "web"), ("tier", "be")])).unwrap());
    }

    #[test]
    fn expressions_follow_the_api_server() {
        let pod = labels(&[("app", "web"), ("env", "prod")]);
        let cases = [
            (req("env", "In", &["prod", "stage"]), true),
            (req("env", "In", &["dev"]), false),
            (req("missing", "In", &["x"]), false),
            (req("env", "NotIn", &["dev"]), true),
            (req("env", "NotIn", &["prod"]), false),
            // NotIn holds for a pod without the label, as in Kubernetes.
            (req("missing", "NotIn", &["x"]), true),
            (req("app", "Exists", &[]), true),
            (req("missing", "Exists", &[]), false),
            (req("missing", "DoesNotExist", &[]), true),
            (req("app", "DoesNotExist", &[]), false),
        ];
        for (r, want) in cases {
            let s = sel(&[], vec![r.clone()]);
            assert_eq!(matches(&s, &pod).unwrap(), want, "{r:?}");
        }
        let both = sel(
            &[("app", "web")],
            vec![
                req("env", "In", &["prod"]),
                req("canary", "DoesNotExist", &[]),
            ],
        );
        assert!(matches(&both, &pod).unwrap());
        assert!(
            !matches(
                &both,
                &labels(&[("app", "web"), ("env", "prod"), ("canary", "1")])
            )
            .unwrap()
        );
    }

    #[test]
    fn bad_requirements_are_errors_naming_the_expression() {
        let e = matches(&sel(&[], vec![req("a", "Gt", &["1"])]), &labels(&[])).unwrap_err();
        assert!(e.to_string().contains("matchExpressions[0]"), "{e}");
        let e = matches(&sel(&[], vec![req("a", "In", &[])]), &labels(&[])).unwrap_err();
        assert!(e.to_string().contains("needs at least one value"), "{e}");
    }

    #[test]
    fn the_empty_selector_matches_everything() {
        assert!(matches(&LabelSelector::default(), &labels(&[])).unwrap());
    }
}
