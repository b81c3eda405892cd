//! The conformance suite's mesh HTTPRoute tests, request by request.
use super::*;

#[test]
fn mesh_basic_no_route_is_plain_kubernetes() {
    let t = table_of(&[]);
    let s = send(&t, "echo", "/", &[]);
    assert_eq!((s.status, s.backend.as_deref()), (200, Some("echo")));
}

#[test]
fn mesh_ports() {
    let t = table_of(&[fixture!("mesh-ports.yaml")]);
    let s = send(&t, "echo-v1", "/", &[]);
    assert_eq!((s.status, s.backend.as_deref()), (200, Some("echo-v1")));
    assert_eq!(all(&s.response_headers, "x-header-set"), "v1");
    // The route is bound to port 80 only: 8080 is routed as if there were none.
    let s = send(&t, "echo-v1:8080", "/", &[]);
    assert_eq!((s.status, s.backend.as_deref()), (200, Some("echo-v1")));
    assert!(s.response_headers.get("x-header-set").is_none());
    for host in ["echo-v2", "echo-v2:8080"] {
        let s = send(&t, host, "/", &[]);
        assert_eq!((s.status, s.backend.as_deref()), (200, Some("echo-v2")), "{host}");
        assert_eq!(all(&s.response_headers, "x-header-set"), "v2", "{host}");
    }
}

#[test]
fn mesh_traffic_split() {
    let t = table_of(&[fixture!("mesh-split.yaml")]);
    assert_eq!(send(&t, "echo", "/v1", &[]).backend.as_deref(), Some("echo-v1"));
    assert_eq!(send(&t, "echo", "/v2", &[]).backend.as_deref(), Some("echo-v2"));
}

#[test]
fn mesh_httproute_matching() {
    let t = table_of(&[fixture!("httproute-matching.yaml")]);
    for (path, headers, backend) in [
        ("/", &[][..], "echo-v1"),
        ("/example", &[], "echo-v1"),
        ("/", &[("Version", "one")], "echo-v1"),
        ("/v2", &[], "echo-v2"),
        ("/v2/example", &[], "echo-v2"),
        ("/", &[("Version", "two")], "echo-v2"),
        ("/v2/", &[], "echo-v2"),
        // Not a path segment prefix, so it does not match /v2.
        ("/v2example", &[], "echo-v1"),
        ("/foo/v2/example", &[], "echo-v1"),
    ] {
        let s = send(&t, "echo", path, headers);
        assert_eq!(s.backend.as_deref(), Some(backend), "{path} {headers:?}");
        assert_eq!(s.path, path);
    }
}

#[test]
fn mesh_httproute_query_param_matching() {
    let t = table_of(&[fixture!("httproute-query-param-matching.yaml")]);
    for (path, headers, want) in [
        ("/?animal=whale", &[][..], Some("echo-v1")),
        ("/?animal=dolphin", &[], Some("echo-v2")),
        ("/?animal=whale&otherparam=irrelevant", &[], Some("echo-v1")),
        ("/?animal=dolphin&color=yellow", &[], Some("echo-v2")),
        ("/?color=blue", &[], None),
        ("/?animal=dog", &[], None),
        ("/?animal=whaledolphin", &[], None),
        ("/", &[], None),
        ("/path1?animal=whale", &[], Some("echo-v1")),
        ("/?animal=whale", &[("version", "one")], Some("echo-v2")),
        ("/path3?animal=shark", &[], Some("echo-v1")),
        ("/path4?animal=kraken", &[("version", "three")], Some("echo-v1")),
        ("/?animal=shark", &[], None),
        ("/path4?animal=kraken", &[], None),
        // Precedence: the longer path prefix beats a query match.
        ("/path5?animal=hydra", &[], Some("echo-v1")),
    ] {
        let s = send(&t, "echo", path, headers);
        match want {
            Some(b) => assert_eq!((s.status, s.backend.as_deref()), (200, Some(b)), "{path} {headers:?}"),
            None => assert_eq!(s.status, 404, "{path} {headers:?}: {s:?}"),
        }
    }
}

