use super::*;

/// The URI a try sends to `addr` for the downstream request target `target`.
fn try_uri(addr: &str, target: &str) -> Result<Uri, http::uri::InvalidUri> {
    let addr: SocketAddr = addr.parse().unwrap();
    let downstream: Uri = target.parse().unwrap();
    upstream_uri(super::super::lb::authority_of(addr).as_ref(), addr, &UpstreamPath::of(&downstream))
}

/// What every try used to send: the whole URI text, parsed.
fn parsed_whole(addr: SocketAddr, path: &str) -> Result<Uri, http::uri::InvalidUri> {
    format!("http://{addr}{path}").parse()
}

/// The same URI, component by component and as text, or an error for both.
fn assert_same(joined: Result<Uri, InvalidUri>, whole: Result<Uri, InvalidUri>, case: &str) {
    match (joined, whole) {
        (Ok(j), Ok(w)) => {
            assert_eq!(j.to_string(), w.to_string(), "{case}");
            assert_eq!(
                (j.scheme(), j.authority(), j.path_and_query()),
                (w.scheme(), w.authority(), w.path_and_query())
            );
        }
        (Err(_), Err(_)) => {}
        (j, w) => panic!("{case}: joined {j:?}, parsed whole {w:?}"),
    }
}

#[test]
fn upstream_uri_is_what_the_whole_text_parses_to() {
    // Around the parser's length limit: under it, at it and over it with the addresses below.
    let long = format!("/{}", "a".repeat(usize::from(u16::MAX) - 25));
    let addrs = ["10.1.2.3:8080", "[fd00::1:2]:9090", "[fe80::1%3]:80", "[::ffff:10.0.0.1]:1"];
    // Downstream request targets, as a server parses them.
    let targets = ["/", "/p?q=1&r", "*", "http://h/x?y", "h:80", "/a%2Fb?c=%20", "/?", long.as_str()];
    // Rewritten paths: any text.
    let rewritten = ["/r?q", "", "r", "?q", "/a#frag", "/a b", "//x", "/\u{e9}", long.as_str(), &long[1..]];
    for addr in addrs {
        let addr: SocketAddr = addr.parse().unwrap();
        let authority = super::super::lb::authority_of(addr);
        assert!(authority.is_some(), "{addr}");
        for target in targets {
            let path = UpstreamPath::of(&target.parse().unwrap());
            let whole = parsed_whole(addr, path.as_str());
            assert_same(upstream_uri(authority.as_ref(), addr, &path), whole, &format!("{addr} {target}"));
        }
        for text in rewritten {
            let path = UpstreamPath::from(text.to_owned());
            assert_same(
                upstream_uri(authority.as_ref(), addr, &path),
                parsed_whole(addr, text),
                &format!("{addr} {text}"),
            );
            // Without a cached authority, the whole text is parsed.
            assert_same(upstream_uri(None, addr, &path), parsed_whole(addr, text), &format!("{addr} {text}"));
        }
    }
}

#[test]
fn upstream_uri_is_the_endpoint_then_the_path_and_query() {
    let v4 = try_uri("10.1.2.3:8080", "/api/v1/items?id=7&sort=asc").unwrap();
    assert_eq!(v4.to_string(), "http://10.1.2.3:8080/api/v1/items?id=7&sort=asc");
    assert_eq!((v4.host(), v4.port_u16(), v4.query()), (Some("10.1.2.3"), Some(8080), Some("id=7&sort=asc")));

    let v6 = try_uri("[fd00::1:2]:9090", "/a/b?q=x%20y").unwrap();
    assert_eq!(v6.to_string(), "http://[fd00::1:2]:9090/a/b?q=x%20y");
    assert_eq!((v6.host(), v6.port_u16(), v6.path()), (Some("[fd00::1:2]"), Some(9090), "/a/b"));

    // An absolute-form target keeps only its path and query; no path at all is `/`.
    let abs = try_uri("10.1.2.3:80", "http://svc.ns:8080/x?y").unwrap();
    assert_eq!(abs.to_string(), "http://10.1.2.3:80/x?y");
    assert_eq!(try_uri("10.1.2.3:80", "svc.ns:8080").unwrap().to_string(), "http://10.1.2.3:80/");
}
