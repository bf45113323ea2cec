//! The alerting rules and the Grafana dashboard, checked without a cluster:
//!
//! - `promtool check rules` accepts `charts/coherence/files/prometheus-rules.yaml`, and
//!   `promtool test rules manifests/prometheus/tests/*.yaml` passes, with every alert both
//!   firing and staying silent in some test;
//! - every alert has a severity, a summary, a description and a `runbook_url` whose anchor is
//!   a heading of `docs/operations.md`, and so do the PrometheusRules the operator creates
//!   (`coherence_operator::alerts`), whose cluster-wide twins in the rules file agree with them;
//! - `manifests/prometheus/rules.yaml` and `manifests/grafana/coherence.json` are what
//!   `scripts/render-monitoring.sh` makes of the chart's files;
//! - the dashboard has its variables and rows, and every query of it parses.
//!
//! promtool is `$PROMTOOL`, else the first on `PATH`; without it these tests fail and say to
//! run `scripts/install-promtool.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coherence_operator::alerts::{RUNBOOK_BASE, gate_rule, policy_rule};
use coherence_operator::crd::{CoherencePolicy, FinOpsGate};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const RULES: &str = "charts/coherence/files/prometheus-rules.yaml";
const RULES_MANIFEST: &str = "manifests/prometheus/rules.yaml";
const RULE_TESTS: &str = "manifests/prometheus/tests";
const DASHBOARD: &str = "charts/coherence/files/grafana-dashboard.json";
const DASHBOARD_MANIFEST: &str = "manifests/grafana/coherence.json";
const OPERATIONS: &str = "docs/operations.md";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn yaml(rel: &str) -> Value {
    serde_yaml_ng::from_str(&read(rel)).unwrap_or_else(|e| panic!("parse {rel}: {e}"))
}

/// `$PROMTOOL`, else `promtool` on `PATH`; a test without it fails saying how to get it.
fn promtool() -> PathBuf {
    const HOW: &str = "run scripts/install-promtool.sh (it installs Debian's prometheus \
                       package), or set PROMTOOL to a promtool binary";
    if let Some(p) = std::env::var_os("PROMTOOL").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "PROMTOOL={} is not a file: {HOW}", p.display());
        return p;
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("promtool is not installed (neither $PROMTOOL nor PATH): {HOW}"))
}

/// Runs `cmd` in the workspace root; its output, or a panic with it when it fails.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Every rule of a `groups:` document.
fn rules_of(groups: &Value) -> Vec<Value> {
    groups
        .as_array()
        .expect("groups is a list")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules is a list").clone())
        .collect()
}

fn alerts() -> Vec<Value> {
    let rules = rules_of(&yaml(RULES)["groups"]);
    assert!(rules.iter().all(|r| r["alert"].is_string()), "only alerts");
    rules
}

/// The rules of the PrometheusRules the operator gives the example policy (with a target, so
/// the drift rule is there too) and the example gate.
fn operator_rules() -> Vec<Value> {
    let mut policy: CoherencePolicy =
        serde_yaml_ng::from_str(&read("manifests/examples/coherencepolicy.yaml")).unwrap();
    policy.metadata.uid = Some("uid-p".into());
    let mut gate: FinOpsGate =
        serde_yaml_ng::from_str(&read("manifests/examples/finopsgate.yaml")).unwrap();
    gate.metadata.uid = Some("uid-g".into());
    let objects = [
        policy_rule(&policy, &["web".into()]).unwrap(),
        gate_rule(&gate).unwrap(),
    ];
    objects
        .iter()
        .flat_map(|o| rules_of(&serde_json::to_value(o).unwrap()["spec"]["groups"]))
        .collect()
}

fn anchor(rule: &Value) -> String {
    let url = rule["annotations"]["runbook_url"]
        .as_str()
        .unwrap_or_else(|| panic!("{} has no runbook_url", rule["alert"]));
    let (base, anchor) = url
        .split_once('#')
        .unwrap_or_else(|| panic!("{url}: no #anchor"));
    assert_eq!(base, RUNBOOK_BASE, "{}: runbook base", rule["alert"]);
    anchor.to_string()
}

