//! Routing engine cost: compiling 10k VirtualServices (target < 50 ms) and matching one request
//! with 10k loaded (exact header and prefix uri, the common cases, must not allocate).
use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc};

use criterion::{criterion_group, criterion_main, Criterion};
use mesh::{
    config::Config,
    registry::{AppProtocol, Registry, Service, ServicePort, TargetPort},
    routing::{Context, RequestInfo, RouteTable},
};
use rand::{rngs::StdRng, SeedableRng};

fn setup(n: u32) -> (Registry, Config) {
    let (reg, yaml) = setup_yaml(n);
    let config = Config::parse_str("bench.yaml", &yaml).expect("config");
    (reg, config)
}

fn setup_yaml(n: u32) -> (Registry, String) {
    let mut reg = Registry::default();
    let mut yaml = String::new();
    for i in 0..n {
        let name = format!("svc{i}");
        reg.services.push(Arc::new(Service {
            name: name.clone(),
            namespace: "default".into(),
            cluster_ip: Some(Ipv4Addr::from(0x0a60_0000 + i + 100)),
            ports: vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: TargetPort::Number(80),
                node_port: None,
                protocol: AppProtocol::Http,
            }],
            selector: BTreeMap::from([("app".to_string(), name.clone())]),
            ..Default::default()
        }));
        yaml += &format!(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}]\n  http:\n  - match:\n    - headers: {{end-user: {{exact: jason}}}}\n    route:\n    - destination: {{host: {name}}}\n  - match:\n    - uri: {{prefix: /api}}\n    route:\n    - destination: {{host: {name}}}\n      weight: 50\n    - destination: {{host: {name}}}\n      weight: 50\n"
        );
    }
    (reg, yaml)
}

fn bench(c: &mut Criterion) {
    // What a reload of a 10k-object ConfigMap costs the agent: YAML → objects (with positions),
    // Istio's per-object validation, admission, compile (issue target: < 1 s).
    let (reg, yaml) = setup_yaml(10_000);
    c.bench_function("reload 10k VirtualServices from YAML (parse, validate, admit, compile)", |b| {
        b.iter_with_large_drop(|| {
            let mut config = Config::default();
            let _ = config.add_str("bench.yaml", &yaml);
            let mut admission = mesh::admission::Admission::default();
            admission.admit(config, &reg).map(|a| a.table).expect("no panic")
        })
    });
    let (reg, config) = setup(10_000);
    // iter_with_large_drop: freeing the previous table is not part of compiling it.
    c.bench_function("compile 10k VirtualServices", |b| {
        b.iter_with_large_drop(|| RouteTable::compile(&config, &reg).expect("compile"))
    });
    c.bench_function("compile 10k services, no VirtualService", |b| {
        b.iter_with_large_drop(|| RouteTable::compile(&Config::empty(), &reg).expect("compile"))
    });
    let table = RouteTable::compile(&config, &reg).expect("compile");
    let svc = reg.services[5_000].clone();
    let method = http::Method::GET;
    let uri: http::Uri = "/api/books/1".parse().expect("uri");
    let mut jason = http::HeaderMap::new();
    jason.insert("end-user", http::HeaderValue::from_static("jason"));
    let anon = http::HeaderMap::new();
    let mut rng = StdRng::seed_from_u64(1);
    for (label, headers) in
        [("route: exact header match, 10k VS loaded", &jason), ("route: prefix uri + weighted, 10k VS loaded", &anon)]
    {
        c.bench_function(label, |b| {
            b.iter(|| {
                let info = RequestInfo {
                    context: Context::Mesh { service: &svc, port: 80 },
                    source: None,
                    method: &method,
                    uri: &uri,
                    authority: Some("svc5000"),
                    scheme: "http",
                    headers,
                };
                table.route(&info, &mut rng)
            })
        });
    }
}

// criterion_group! generates an undocumented `pub fn routing`; in a private module it is not
// exported, so `missing_docs` does not ask for a doc comment on macro output.
mod group {
    use super::*;
    criterion_group! {
        name = routing;
        config = Criterion::default().sample_size(20);
        targets = bench
    }
}
criterion_main!(group::routing);
