//! Any bytes as a routing ConfigMap file: parsing, Istio's per-object validation and compiling
//! against the Bookinfo registry must never panic, hang or allocate without bound. Compiling is
//! called directly, not through the agent's panic guard, so a panic is a finding.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mesh::{config::Config, registry::Registry, routing::RouteTable};

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| {
        let mut r = Registry::default();
        let yaml = include_str!("../../../deploy/bookinfo/local-registry.yaml");
        r.add_yaml(std::path::Path::new("local-registry.yaml"), yaml).expect("registry");
        r
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut config = Config::default();
    let _ = config.add_str("fuzz.yaml", &text);
    let (table, _rejected) = RouteTable::compile_admitting(&config, registry());
    let _ = table.warnings.len();
});
