//! The Gateway API mesh conformance tests (kubernetes-sigs/gateway-api `conformance/tests/mesh/`),
//! their YAML verbatim (`mesh-userspace/tests/gateway_api/`), each request of the Go test's table
//! routed through the compiled table and asserted on what the conformance test expects: the
//! backend, the path and headers the backend receives, the response headers, the redirect.
use std::path::Path;

use http::HeaderMap;
use rand::{rngs::StdRng, SeedableRng};

use super::super::*;
use crate::config::Config;

const NS: &str = "gateway-conformance-mesh";

macro_rules! fixture {
    ($f:literal) => {
        ($f, include_str!(concat!("../../../tests/gateway_api/", $f)))
    };
}

fn registry() -> Registry {
    let mut r = Registry::default();
    for (f, text) in [fixture!("manifests.yaml"), fixture!("pods.yaml")] {
        r.add_yaml(Path::new(f), text).expect("registry");
    }
    r
}

fn table_of(files: &[(&str, &str)]) -> RouteTable {
    let mut c = Config::default();
    for (f, text) in files {
        c.add_str(f, text).unwrap_or_else(|e| panic!("{e}"));
    }
    RouteTable::compile(&c, &registry()).unwrap_or_else(|e| panic!("{e}"))
}

/// What the conformance client observes.
#[derive(Debug)]
struct Seen {
    status: u16,
    /// The Service whose pods got the request (the echo server reports its pod name).
    backend: Option<String>,
    /// The path and headers the backend received.
    path: String,
    headers: HeaderMap,
    response_headers: HeaderMap,
    location: Option<String>,
}

/// Sends `path` with `headers` to `host` (`echo`, `echo-v1:8080`...; port 80 when left out) from a
/// meshed client, as the conformance client does.
fn send_with(t: &RouteTable, rng: &mut StdRng, host: &str, path: &str, headers: &[(&str, &str)]) -> Seen {
    let reg = registry();
    let (name, port) = host.split_once(':').map_or((host, 80), |(h, p)| (h, p.parse().unwrap()));
    let svc = reg.service_by_host(name, NS).unwrap_or_else(|| panic!("no service {name}")).clone();
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(), v.parse().unwrap());
    }
    let uri: http::Uri = path.parse().unwrap();
    let info = RequestInfo {
        context: Context::Mesh { service: &svc, port },
        source: None,
        method: &http::Method::GET,
        uri: &uri,
        authority: Some(host),
        scheme: "http",
        headers: &h,
    };
    let o = crate::routing::tests::observe(t, rng, &info);
    Seen {
        status: o.status,
        backend: o.service.map(|s| s.name.clone()),
        path: o.path,
        headers: o.headers,
        response_headers: o.response_headers,
        location: o.location,
    }
}

fn send(t: &RouteTable, host: &str, path: &str, headers: &[(&str, &str)]) -> Seen {
    send_with(t, &mut StdRng::seed_from_u64(7), host, path, headers)
}

fn all(h: &HeaderMap, name: &str) -> String {
    h.get_all(name).iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>().join(",")
}

// Beyond the conformance suite: what the spec says that upstream's mesh tests do not exercise.

fn route(name: &str, extra_meta: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\n  namespace: {NS}\n{extra_meta}spec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo}}]\n  rules:\n{rules}"
    )
}

fn forward_in(t: &RouteTable, reg: &Registry, rng: &mut StdRng, path: &str) -> Box<Forward> {
    let svc = reg.service_by_host("echo", NS).unwrap().clone();
    let uri: http::Uri = path.parse().unwrap();
    let h = HeaderMap::new();
    let info = RequestInfo {
        context: Context::Mesh { service: &svc, port: 80 },
        source: None,
        method: &http::Method::GET,
        uri: &uri,
        authority: Some("echo"),
        scheme: "http",
        headers: &h,
    };
    match t.route(&info, rng) {
        Decision::Forward(f) => f,
        d => panic!("{path}: {d:?}"),
    }
}

mod conformance;
mod consumer_routes;
mod explain;
mod grpc;
mod reference_grant;
mod rules;
