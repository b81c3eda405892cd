//! The CEL filter: what admission accepts and rejects, and how requests evaluate.
use super::*;

fn attrs() -> Attributes<'static> {
    Attributes {
        method: "GET",
        path: "/reviews/0?x=1",
        host: Some("reviews:9080"),
        scheme: "http",
        protocol: "HTTP/1.1",
        request_id: Some("r-1"),
        user_agent: Some("curl/8"),
        code: 503,
        ..Default::default()
    }
}

fn eval(expr: &str, a: &Attributes<'_>) -> bool {
    LogFilter::compile(expr).unwrap_or_else(|e| panic!("{expr}: {e}")).matches(a)
}

/// Istio's own examples (the Telemetry API reference, istio.io's access-log task, Envoy's
/// `ExpressionFilter` doc) parse.
#[test]
fn istio_and_envoy_doc_filters_parse() {
    for e in [
        "response.code >= 400",
        "response.code >= 500",
        "response.code == 200",
        "request.url_path.contains('v1beta3')",
        "(connection.mtls && request.headers['x-log-mtls'] == 'true') || request.url_path.contains('v1beta3')",
        "request.headers['user-agent'] == 'curl/7.68.0'",
        "xds.cluster_name == 'outbound|9080||reviews.default.svc.cluster.local'",
        "request.method in ['POST', 'PUT'] && !(response.code < 400)",
        "has(request.headers.foo) ? request.headers.foo == 'x' : false",
        "request.duration > duration('1s')",
        "size(request.path) > 10",
    ] {
        LogFilter::compile(e).unwrap_or_else(|err| panic!("{e}: {err}"));
    }
}

#[test]
fn garbage_is_rejected_with_its_position() {
    // The column is 1-based, at the token that breaks the syntax (here the end of the input).
    for (e, col) in
        [("response.code >=", 17), ("response.code >= 400 &&", 24), ("request.headers['x'", 20), (")++++", 1)]
    {
        let err = LogFilter::compile(e).map(|_| ()).expect_err(e).to_string();
        assert!(err.starts_with("must be a valid CEL expression, ERROR: <input>:1:"), "{e}: {err}");
        assert!(err.contains(&format!(":1:{col}:")), "{e}: {err}");
    }
    for e in ["", "   ", "response.code >= >= 1", "a b", "'unterminated", "1 +* 2", "foo(", "[1, 2"] {
        assert!(LogFilter::compile(e).is_err(), "{e:?} must not parse");
    }
}

/// The parser is a dependency's: odd input must be an error, never a panic (a panic would be
/// caught and turned into a rejection, but must not happen on what a user can type).
#[test]
fn odd_strings_never_panic_the_parser() {
    let pieces = [
        "",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        ".",
        "'",
        "\"",
        "\\",
        "`",
        "?",
        ":",
        "!",
        "-",
        "+",
        "*",
        "/",
        "%",
        "&&",
        "||",
        "==",
        "!=",
        ">=",
        "in",
        "has(",
        "1",
        "-9223372036854775808",
        "9223372036854775808",
        "1e999",
        "0x",
        "1u",
        "b'",
        "r'",
        "'''",
        "\"\"\"",
        "\u{0}",
        "\u{202e}",
        "é",
        "𝕏",
        "request",
        "headers",
        ".all(",
        "x,",
        "\n",
        "\t",
        " ",
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..3000 {
        let mut s = String::new();
        for _ in 0..(seed % 12) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            s.push_str(pieces[(seed % pieces.len() as u64) as usize]);
        }
        // Either outcome is fine; FilterError::ParserFailed is a panic caught.
        let r = LogFilter::compile(&s);
        assert!(!matches!(r, Err(FilterError::ParserFailed)), "the parser panicked on {s:?}");
        if let Ok(f) = r {
            let _ = f.matches(&attrs());
        }
    }
    // Deep nesting: refused or parsed, not a stack overflow.
    for n in [100, 1000, 5000] {
        let deep = format!("{}1{}", "(".repeat(n), ")".repeat(n));
        let r = LogFilter::compile(&deep);
        assert!(!matches!(r, Err(FilterError::ParserFailed)), "nesting {n}");
        let neg = format!("{}1", "!".repeat(n));
        assert!(!matches!(LogFilter::compile(&neg), Err(FilterError::ParserFailed)), "unary nesting {n}");
    }
    assert!(LogFilter::compile(&"a".repeat(MAX_EXPRESSION_LEN + 1)).is_err());
}

