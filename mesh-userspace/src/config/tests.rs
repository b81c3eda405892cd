use super::*;

const SEEDS: &[(&str, &str)] = &[
    ("destination-rule-all.yaml", include_str!("../../../deploy/bookinfo/networking/destination-rule-all.yaml")),
    ("virtual-service-all-v1.yaml", include_str!("../../../deploy/bookinfo/networking/virtual-service-all-v1.yaml")),
    (
        "virtual-service-reviews-test-v2.yaml",
        include_str!("../../../deploy/bookinfo/networking/virtual-service-reviews-test-v2.yaml"),
    ),
    (
        "virtual-service-reviews-test-delay.yaml",
        include_str!("../../../deploy/bookinfo/networking/virtual-service-reviews-test-delay.yaml"),
    ),
    (
        "virtual-service-reviews-50-v3.yaml",
        include_str!("../../../deploy/bookinfo/networking/virtual-service-reviews-50-v3.yaml"),
    ),
    (
        "virtual-service-reviews-v3.yaml",
        include_str!("../../../deploy/bookinfo/networking/virtual-service-reviews-v3.yaml"),
    ),
    ("bookinfo-gateway.yaml", include_str!("../../../deploy/bookinfo/networking/bookinfo-gateway.yaml")),
];

#[test]
fn every_seed_file_loads_verbatim() {
    let expect = [(0, 4, 0), (4, 0, 0), (1, 0, 0), (1, 0, 0), (1, 0, 0), (1, 0, 0), (1, 0, 1)];
    for ((file, text), (vs, dr, gw)) in SEEDS.iter().zip(expect) {
        let c = Config::parse_str(file, text).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!((c.virtual_services.len(), c.destination_rules.len(), c.gateways.len()), (vs, dr, gw), "{file}");
    }
}

#[test]
fn all_api_versions_are_accepted_and_others_rejected() {
    for v in ["v1alpha3", "v1beta1", "v1"] {
        let y = format!(
            "apiVersion: networking.istio.io/{v}\nkind: VirtualService\nmetadata: {{name: r}}\nspec: {{hosts: [r], http: [{{route: [{{destination: {{host: r}}}}]}}]}}\n"
        );
        Config::parse_str("v.yaml", &y).unwrap_or_else(|e| panic!("{v}: {e}"));
    }
    let e = Config::parse_str(
        "v.yaml",
        "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [r]}\n",
    )
    .unwrap_err();
    assert_eq!((e.0[0].line, e.0[0].path.as_str()), (1, "apiVersion"), "{e}");
    assert!(e.0[0].message.contains("v1alpha3"), "{e}");
}

#[test]
fn unknown_field_is_reported_with_line_column_and_path() {
    let y = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts:\n  - reviews\n  http:\n  - route:\n    - destination:\n        host: reviews\n      wieght: 50\n";
    let e = Config::parse_str("vs.yaml", y).unwrap_err();
    let err = &e.0[0];
    assert_eq!((err.line, err.column), (12, 7), "{e}");
    assert_eq!(err.path, "spec.http[0].route[0].wieght", "{e}");
    assert!(err.message.contains("unknown field `wieght`") && err.message.contains("weight"), "{e}");
    assert!(e.to_string().starts_with("vs.yaml:12:7: spec.http[0].route[0].wieght: "), "{e}");
}

#[test]
fn errors_in_later_documents_keep_file_line_numbers() {
    let y = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\nspec: {host: a}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: b}\nspec:\n  host: b\n  subsets: 7\n";
    let e = Config::parse_str("dr.yaml", y).unwrap_err();
    assert_eq!(e.0[0].line, 11, "{e}");
    assert_eq!(e.0[0].path, "spec.subsets", "{e}");
}

#[test]
fn invalid_yaml_points_at_the_syntax_error() {
    let e = Config::parse_str("bad.yaml", "apiVersion: v1\nkind: [unclosed\n").unwrap_err();
    assert_eq!(e.0[0].file, "bad.yaml");
    assert!(e.0[0].line >= 2, "{e}");
    assert!(e.0[0].message.contains("invalid YAML"), "{e}");
}

#[test]
fn other_kinds_are_skipped_not_errors() {
    let y = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e}\nspec: {}\n";
    let c = Config::parse_str("mixed.yaml", y).unwrap();
    assert_eq!(c.skipped.len(), 2);
    assert!(c.virtual_services.is_empty());
}

#[test]
fn same_name_replaces_like_kubectl_apply() {
    let mut c = Config::empty();
    c.add_str("a.yaml", SEEDS[1].1).unwrap();
    c.add_str("b.yaml", SEEDS[2].1).unwrap();
    assert_eq!(c.virtual_services.len(), 4);
    let reviews = c.virtual_services.iter().find(|v| v.name == "reviews").unwrap();
    assert_eq!(&*reviews.at.file, "b.yaml");
    assert_eq!(reviews.spec.http.len(), 2);
}

#[test]
fn locator_finds_fields_in_block_and_flow_style() {
    let y = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r, subset: v1}\n      weight: 60\n    - destination: {host: r, subset: v2}\n      weight: 30\n";
    let c = Config::parse_str("w.yaml", y).unwrap();
    let at = &c.virtual_services[0].at;
    assert_eq!(at.at("spec.http[0].route[1].weight"), (11, 7));
    assert_eq!(at.at("spec.http[0].route[0].destination.subset"), (8, 30));
    // An unknown path falls back to its nearest known ancestor.
    assert_eq!(at.at("spec.http[0].route[1].nothing").0, 10);
}