/// GitHub's heading anchors: lowercase, punctuation dropped but `-` and `_`, spaces to `-`,
/// `-1`, `-2`, … after repeats. Headings inside code fences do not count.
fn heading_anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut fence: Option<&str> = None;
    for line in markdown.lines() {
        let t = line.trim_start();
        if let Some(f) = fence {
            if t.starts_with(f) {
                fence = None;
            }
            continue;
        }
        if t.starts_with("```") || t.starts_with("~~~") {
            fence = Some(&t[..3]);
            continue;
        }
        let level = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&level) || !line[level..].starts_with(' ') {
            continue;
        }
        let text = line[level..].trim().trim_end_matches('#').trim();
        let slug: String = text
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 { slug } else { format!("{slug}-{n}") });
        *n += 1;
    }
    out
}

#[test]
fn promtool_accepts_the_rules() {
    let out = run(Command::new(promtool()).args(["check", "rules", RULES]));
    let n = alerts().len();
    assert!(out.contains(&format!("SUCCESS: {n} rules found")), "{out}");
}

#[test]
fn promtool_unit_tests_pass_and_cover_every_alert() {
    let mut files: Vec<String> = std::fs::read_dir(root().join(RULE_TESTS))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .map(|n| format!("{RULE_TESTS}/{n}"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no test files in {RULE_TESTS}");
    let out = run(Command::new(promtool())
        .args(["test", "rules"])
        .args(&files));
    assert!(!out.contains("FAILED"), "{out}");

    // Every alert fires in some test and stays silent in another.
    let (mut fires, mut silent) = (BTreeSet::new(), BTreeSet::new());
    for f in &files {
        let doc = yaml(f);
        let rule_files: Vec<&str> = doc["rule_files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(rule_files, [format!("../../../{RULES}")], "{f}: rule_files");
        for t in doc["tests"].as_array().unwrap() {
            for a in t["alert_rule_test"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                let name = a["alertname"].as_str().unwrap().to_string();
                match a["exp_alerts"].as_array() {
                    Some(e) if !e.is_empty() => fires.insert(name),
                    _ => silent.insert(name),
                };
            }
        }
    }
    for r in alerts() {
        let name = r["alert"].as_str().unwrap();
        assert!(fires.contains(name), "no promtool test makes {name} fire");
        assert!(
            silent.contains(name),
            "no promtool test keeps {name} silent"
        );
    }
}

#[test]
fn every_alert_is_annotated_and_links_a_runbook() {
    let mut names = BTreeSet::new();
    for r in alerts() {
        let name = r["alert"].as_str().unwrap();
        assert!(names.insert(name.to_string()), "{name} is defined twice");
        assert!(name.starts_with("Coherence"), "{name}: name prefix");
        let severity = r["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description"] {
            let v = r["annotations"][key].as_str().unwrap_or_default();
            assert!(!v.trim().is_empty(), "{name}: no {key}");
        }
        anchor(&r);
    }
}

#[test]
fn every_runbook_anchor_is_a_heading_of_operations_md() {
    let headings = heading_anchors(&read(OPERATIONS));
    let mut missing = BTreeSet::new();
    let rules: Vec<(&str, Value)> = alerts()
        .into_iter()
        .map(|r| (RULES, r))
        .chain(
            operator_rules()
                .into_iter()
                .map(|r| ("operator/src/alerts.rs", r)),
        )
        .collect();
    for (source, r) in &rules {
        let a = anchor(r);
        if !headings.contains(&a) {
            missing.insert(format!("#{a} ({} in {source})", r["alert"]));
        }
    }
    assert!(
        missing.is_empty(),
        "runbook anchors without a heading in {OPERATIONS}: {missing:?}\nheadings: {headings:?}"
    );
}

#[test]
fn github_anchors_are_computed_as_github_does() {
    let md = "# Operations\n## 429 storm\n### Dedup store outage (503)\n## `wal audit`, step 2\n\
              ```sh\n# not a heading\n```\n## Veto active\n## Veto active\n#no space\n";
    let a = heading_anchors(md);
    let want: BTreeSet<String> = [
        "operations",
        "429-storm",
        "dedup-store-outage-503",
        "wal-audit-step-2",
        "veto-active",
        "veto-active-1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(a, want);
}

#[test]
fn the_cluster_wide_twins_of_the_operator_rules_agree_with_them() {
    let ours: BTreeMap<String, Value> = alerts()
        .into_iter()
        .map(|r| (r["alert"].as_str().unwrap().to_string(), r))
        .collect();
    let theirs = operator_rules();
    assert_eq!(theirs.len(), 5, "the operator's alerts changed: {theirs:?}");
    for t in theirs {
        let name = t["alert"].as_str().unwrap();
        let o = ours
            .get(name)
            .unwrap_or_else(|| panic!("{name}: no cluster-wide twin in {RULES}"));
        assert_eq!(o["labels"], t["labels"], "{name}: labels");
        assert_eq!(o["for"], t["for"], "{name}: for");
        assert_eq!(anchor(o), anchor(&t), "{name}: runbook");
        // The same expression without the operator's selector of the namespace and object.
        let mut expr = t["expr"].as_str().unwrap().to_string();
        let open = expr.find('{').unwrap();
        let close = open + expr[open..].find('}').unwrap();
        expr.replace_range(open..=close, "");
        assert_eq!(o["expr"].as_str().unwrap().trim(), expr, "{name}: expr");
    }
}

#[test]
fn the_prometheus_rule_manifest_is_rendered_from_the_chart_file() {
    let m = yaml(RULES_MANIFEST);
    assert_eq!(m["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(m["kind"], "PrometheusRule");
    assert_eq!(m["metadata"]["name"], "coherence");
    assert_eq!(m["metadata"]["namespace"], "coherence");
    assert_eq!(m["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        m["spec"]["groups"],
        yaml(RULES)["groups"],
        "{RULES_MANIFEST} is stale: run scripts/render-monitoring.sh"
    );
    run(Command::new("bash").args(["scripts/render-monitoring.sh", "--check"]));
}

#[test]
fn the_dashboard_copies_are_identical() {
    assert!(
        read(DASHBOARD) == read(DASHBOARD_MANIFEST),
        "{DASHBOARD_MANIFEST} differs from {DASHBOARD}: run scripts/render-monitoring.sh"
    );
}

fn all_panels(panels: &[Value], out: &mut Vec<Value>) {
    for p in panels {
        out.push(p.clone());
        if let Some(inner) = p["panels"].as_array() {
            all_panels(inner, out);
        }
    }
}

fn dashboard_panels() -> (Value, Vec<Value>) {
    let d: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let mut panels = Vec::new();
    all_panels(d["panels"].as_array().unwrap(), &mut panels);
    (d, panels)
}

#[test]
fn the_dashboard_has_its_variables_rows_and_data_source() {
    let (d, panels) = dashboard_panels();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 39);
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let vars: BTreeMap<&str, &Value> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    assert_eq!(vars["datasource"]["type"], "datasource");
    assert_eq!(vars["datasource"]["query"], "prometheus");
    for name in ["namespace", "workload"] {
        assert_eq!(vars[name]["type"], "query", "{name}");
        assert_eq!(vars[name]["datasource"]["uid"], "${datasource}", "{name}");
    }
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        rows,
        [
            "Ingest",
            "WAL",
            "Workloads",
            "FinOps",
            "Sidecars",
            "Operator"
        ]
    );
    let mut ids = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "{title}: id repeated"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["type"], "prometheus", "{title}");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{title}"
            );
        }
    }
}

#[test]
fn every_dashboard_query_parses() {
    // Each query as a recording rule, Grafana's variables replaced by values of their kind.
    let (_, panels) = dashboard_panels();
    let mut rules = Vec::new();
    for p in &panels {
        for t in p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "5m")
                .replace("$__range", "6h")
                .replace("$namespace", ".*")
                .replace("$workload", ".*");
            assert!(
                !expr.contains('$'),
                "{}: unknown variable in {expr}",
                p["title"]
            );
            rules.push(serde_json::json!({
                "record": format!("dashboard:query{}", rules.len()),
                "expr": expr,
            }));
        }
    }
    let n = rules.len();
    let doc = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
    let out = run(Command::new(promtool()).args(["check", "rules"]).arg(&file));
    assert!(out.contains(&format!("SUCCESS: {n} rules found")), "{out}");
}