#[test]
fn requests_evaluate_over_envoy_attributes() {
    let a = attrs();
    assert!(eval("response.code >= 400", &a));
    assert!(!eval("response.code < 400", &a));
    assert!(eval("request.method == 'GET' && request.url_path == '/reviews/0'", &a));
    assert!(eval("request.path == '/reviews/0?x=1' && request.query == 'x=1'", &a));
    assert!(eval("request.host == 'reviews:9080' && request.scheme == 'http' && request.protocol == 'HTTP/1.1'", &a));
    assert!(eval("request.url_path.startsWith('/reviews') && request.id == 'r-1'", &a));
    assert!(eval("request.method in ['GET', 'HEAD']", &a));
    assert!(eval("!connection.mtls", &a));
    // Not a boolean: not logged.
    assert!(!eval("response.code", &a));
}

#[test]
fn headers_flags_and_addresses() {
    let mut req = http::HeaderMap::new();
    req.insert("x-log", http::HeaderValue::from_static("yes"));
    req.append("x-multi", http::HeaderValue::from_static("a"));
    req.append("x-multi", http::HeaderValue::from_static("b"));
    let mut resp = http::HeaderMap::new();
    resp.insert("content-type", http::HeaderValue::from_static("text/html"));
    let a = Attributes {
        request_headers: Some(&req),
        response_headers: Some(&resp),
        flags: 0x2 | 0x8000,
        source: Some("10.0.0.7:41000".parse().expect("addr")),
        upstream: Some("10.244.0.13:9080".parse().expect("addr")),
        cluster: Some("outbound|9080|v2|reviews.default.svc.cluster.local"),
        ..attrs()
    };
    let f = LogFilter::compile("request.headers['x-log'] == 'yes'").expect("parses");
    assert!(f.wants_request_headers());
    assert!(f.matches(&a));
    assert!(eval("request.headers['x-multi'] == 'a,b'", &a));
    assert!(eval("response.headers['content-type'].startsWith('text/')", &a));
    assert!(eval("response.flags == 32770", &a));
    assert!(eval("source.address == '10.0.0.7:41000' && source.port == 41000", &a));
    assert!(eval("upstream.address == '10.244.0.13:9080' && upstream.port == 9080", &a));
    assert!(eval("xds.cluster_name.endsWith('reviews.default.svc.cluster.local')", &a));
    // A header that is not there is an error: not logged, and its negation is not logged either.
    assert!(!eval("request.headers['x-absent'] == 'yes'", &a));
    assert!(!eval("request.headers['x-absent'] != 'yes'", &a));
    assert!(eval("!('x-absent' in request.headers)", &a));
    assert!(!LogFilter::compile("response.code >= 400").expect("parses").wants_request_headers());
}

/// What Envoy reports absent, or this proxy does not have, makes the expression an error:
/// nothing is logged, whichever way the comparison goes.
#[test]
fn absent_attributes_and_errors_are_false() {
    let left = Attributes { code: 0, ..attrs() };
    assert!(!eval("response.code >= 400", &left));
    assert!(!eval("response.code < 400", &left));
    let a = attrs();
    for e in [
        "request.duration > duration('1s')",
        "destination.address == '10.96.0.12:9080'",
        "upstream.address == 'x'",
        "xds.cluster_name == 'x'",
        "request.headers['x'] == 'y'",
        "response.code / 0 == 1",
        "response.code == 'x'",
        "unknown_variable",
    ] {
        assert!(!eval(e, &a), "{e}");
    }
}
