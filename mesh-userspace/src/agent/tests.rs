//! Unit tests of the agent: flags, config merging, Telemetry access-log overrides, the VIP map.
use std::net::Ipv4Addr;

use mesh_common::ServiceKey;

use super::{config_sources::access_log_overrides, *};
use crate::{
    config::Config,
    registry::{AppProtocol, Service, ServicePort, TargetPort, Workload},
};

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    agent: AgentArgs,
}

#[test]
fn telemetry_access_logging_decides_per_pod_with_the_flag_as_the_default_provider() {
    let yaml = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: logs, namespace: default}\nspec:\n  selector: {matchLabels: {app: productpage}}\n  accessLogging:\n  - providers: [{name: envoy}]\n---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: quiet, namespace: default}\nspec:\n  selector: {matchLabels: {app: ratings}}\n  accessLogging:\n  - disabled: true\n";
    let config = Config::parse_str("telemetry.yaml", yaml).expect("telemetry parses");
    let pod = |name: &str, app: &str| {
        let mut w = Workload::external(Ipv4Addr::new(10, 0, 0, 1), "default");
        w.name = name.into();
        w.labels = [("app".to_string(), app.to_string())].into_iter().collect();
        w.enroll = true;
        w.netns = Some("/run/netns/x".into());
        Arc::new(w)
    };
    let registry = Registry {
        workloads: vec![
            pod("productpage-v1", "productpage"),
            pod("ratings-v1", "ratings"),
            pod("details-v1", "details"),
        ],
        ..Registry::default()
    };
    struct NoOriginalDst;
    impl proxy::OriginalDst for NoOriginalDst {
        fn take(&self, _: u64, _: std::net::SocketAddrV4) -> Option<std::net::SocketAddrV4> {
            None
        }
    }
    let state = ProxyState::new(registry.clone(), RouteTable::kubernetes_only(&registry), Arc::new(NoOriginalDst));
    let on = |state: &ProxyState| {
        let o = access_log_overrides(&config, &registry, state).expect("a Telemetry has accessLogging");
        let mut v: Vec<(String, bool)> =
            o["default"].iter().map(|(k, v)| (k.clone(), matches!(v, proxy::access_log::PodLog::On(_)))).collect();
        v.sort();
        v
    };
    // --access-log off (Istio's default: no default provider): only the selected pod logs.
    assert_eq!(
        on(&state),
        [("details-v1".into(), false), ("productpage-v1".into(), true), ("ratings-v1".into(), false)]
    );
    // --access-log text (meshConfig.accessLogFile set): everyone but the pod turned off.
    state.access_log.set_mode(proxy::access_log::AccessLogMode::Text);
    assert_eq!(
        on(&state),
        [("details-v1".into(), true), ("productpage-v1".into(), true), ("ratings-v1".into(), false)]
    );
    assert!(access_log_overrides(&Config::default(), &registry, &state).is_none());
    // A filter travels with the pod's decision, compiled once at admission.
    let filtered = format!("{yaml}---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: errors, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: details}}}}\n  accessLogging:\n  - providers: [{{name: envoy}}]\n    filter: {{expression: \"response.code >= 400\"}}\n");
    let config = Config::parse_str("telemetry.yaml", &filtered).expect("telemetry parses");
    let o = access_log_overrides(&config, &registry, &state).expect("a Telemetry has accessLogging");
    match &o["default"]["details-v1"] {
        proxy::access_log::PodLog::On(Some(f)) => assert_eq!(f.expression(), "response.code >= 400"),
        other => panic!("details-v1 logs with its filter, got {other:?}"),
    }
    assert!(matches!(o["default"]["productpage-v1"], proxy::access_log::PodLog::On(None)));
}

