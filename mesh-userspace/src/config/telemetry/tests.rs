//! Telemetry parsing, Istio's validation verdicts (cases from istio/istio
//! `pkg/config/validation/testdata/crds/telemetry-{valid,invalid}.yaml` and `validation.go`), and
//! which pods the access-log setting applies to.
use std::collections::BTreeMap;

use super::*;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse_str("telemetry.yaml", text).map_err(|e| e.to_string())
}

fn errors(text: &str) -> String {
    match parse(text) {
        Ok(c) => panic!("accepted: {:?}", c.telemetries),
        Err(e) => e,
    }
}

fn doc(version: &str, namespace: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: telemetry.istio.io/{version}\nkind: Telemetry\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{spec}")
}

fn pod(namespace: &str, name: &str, labels: &[(&str, &str)]) -> Workload {
    Workload {
        name: name.into(),
        namespace: namespace.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        ip: None,
        container_ports: Vec::new(),
        netns: None,
        cgroup: None,
        enroll: true,
        caps: Default::default(),
    }
}

#[test]
fn istios_valid_telemetry_is_accepted_in_both_versions_with_warnings_for_what_is_not_implemented() {
    // telemetry-valid.yaml's "full" object.
    let spec = "  metrics:
  - providers:
    - name: prometheus
    reportingInterval: 5s
    overrides:
    - tagOverrides:
        request_method:
          value: \"request.method\"
      match:
        customMetric: \"foo\"
      disabled: false
    - match:
        metric: GRPC_REQUEST_MESSAGES
      disabled: true
  accessLogging:
  - disabled: false
    filter:
      expression: 'true'
    match:
      mode: CLIENT
    providers:
    - name: stdout
  tracing:
  - providers:
    - name: otlp
    match:
      mode: CLIENT_AND_SERVER
    randomSamplingPercentage: 54.54
    useRequestIdForTraceSampling: true
    disableSpanReporting: false
    customTags:
      env:
        environment:
          name: \"NAME\"
          defaultValue: \"default\"
      literal:
        literal:
          value: \"default literal\"
";
    for version in ["v1", "v1alpha1"] {
        let c = parse(&doc(version, "default", "full", spec)).expect("Istio accepts it");
        assert_eq!(c.telemetries.len(), 1);
        let t = &c.telemetries[0];
        assert_eq!((t.namespace.as_str(), t.name.as_str()), ("default", "full"));
        assert_eq!(t.spec.access_logging[0].match_.as_ref().and_then(|m| m.mode), Some(WorkloadMode::Client));
        let warnings = c.warnings.join("\n");
        assert!(
            warnings.contains("telemetry.yaml:8:14: spec.metrics[0]: metrics customisation is not implemented"),
            "{warnings}"
        );
        assert!(warnings.contains("spec.tracing[0]: tracing is not implemented"), "{warnings}");
        assert!(warnings.contains("provider \"stdout\" is not one this mesh has"), "{warnings}");
        assert!(!warnings.contains("filter"), "the filter is implemented: {warnings}");
        let f = t.spec.access_logging[0].filter.as_ref().expect("a filter");
        assert_eq!(f.compiled.as_ref().map(|p| p.expression()), Some("true"), "compiled at admission");
    }
}

#[test]
fn istios_invalid_telemetries_are_rejected_with_istios_reasons() {
    let cases = [
        // telemetry-invalid.yaml
        ("  metrics:\n  - providers:\n    - name: \"\"\n", "telemetry.yaml:9:7: spec.metrics[0].providers[0].name: providers.name may not be empty"),
        ("  metrics:\n  - overrides:\n    - match:\n        customMetric: \"\"\n", "spec.metrics[0].overrides[0].match.customMetric: customMetric may not be empty"),
        ("  metrics:\n  - overrides:\n    - tagOverrides:\n        foo:\n          operation: UPSERT\n", "tagOverrides.foo: value must be set when operation is UPSERT"),
        ("  metrics:\n  - overrides:\n    - tagOverrides:\n        foo:\n          operation: REMOVE\n          value: oops\n", "value must not be set when operation is REMOVE"),
        // validation.go
        ("  selector: {matchLabels: {app: x}}\n  targetRefs: [{kind: Service, name: x}]\n", "spec: only one of targetRefs or workloadSelector can be set"),
        ("  selector: {matchLabels: {app: \"x*\"}}\n", "wildcard is not supported in selector"),
        ("  targetRef: {kind: Pod, name: x}\n", "targetRef must be to one of"),
        ("  targetRef: {kind: Service, name: x, namespace: other}\n", "cross namespace referencing is not supported"),
        ("  tracing:\n  - randomSamplingPercentage: 101\n", "randomSamplingPercentage must be in range [0.0, 100.0]"),
        ("  tracing:\n  - customTags:\n      t:\n        literal: {value: \"\"}\n", "literal tag value may not be empty"),
        ("  accessLogging:\n  - providers: [{name: \"\"}]\n", "spec.accessLogging[0].providers[0].name: providers.name may not be empty"),
        ("  metrics:\n  - reportingInterval: 0.5ms\n", "must be a valid duration greater than 1ms"),
        // The CRD's schema: unknown fields and enum values.
        ("  accessLogging:\n  - disable: true\n", "telemetry.yaml:8:5: spec.accessLogging[0].disable: unknown field `disable`"),
        ("  accessLogging:\n  - match: {mode: BOTH}\n", "spec.accessLogging[0].match.mode: unknown variant `BOTH`"),
    ];
    for (spec, want) in cases {
        let e = errors(&doc("v1", "default", "bad", spec));
        assert!(e.contains(want), "{spec}\nwant {want:?}\ngot  {e}");
    }
    assert!(errors("apiVersion: telemetry.istio.io/v2\nkind: Telemetry\nmetadata: {name: t}\nspec: {}\n")
        .contains("unsupported apiVersion"));
    assert!(errors("apiVersion: telemetry.istio.io/v1\nkind: telemetry\nmetadata: {name: t}\nspec: {}\n")
        .contains("did you mean Telemetry?"));
}

