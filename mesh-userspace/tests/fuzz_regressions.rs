//! Every input the fuzzer ever crashed on (`cargo xtask fuzz` keeps them in fuzz/regressions/)
//! goes through parsing, validation and compiling again, with no panic.
use mesh::{config::Config, registry::Registry, routing::RouteTable};

#[test]
fn fuzzer_findings_stay_fixed() {
    let mut registry = Registry::default();
    let yaml = include_str!("../../deploy/bookinfo/local-registry.yaml");
    registry.add_yaml(std::path::Path::new("local-registry.yaml"), yaml).expect("registry");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("fuzz/regressions exists").flatten() {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let data = std::fs::read(e.path()).expect("readable");
        let mut config = Config::default();
        let _ = config.add_str("fuzz.yaml", &String::from_utf8_lossy(&data));
        let _ = RouteTable::compile_admitting(&config, &registry);
        n += 1;
    }
    assert!(n > 0, "no regression inputs in {}", dir.display());
}