#[test]
fn mesh_httproute_weight_70_30() {
    let t = table_of(&[fixture!("httproute-weight.yaml")]);
    // Upstream sends 500 requests and allows ±5 % per backend.
    let mut rng = StdRng::seed_from_u64(1);
    let n = 500;
    let v1 = (0..n).filter(|_| send_with(&t, &mut rng, "echo", "/", &[]).backend.as_deref() == Some("echo-v1")).count();
    let share = v1 as f64 / n as f64;
    assert!((share - 0.7).abs() <= 0.05, "echo-v1 got {share}");
}

#[test]
fn mesh_httproute_simple_same_namespace() {
    let t = table_of(&[fixture!("httproute-simple-same-namespace.yaml")]);
    let s = send(&t, "echo", "/", &[]);
    assert_eq!((s.status, s.backend.as_deref()), (200, Some("echo-v1")));
}

#[test]
fn mesh_httproute_request_header_modifier() {
    let t = table_of(&[fixture!("httproute-request-header-modifier.yaml")]);
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (
            "/set",
            &[("Some-Other-Header", "val")],
            &[("Some-Other-Header", "val"), ("X-Header-Set", "set-overwrites-values")],
            &[],
        ),
        (
            "/set",
            &[("Some-Other-Header", "val"), ("X-Header-Set", "some-other-value")],
            &[("Some-Other-Header", "val"), ("X-Header-Set", "set-overwrites-values")],
            &[],
        ),
        (
            "/add",
            &[("Some-Other-Header", "val")],
            &[("Some-Other-Header", "val"), ("X-Header-Add", "add-appends-values")],
            &[],
        ),
        (
            "/add",
            &[("Some-Other-Header", "val"), ("X-Header-Add", "some-other-value")],
            &[("Some-Other-Header", "val"), ("X-Header-Add", "some-other-value,add-appends-values")],
            &[],
        ),
        ("/remove", &[("X-Header-Remove", "val")], &[], &["X-Header-Remove"]),
        (
            "/multiple",
            &[
                ("X-Header-Set-2", "set-val-2"),
                ("X-Header-Add-2", "add-val-2"),
                ("X-Header-Remove-2", "remove-val-2"),
                ("Another-Header", "another-header-val"),
            ],
            &[
                ("X-Header-Set-1", "header-set-1"),
                ("X-Header-Set-2", "header-set-2"),
                ("X-Header-Add-1", "header-add-1"),
                ("X-Header-Add-2", "add-val-2,header-add-2"),
                ("X-Header-Add-3", "header-add-3"),
                ("Another-Header", "another-header-val"),
            ],
            &["X-Header-Remove-1", "X-Header-Remove-2"],
        ),
        (
            "/case-insensitivity",
            &[
                ("x-header-set", "original-val-set"),
                ("x-header-add", "original-val-add"),
                ("x-header-remove", "original-val-remove"),
                ("Another-Header", "another-header-val"),
            ],
            &[
                ("X-Header-Set", "header-set"),
                ("X-Header-Add", "original-val-add,header-add"),
                ("Another-Header", "another-header-val"),
            ],
            &["x-header-remove", "X-Header-Remove"],
        ),
    ];
    for (path, sent, want, absent) in cases {
        let s = send(&t, "echo", path, sent);
        assert_eq!(s.backend.as_deref(), Some("echo-v1"), "{path}");
        assert_eq!(s.path, *path);
        for (k, v) in *want {
            assert_eq!(all(&s.headers, k), *v, "{path}: {k}");
        }
        for k in *absent {
            assert!(s.headers.get(k.to_ascii_lowercase()).is_none(), "{path}: {k} present");
        }
    }
}