#[test]
fn a_bad_telemetry_is_rejected_alone() {
    let text = format!(
        "{}---\n{}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r}}\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {{host: r}}\n",
        doc("v1", "istio-system", "mesh-default", "  accessLogging:\n  - providers: [{name: envoy}]\n"),
        doc("v1", "default", "bad", "  accessLogging:\n  - providers: [{name: envoy}]\n    wat: 1\n"),
    );
    let mut c = Config::default();
    assert!(c.add_str("routing.yaml", &text).is_err());
    assert_eq!(c.telemetries.len(), 1);
    assert_eq!(c.virtual_services.len(), 1);
    assert_eq!(c.rejected.len(), 1);
    let key = c.rejected[0].object.clone().expect("attributed to the object");
    assert_eq!((key.kind, key.namespace.as_str(), key.name.as_str()), ("Telemetry", "default", "bad"));
    assert!(
        c.rejected[0].errors[0]
            .to_string()
            .starts_with("routing.yaml:18:5: spec.accessLogging[0].wat: unknown field `wat`"),
        "{:?}",
        c.rejected[0].errors
    );
}

fn config(docs: &[String]) -> Config {
    parse(&docs.join("---\n")).expect("valid")
}

#[test]
fn access_logging_follows_istios_mesh_namespace_workload_hierarchy() {
    let productpage = pod("default", "productpage-v1", &[("app", "productpage")]);
    let reviews = pod("default", "reviews-v1", &[("app", "reviews"), ("version", "v1")]);
    let quiet = pod("quiet", "worker", &[("app", "worker")]);

    // Nothing says anything: off, as in Istio.
    assert!(!access_logging_enabled(&Config::default(), &productpage));

    let mesh_wide = doc("v1", "istio-system", "mesh-default", "  accessLogging:\n  - providers:\n    - name: envoy\n");
    let c = config(std::slice::from_ref(&mesh_wide));
    assert!(access_logging_enabled(&c, &productpage));
    assert!(access_logging_enabled(&c, &quiet));

    // A namespace turns it off with no provider named: the providers of the level above.
    let ns_off = doc("v1alpha1", "quiet", "off", "  accessLogging:\n  - disabled: true\n");
    // One workload turns it off by selector.
    let reviews_off =
        doc("v1", "default", "no-reviews-log", "  selector:\n    matchLabels: {app: reviews}\n  accessLogging:\n  - providers: [{name: envoy}]\n    disabled: true\n");
    let c = config(&[mesh_wide.clone(), ns_off.clone(), reviews_off.clone()]);
    assert!(access_logging_enabled(&c, &productpage));
    assert!(!access_logging_enabled(&c, &reviews));
    assert!(!access_logging_enabled(&c, &quiet));

    // Namespace-wide on, without a mesh-wide setting; a selector in another namespace does not apply.
    let ns_on = doc("v1", "default", "on", "  accessLogging:\n  - providers: [{name: envoy}]\n");
    let elsewhere = doc("v1", "quiet", "sel", "  selector:\n    matchLabels: {app: reviews}\n  accessLogging:\n  - providers: [{name: envoy}]\n    disabled: true\n");
    let c = config(&[ns_on, elsewhere]);
    assert!(access_logging_enabled(&c, &reviews));
    assert!(!access_logging_enabled(&c, &quiet));

    // A server-side-only setting says nothing about the requests a pod sends; another provider
    // is not Envoy's log; a targetRef attaches to no pod.
    let server_only = doc(
        "v1",
        "istio-system",
        "server",
        "  accessLogging:\n  - providers: [{name: envoy}]\n    match: {mode: SERVER}\n",
    );
    assert!(!access_logging_enabled(&config(&[server_only]), &productpage));
    let otel = doc("v1", "istio-system", "otel", "  accessLogging:\n  - providers: [{name: otel}]\n");
    assert!(!access_logging_enabled(&config(&[otel]), &productpage));
    let by_ref = doc(
        "v1",
        "default",
        "ref",
        "  targetRefs: [{kind: Service, name: reviews}]\n  accessLogging:\n  - providers: [{name: envoy}]\n",
    );
    assert!(!access_logging_enabled(&config(&[by_ref]), &reviews));

    // With `envoy` as the mesh's default provider (the agent's flag), a Telemetry can still turn
    // it off, and an entry with no providers means the default.
    let c = config(&[ns_off]);
    assert!(access_log_providers(&c, &quiet, &["envoy"]).is_empty());
    assert_eq!(access_log_providers(&Config::default(), &quiet, &["envoy"]), BTreeSet::from(["envoy".to_string()]));
}