/// Gateway API objects from the API server go through the files' admission: an HTTPRoute is
/// admitted beside the files' documents, a kind the admission does not act on is skipped
/// (not rejected), and `--gateway-api` is on by default.
#[test]
fn gateway_api_objects_are_merged_through_the_same_admission() {
    use clap::Parser as _;
    let mut dir = Config::default();
    dir.add_str("vs.yaml", "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n").expect("file");
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: ns}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, port: 80}]\n";
    let class = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: mesh}\nspec: {controllerName: example.com/mesh}\n";
    let tls = "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\nmetadata: {name: t, namespace: ns}\nspec: {}\n";
    let sources = ConfigSources {
        dir,
        crds: Arc::default(),
        gateway_api: Arc::new(vec![
            ("k8s:GatewayClass/mesh".into(), class.into()),
            ("k8s:HTTPRoute/ns/r".into(), route.into()),
            ("k8s:TLSRoute/ns/t".into(), tls.into()),
        ]),
        secrets: Arc::default(),
    };
    let merged = sources.merged();
    assert_eq!(merged.virtual_services.len(), 1);
    assert_eq!(merged.http_routes.len(), 1);
    assert!(merged.rejected.is_empty());
    assert_eq!(merged.gateway_classes.len(), 1, "GatewayClass admitted");
    assert!(merged.skipped.iter().any(|s| s.contains("TLSRoute")), "{:?}", merged.skipped);
    let on = Cli::try_parse_from(["mesh", "--registry", "r.yaml"]).expect("parse");
    assert_eq!(on.agent.gateway_api, Switch::On);
    let off = Cli::try_parse_from(["mesh", "--registry", "r.yaml", "--gateway-api", "off"]).expect("parse");
    assert_eq!(off.agent.gateway_api, Switch::Off);
}

#[test]
fn request_metrics_flag_defaults_on_and_turns_off() {
    use clap::Parser as _;
    let on = Cli::try_parse_from(["mesh", "--registry", "r.yaml"]).expect("parse");
    assert_eq!(on.agent.request_metrics, Switch::On);
    let off = Cli::try_parse_from(["mesh", "--registry", "r.yaml", "--request-metrics", "off"]).expect("parse");
    assert_eq!(off.agent.request_metrics, Switch::Off);
    assert!(Cli::try_parse_from(["mesh", "--registry", "r.yaml", "--request-metrics", "maybe"]).is_err());
    assert_eq!(on.agent.access_log, proxy::access_log::AccessLogMode::Off);
    let json = Cli::try_parse_from(["mesh", "--registry", "r.yaml", "--access-log", "json"]).expect("parse");
    assert_eq!(json.agent.access_log, proxy::access_log::AccessLogMode::Json);
}

#[test]
fn settings_from_no_flags_are_the_defaults_and_each_settings_flag_reaches_them() {
    use clap::Parser as _;
    let defaults = Cli::try_parse_from(["mesh", "--registry", "r.yaml"]).expect("parse").agent;
    // The budget's origin depends on the cgroup the test runs in.
    let mut settings = defaults.settings();
    settings.limits.memory_budget = proxy::overload::DEFAULT_BUDGET;
    settings.memory_budget_origin = proxy::overload::BudgetOrigin::Default;
    assert_eq!(settings, Settings::default());
    let set = Cli::try_parse_from([
        "mesh",
        "--registry",
        "r.yaml",
        "--memory-budget",
        "100Mi",
        "--drain-timeout",
        "5s",
        "--fail-mode",
        "closed",
        "--worker-threads",
        "1",
        "--fair-share-lag",
        "7ms",
    ])
    .expect("parse")
    .agent
    .settings();
    assert_eq!(set.limits.memory_budget, 100 << 20);
    assert_eq!(set.memory_budget_origin, proxy::overload::BudgetOrigin::Flag);
    assert_eq!(set.drain_timeout, Duration::from_secs(5));
    assert_eq!(set.fail_mode, crate::ebpf::FailMode::Closed);
    assert_eq!(set.worker_threads, Some(1));
    assert_eq!(set.fair_share.lag, Duration::from_millis(7));
    assert!(Cli::try_parse_from(["mesh", "--registry", "r.yaml", "--worker-threads", "0"]).is_err());
}

