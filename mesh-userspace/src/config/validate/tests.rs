//! Unit tests of the helpers; whole objects are checked against Istio's verdicts in tests/istio_verdicts.rs.
use super::load_balancer::{is_prime, localities};
use super::*;

#[test]
fn domains_follow_istio() {
    assert!(wildcard_domain("foo.bar").is_ok());
    assert!(wildcard_domain("*.bar.com").is_ok());
    assert!(wildcard_domain("*").is_ok());
    assert!(wildcard_domain("Foo.Bar").is_ok(), "Istio's label pattern allows upper case");
    // Go checks the labels after the first one as a domain of their own, and so do we.
    assert!(wildcard_domain("foo.*.com").unwrap_err().contains("label \"*\" invalid"));
    assert!(wildcard_domain("foo*.bar.com").unwrap_err().contains("foo*.bar.com"));
    assert!(wildcard_domain("1.2.3.4").unwrap_err().contains("all-numeric"));
    assert!(wildcard_domain(&"a".repeat(256)).unwrap_err().contains("too long"));
    assert!(wildcard_domain("").unwrap_err().contains("empty domain name"));
    assert!(hosts_match("*.foo.bar", "*.bar"));
    assert!(hosts_match("a.b", "a.b"));
    assert!(!hosts_match("a.b", "c.b"));
    assert!(host_subset_of("a.foo.com", "*.foo.com"));
    assert!(!host_subset_of("*.foo.com", "a.foo.com"));
}

#[test]
fn header_values_follow_envoys_format_rules() {
    for ok in ["foo", "%HOSTNAME%", "100%%", "prefix %HOSTNAME% suffix", "%REQ(x-a)%", "%F([\"a\", \"b\"])%"] {
        assert!(header_value(ok).is_ok(), "{ok}");
    }
    for bad in ["abc%123", "%START_TIME%%", "50%", "a\u{1}b"] {
        assert!(header_value(bad).is_err(), "{bad}");
    }
}

#[test]
fn messages_cut_long_values() {
    let long = "x".repeat(10_000_000);
    let e = wildcard_domain(&long).unwrap_err();
    assert!(e.len() < 300, "{} bytes", e.len());
    let e = header_value(&format!("{long}%")).unwrap_err();
    assert!(e.len() < 400, "{} bytes", e.len());
}

#[test]
fn localities_reject_overlaps_and_inner_wildcards() {
    assert!(localities(&["us-east/*", "us-west"]).is_ok());
    assert!(localities(&["*/zone"]).unwrap_err().contains("must be in the end"));
    assert!(localities(&["us-east", "us-east/a"]).unwrap_err().contains("overlap"));
    assert!(localities(&["us-east/"]).unwrap_err().contains("empty"));
}

#[test]
fn jwt_claim_names_never_split_a_character() {
    assert!(is_jwt_claim("@request.auth.claims.sub"));
    assert!(is_jwt_claim("@REQUEST.auth.claims[a][b]"));
    assert!(!is_jwt_claim("@request.auth.claims"));
    assert!(!is_jwt_claim("@request.auth.claimé.x"));
    assert!(!is_jwt_claim("é@request.auth.claims.x"));
}

#[test]
fn maglev_primes() {
    assert!(is_prime(65537) && is_prime(2) && !is_prime(65536) && !is_prime(9));
}