/// istio/istio `TestValidateTelemetryFilter` and the access-log filter integration test's
/// object: what cel-go's parser accepts is admitted, `)++++` is rejected at the expression.
#[test]
fn filter_expressions_are_parsed_at_admission_as_istio_does() {
    for e in [
        "response.code >= 400",
        "connection.mtls && request.url_path.contains('v1beta3')",
        // Not a boolean: Istio's validation accepts it (syntax only); it never logs.
        "response.code",
        "request.path == '/filter-test'",
    ] {
        let spec = format!(
            "  accessLogging:\n    - providers:\n        - name: envoy\n      filter:\n        expression: \"{e}\"\n"
        );
        let c = parse(&doc("v1", "default", "logs", &spec)).unwrap_or_else(|err| panic!("{e}: {err}"));
        let f = c.telemetries[0].spec.access_logging[0].filter.as_ref().expect("filter");
        assert!(f.compiled.is_some(), "{e}");
    }
    let spec = "  accessLogging:\n  - providers: [{name: envoy}]\n  - providers: [{name: envoy}]\n    filter:\n      expression: ')++++'\n";
    let e = errors(&doc("v1", "default", "bad", spec));
    assert!(
        e.starts_with(
            "telemetry.yaml:11:7: spec.accessLogging[1].filter.expression: must be a valid CEL expression, ERROR: <input>:1:1: Syntax error: mismatched input ')'"
        ),
        "{e}"
    );
    // An empty expression is not CEL either (cel-go: "mismatched input '<EOF>'").
    let spec = "  accessLogging:\n  - providers: [{name: envoy}]\n    filter: {expression: \"\"}\n";
    assert!(errors(&doc("v1", "default", "empty", spec)).contains("must be a valid CEL expression"));
    // Durations have no type here: accepted as Istio does, with a warning that it never logs.
    let spec = "  accessLogging:\n  - providers: [{name: envoy}]\n    filter: {expression: \"request.duration > duration('1s')\"}\n";
    let c = parse(&doc("v1", "default", "slow", spec)).expect("Istio accepts it");
    assert!(c.warnings.join("\n").contains("durations and timestamps"), "{:?}", c.warnings);
}

/// istio/istio `TestAccessLoggingWithFilter`: the filter of a provider is the one of the last
/// entry naming it for this side; a later entry naming it without a filter clears it.
#[test]
fn the_filter_of_the_last_entry_naming_the_provider_applies() {
    let p = pod("default", "productpage-v1", &[("app", "test")]);
    let filter_of = |spec: &str| {
        let c = config(&[doc("v1", "default", "t", spec)]);
        access_log_filters(&c, &p, &[]).get("envoy").map(|f| f.map(|f| f.expression.clone()))
    };
    let entry = |expr: Option<&str>, mode: Option<&str>| {
        let mut e = "  - providers: [{name: envoy}]\n".to_string();
        if let Some(x) = expr {
            e.push_str(&format!("    filter: {{expression: \"{x}\"}}\n"));
        }
        if let Some(m) = mode {
            e.push_str(&format!("    match: {{mode: {m}}}\n"));
        }
        e
    };
    let spec = |entries: &[String]| format!("  accessLogging:\n{}", entries.concat());
    assert_eq!(
        filter_of(&spec(&[entry(Some("response.code >= 400"), None)])),
        Some(Some("response.code >= 400".into()))
    );
    let multi = spec(&[entry(Some("response.code >= 500"), None), entry(Some("response.code >= 400"), None)]);
    assert_eq!(filter_of(&multi), Some(Some("response.code >= 400".into())));
    let nil = spec(&[entry(Some("response.code >= 500"), None), entry(None, None)]);
    assert_eq!(filter_of(&nil), Some(None));
    let sides = spec(&[
        entry(Some("response.code >= 500"), Some("CLIENT")),
        entry(Some("response.code >= 400"), Some("SERVER")),
    ]);
    assert_eq!(filter_of(&sides), Some(Some("response.code >= 500".into())), "the node proxy is the client side");
    // Disabled: no provider, so no filter.
    assert_eq!(filter_of("  accessLogging:\n  - providers: [{name: envoy}]\n    disabled: true\n"), None);
    // A workload-level entry naming the provider replaces the mesh-wide filter.
    let mesh = doc("v1", "istio-system", "mesh", &spec(&[entry(Some("response.code >= 500"), None)]));
    let ns = doc("v1", "default", "ns", &spec(&[entry(Some("request.path == '/filter-test'"), None)]));
    let c = config(&[mesh, ns]);
    let f = access_log_filters(&c, &p, &[]);
    assert_eq!(f["envoy"].map(|f| f.expression.as_str()), Some("request.path == '/filter-test'"));
}