#[test]
fn limit_flags_default_to_envoys_values_and_each_reaches_the_proxy_limits() {
    use clap::Parser as _;
    let defaults = Cli::try_parse_from(["mesh", "--registry", "r.yaml"]).expect("parse").agent.limits();
    assert_eq!(defaults, proxy::Limits::default(), "the flags' defaults are the proxy's");
    let set = Cli::try_parse_from([
        "mesh",
        "--registry",
        "r.yaml",
        "--idle-timeout",
        "90s",
        "--max-request-headers-kb",
        "16",
        "--max-request-headers-count",
        "20",
        "--http2-max-concurrent-streams",
        "7",
        "--request-max-buffered-body",
        "64Ki",
        "--request-headers-timeout",
        "5s",
        "--request-body-timeout",
        "1m",
        "--source-max-connections",
        "3",
        "--source-max-requests",
        "4",
        "--source-max-buffered-body",
        "2Mi",
    ])
    .expect("parse")
    .agent
    .limits();
    assert_eq!(
        set,
        proxy::Limits {
            request_headers_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(90),
            max_request_headers_bytes: 16 * 1024,
            max_request_headers_count: 20,
            http2_max_concurrent_streams: 7,
            max_buffered_body: 64 * 1024,
            request_body_idle_timeout: Duration::from_secs(60),
            per_source_max_buffered_body: 2 << 20,
            per_source_max_connections: 3,
            per_source_max_requests: 4,
            // Derived from this machine's cgroup (overload.rs has its own tests).
            memory_budget: set.memory_budget,
        }
    );
    // The old plain-bytes spelling still works.
    let plain = Cli::try_parse_from(["mesh", "--registry", "r.yaml", "--source-max-buffered-body", "1000"]);
    assert_eq!(plain.expect("parse").agent.source_max_buffered_body, 1000);
}

#[test]
fn zero_or_absurd_limit_flags_are_usage_errors_naming_the_flag() {
    use clap::Parser as _;
    for (flag, value) in [
        ("--idle-timeout", "0"),
        ("--idle-timeout", "0s"),
        ("--idle-timeout", "1y"),
        ("--max-request-headers-kb", "0"),
        ("--max-request-headers-kb", "8193"),
        ("--max-request-headers-kb", "4294967296"),
        ("--max-request-headers-count", "0"),
        ("--max-request-headers-count", "1001"),
        ("--http2-max-concurrent-streams", "0"),
        ("--http2-max-concurrent-streams", "2147483648"),
        ("--request-max-buffered-body", "0"),
        ("--request-max-buffered-body", "5Gi"),
        ("--request-max-buffered-body", "1.5Mi"),
        ("--request-max-buffered-body", "1MB"),
        ("--source-max-buffered-body", "0"),
        ("--source-max-connections", "0"),
        ("--source-max-connections", "1048577"),
        ("--source-max-requests", "-1"),
        ("--request-headers-timeout", "0ms"),
    ] {
        // `--flag=value`: a separate "-1" would be read as an unknown flag, not as the value.
        let Err(e) = Cli::try_parse_from(["mesh", "--registry", "r.yaml", &format!("{flag}={value}")]) else {
            panic!("{flag} {value} must be refused");
        };
        // What `mesh agent` does with it: print and exit 2 (clap's usage error).
        assert_eq!(e.exit_code(), 2, "{flag} {value}");
        let msg = e.to_string();
        assert!(msg.contains(flag), "{flag} {value}: the message names the flag: {msg}");
        assert!(msg.contains(value), "{flag} {value}: and the value: {msg}");
    }
}

fn service(
    name: &str,
    vip: [u8; 4],
    selector: &[(&str, &str)],
    ready_ips: Option<std::collections::BTreeSet<Ipv4Addr>>,
) -> Arc<Service> {
    Arc::new(Service {
        name: name.into(),
        namespace: "default".into(),
        cluster_ip: Some(Ipv4Addr::from(vip)),
        ports: vec![ServicePort {
            name: None,
            port: 443,
            target_port: TargetPort::Number(6443),
            node_port: None,
            protocol: AppProtocol::Tcp,
        }],
        selector: selector.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ready_ips,
        ..Default::default()
    })
}

#[test]
fn selectorless_vips_are_captured_only_when_endpoint_slices_say_where_they_go() {
    let key = |vip: [u8; 4]| ServiceKey { ip4: u32::from(Ipv4Addr::from(vip)).to_be(), port: 443, _pad: 0 };
    let standalone = Registry {
        services: vec![
            service("web", [10, 96, 0, 5], &[("app", "web")], None),
            service("kubernetes", [10, 96, 0, 1], &[], None),
        ],
        workloads: Vec::new(),
        ..Default::default()
    };
    let m = service_map(&standalone);
    assert!(m.contains_key(&key([10, 96, 0, 5])));
    assert!(!m.contains_key(&key([10, 96, 0, 1])), "no EndpointSlices in a registry file: leave the VIP to kube-proxy");
    let kubernetes_mode = Registry {
        services: vec![service("kubernetes", [10, 96, 0, 1], &[], Some(Default::default()))],
        workloads: Vec::new(),
        ..Default::default()
    };
    assert!(service_map(&kubernetes_mode).contains_key(&key([10, 96, 0, 1])));
}