#[test]
fn mesh_httproute_rewrite_path() {
    let t = table_of(&[fixture!("httproute-rewrite-path.yaml")]);
    for (path, want) in [
        ("/prefix/one/two", "/one/two"),
        ("/strip-prefix/three", "/three"),
        ("/strip-prefix", "/"),
        ("/full/one/two", "/one"),
    ] {
        let s = send(&t, "echo", path, &[]);
        assert_eq!((s.backend.as_deref(), s.path.as_str()), (Some("echo-v1"), want), "{path}");
    }
    let sent =
        [("X-Header-Remove", "remove-val"), ("X-Header-Add-Append", "append-val-1"), ("X-Header-Set", "set-val")];
    for (path, want) in [
        ("/full/rewrite-path-and-modify-headers/test", "/test"),
        ("/prefix/rewrite-path-and-modify-headers/one", "/prefix/one"),
    ] {
        let s = send(&t, "echo", path, &sent);
        assert_eq!((s.backend.as_deref(), s.path.as_str()), (Some("echo-v1"), want), "{path}");
        assert_eq!(all(&s.headers, "x-header-add"), "header-val-1");
        assert_eq!(all(&s.headers, "x-header-add-append"), "append-val-1,header-val-2");
        assert_eq!(all(&s.headers, "x-header-set"), "set-overwrites-values");
        assert!(s.headers.get("x-header-remove").is_none());
    }
}

/// (path, status, Location) for the redirect tests: upstream checks the parts of Location it
/// names (scheme, host, port, path); the whole Location is asserted here.
fn redirects(file: (&str, &str), cases: &[(&str, u16, &str)]) {
    let t = table_of(&[file]);
    for (path, status, location) in cases {
        let s = send(&t, "echo", path, &[]);
        assert_eq!((s.status, s.location.as_deref()), (*status, Some(*location)), "{}: {path}", file.0);
    }
}

#[test]
fn mesh_httproute_redirect_host_and_status() {
    redirects(
        fixture!("httproute-redirect-host-and-status.yaml"),
        &[
            ("/hostname-redirect", 302, "http://example.org/hostname-redirect"),
            ("/host-and-status", 301, "http://example.org/host-and-status"),
        ],
    );
}

#[test]
fn mesh_httproute_redirect_path() {
    redirects(
        fixture!("httproute-redirect-path.yaml"),
        &[
            ("/original-prefix/lemon", 302, "http://echo/replacement-prefix/lemon"),
            ("/full/path/original", 302, "http://echo/full-path-replacement"),
            ("/path-and-host", 302, "http://example.org/replacement-prefix"),
            ("/path-and-status", 301, "http://echo/replacement-prefix"),
            ("/full-path-and-host", 302, "http://example.org/replacement-full"),
            ("/full-path-and-status", 301, "http://echo/replacement-full"),
        ],
    );
}

#[test]
fn mesh_httproute_redirect_port() {
    redirects(
        fixture!("httproute-redirect-port.yaml"),
        &[
            ("/port", 302, "http://echo:8083/port"),
            ("/port-and-host", 302, "http://example.org:8083/port-and-host"),
            ("/port-and-status", 301, "http://echo:8083/port-and-status"),
            ("/port-and-host-and-status", 302, "http://example.org:8083/port-and-host-and-status"),
        ],
    );
}

#[test]
fn mesh_httproute_redirect_scheme() {
    redirects(
        fixture!("httproute-redirect-scheme.yaml"),
        &[
            ("/scheme", 302, "https://echo/scheme"),
            ("/scheme-and-host", 302, "https://example.org/scheme-and-host"),
            ("/scheme-and-status", 301, "https://echo/scheme-and-status"),
            ("/scheme-and-host-and-status", 302, "https://example.org/scheme-and-host-and-status"),
        ],
    );
}

#[test]
fn mesh_httproute_303_307_308_redirects() {
    redirects(fixture!("httproute-303-redirect.yaml"), &[("/redirect", 303, "http://echo/redirect")]);
    redirects(fixture!("httproute-307-redirect.yaml"), &[("/temporary", 307, "http://echo/temporary")]);
    redirects(fixture!("httproute-308-redirect.yaml"), &[("/permanent", 308, "http://echo/permanent")]);
}
