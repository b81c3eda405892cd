//! Istio's own validation verdicts, replayed against the mesh.
//!
//! `tests/istio_verdicts/{virtualservice,destinationrule,gateway}.yaml` hold cases translated from
//! Istio's validation test tables (istio/istio `pkg/config/validation/`), each a whole Kubernetes
//! document with Istio's verdict (`valid`) and, for a rejection, a substring of Istio's reason. Every
//! case is run through [`our_verdict`]; the test fails listing *every* case where our verdict differs
//! from Istio's. A rejection whose message lacks Istio's reason is a softer failure: those are
//! printed and counted, but do not fail the test.
use std::{collections::BTreeSet, panic, path::PathBuf};

use mesh::{config::Config, registry::Registry, routing::RouteTable};
use serde::Deserialize;

/// Our verdict on one whole document: `Ok` when the mesh accepts it, else every message it gives.
/// The only place that knows the validation API, so it can be re-pointed when that API changes.
fn our_verdict(yaml: &str) -> Result<(), String> {
    let config = Config::parse_str("case.yaml", yaml).map_err(|e| e.to_string())?;
    RouteTable::compile(&config, &Registry::default()).map(|_| ()).map_err(|e| e.to_string())
}

const FILES: &[(&str, &str)] = &[
    ("virtualservice.yaml", "VirtualService"),
    ("destinationrule.yaml", "DestinationRule"),
    ("gateway.yaml", "Gateway"),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    source: String,
    valid: bool,
    #[serde(default)]
    reason: Option<String>,
    yaml: String,
}

fn load(file: &str) -> Vec<Case> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/istio_verdicts").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One line, and short: a message may quote a huge offending value.
fn one_line(s: &str) -> String {
    const MAX: usize = 400;
    let flat = s.replace('\n', " | ");
    match flat.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

/// Runs the verdict function. A panic is reported as such: it is never a verdict, whatever Istio says
/// about the input (a panic in validation takes the agent down on every node that reads the file).
fn run(yaml: &str) -> Result<Result<(), String>, String> {
    panic::catch_unwind(|| our_verdict(yaml)).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default()
    })
}

fn verdict(valid: bool) -> &'static str {
    if valid {
        "valid"
    } else {
        "invalid"
    }
}

#[test]
fn istio_verdicts() {
    let mut mismatches = Vec::new();
    let mut reasons = Vec::new();
    let mut summary = Vec::new();
    for (file, _) in FILES {
        let cases = load(file);
        let (mut wrong, mut soft) = (0, 0);
        for c in &cases {
            let istio = match &c.reason {
                Some(r) if !c.valid => format!("invalid ({r:?})"),
                _ => verdict(c.valid).to_owned(),
            };
            let ours = match run(&c.yaml) {
                Ok(v) => v,
                Err(panic) => {
                    wrong += 1;
                    mismatches.push(format!(
                        "MISMATCH | {file} | {} | istio: {istio} | ours: PANIC | {}",
                        c.name,
                        one_line(&panic)
                    ));
                    continue;
                }
            };
            if ours.is_ok() != c.valid {
                wrong += 1;
                let msg = ours.as_ref().err().map(|m| one_line(m)).unwrap_or_default();
                mismatches.push(format!(
                    "MISMATCH | {file} | {} | istio: {istio} | ours: {} | {msg}",
                    c.name,
                    verdict(ours.is_ok())
                ));
            } else if let (Err(msg), Some(reason)) = (&ours, &c.reason) {
                if !msg.to_lowercase().contains(&reason.to_lowercase()) {
                    soft += 1;
                    reasons.push(format!("REASON | {file} | {} | istio: {reason:?} | ours: {}", c.name, one_line(msg)));
                }
            }
        }
        summary.push(format!(
            "{file}: {} cases, {wrong} verdict mismatches, {soft} rejections without Istio's reason",
            cases.len()
        ));
    }
    for line in reasons.iter().chain(&mismatches).chain(&summary) {
        println!("{line}");
    }
    assert!(
        mismatches.is_empty(),
        "{} cases where our verdict differs from Istio's:\n{}\n{}",
        mismatches.len(),
        mismatches.join("\n"),
        summary.join("\n")
    );
}

/// The data itself: well-formed, one kind per file, names unique, a reason exactly on rejections,
/// and the size the issue asks for.
#[test]
fn verdict_tables_are_well_formed() {
    let mut total = 0;
    for (file, kind) in FILES {
        let cases = load(file);
        assert!(!cases.is_empty(), "{file}: no cases");
        let mut names = BTreeSet::new();
        let (mut valid, mut invalid) = (0, 0);
        for c in &cases {
            assert!(names.insert(c.name.as_str()), "{file}: duplicate case name {:?}", c.name);
            assert!(!c.source.trim().is_empty(), "{file}: {:?} has no source", c.name);
            match (&c.reason, c.valid) {
                (Some(r), false) => assert!(!r.trim().is_empty(), "{file}: {:?} has an empty reason", c.name),
                (None, true) => {}
                (Some(_), true) => panic!("{file}: {:?} is valid but gives a reason", c.name),
                (None, false) => panic!("{file}: {:?} is invalid without a reason", c.name),
            }
            let doc: serde_yaml::Value =
                serde_yaml::from_str(&c.yaml).unwrap_or_else(|e| panic!("{file}: {:?}: {e}", c.name));
            assert_eq!(doc["kind"].as_str(), Some(*kind), "{file}: {:?}", c.name);
            assert_eq!(doc["apiVersion"].as_str(), Some("networking.istio.io/v1"), "{file}: {:?}", c.name);
            if c.valid {
                valid += 1;
            } else {
                invalid += 1;
            }
        }
        assert!(valid > 0 && invalid > 0, "{file}: needs both valid ({valid}) and invalid ({invalid}) cases");
        total += cases.len();
    }
    assert!(total >= 200, "only {total} cases");
}