#[test]
fn durations_parse_like_istio() {
    for (s, ms) in [
        ("7s", 7000),
        ("0.5s", 500),
        ("100ms", 100),
        ("1m", 60_000),
        ("1h", 3_600_000),
        ("1m30s", 90_000),
        ("1.5s", 1500),
    ] {
        assert_eq!(parse_duration(s).unwrap().as_millis(), ms, "{s}");
    }
    for bad in ["", "7", "7x", "s", "-1s", "1.2.3s", ".s", "1..2s"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
    }
    // Exact, not floating point: 0.1s + 0.2s is 300 ms to the nanosecond.
    assert_eq!(parse_duration("0.1s200ms").unwrap(), std::time::Duration::from_millis(300));
    assert_eq!(parse_duration("1.000000001s").unwrap(), std::time::Duration::new(1, 1));
    assert_eq!(parse_duration("2562047h").unwrap().as_secs(), 2_562_047 * 3600);
}

#[test]
fn out_of_range_durations_are_errors_not_panics() {
    for huge in [
        "99999999999999999999s",
        "3000000000000000h",
        "2562048h",
        "9223372036854775808ns",
        "340282366920938463463374607431768211456s",
        "1e30s",
    ] {
        let r = parse_duration(huge);
        assert!(r.is_err(), "{huge:?} should be rejected, got {r:?}");
    }
    assert_eq!(parse_duration("9223372036854775807ns").unwrap(), crate::config::MAX_DURATION);
    assert_eq!(parse_duration("0000000000000000000000000000000000000000001s").unwrap().as_secs(), 1);
    let long = "9".repeat(100_000) + "s";
    let msg = parse_duration(&long).unwrap_err();
    assert!(msg.len() < 200, "the message repeats the whole value: {} bytes", msg.len());
}

#[test]
fn istio_duration_rule() {
    use crate::config::check_istio_duration;
    for ok in ["1ms", "1s", "0.5s", "1h"] {
        assert!(check_istio_duration(parse_duration(ok).unwrap()).is_ok(), "{ok}");
    }
    for bad in ["0s", "999us", "1500us", "1.0001s"] {
        assert!(check_istio_duration(parse_duration(bad).unwrap()).is_err(), "{bad}");
    }
}

#[test]
fn load_dir_reads_a_configmap_volume() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("..2026_11_24");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("vs.yaml"), SEEDS[2].1).unwrap();
    std::fs::write(data.join("dr.yaml"), SEEDS[0].1).unwrap();
    std::os::unix::fs::symlink("..2026_11_24", dir.path().join("..data")).unwrap();
    for f in ["vs.yaml", "dr.yaml"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("notes.txt"), "not yaml").unwrap();
    let c = Config::load_dir(dir.path()).unwrap();
    assert_eq!((c.virtual_services.len(), c.destination_rules.len()), (1, 4));
    assert_eq!(c.version.as_deref(), Some("..2026_11_24"));
    // Mid-swap, as the kubelet leaves it for a moment: `..data` already names the new version,
    // which adds a Gateway and drops the DestinationRule, but the top-level links are the old
    // ones. What is read is the new version, whole.
    let next = dir.path().join("..2026_11_25");
    std::fs::create_dir(&next).unwrap();
    std::fs::write(next.join("vs.yaml"), SEEDS[2].1).unwrap();
    std::fs::write(next.join("gw.yaml"), SEEDS[6].1).unwrap();
    std::os::unix::fs::symlink("..2026_11_25", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    let c = Config::load_dir(dir.path()).unwrap();
    assert_eq!((c.virtual_services.len(), c.destination_rules.len(), c.gateways.len()), (2, 0, 1));
    assert_eq!(c.version.as_deref(), Some("..2026_11_25"));
    // Errors name the file as mounted, not through `..data`.
    std::fs::write(next.join("bad.yaml"), "apiVersion: networking.istio.io/v1\nkind: Gateway\n").unwrap();
    let e = Config::load_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains(&format!("{}/bad.yaml:", dir.path().display())), "{e}");
}

#[tokio::test]
async fn watcher_delivers_configmap_swaps_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut rx = watch::spawn_watcher(dir.path().to_path_buf()).unwrap();
    // A kubelet-style swap: new timestamped dir, then an atomic rename of ..data.
    let gen = dir.path().join("..gen1");
    std::fs::create_dir(&gen).unwrap();
    std::fs::write(gen.join("vs.yaml"), SEEDS[5].1).unwrap();
    std::os::unix::fs::symlink("..gen1", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/vs.yaml", dir.path().join("vs.yaml")).unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!(got.unwrap().virtual_services.len(), 1);
    std::fs::write(
        dir.path().join("broken.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec: {hostz: []}\n",
    )
    .unwrap();
    // The whole directory is delivered; the bad document is a reject beside the good one.
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(got.virtual_services.len(), 1);
    assert_eq!(got.rejected.len(), 1);
    let e = crate::config::ConfigErrors(got.rejected[0].errors.clone()).to_string();
    assert!(e.contains("broken.yaml:4:") && e.contains("hostz"), "{e}");
    assert_eq!(got.rejected[0].object.as_ref().map(|o| o.name.as_str()), Some("x"));
}
