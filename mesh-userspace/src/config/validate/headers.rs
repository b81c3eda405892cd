//! Header names and values (`ValidateHTTPHeader*`) and string matches (`validateStringMatch*`).
use super::{q, Validation};
use crate::config::{cut, Headers, StringMatch};

/// RFC 7230 token characters, Istio's `validHeaderNameRegex`.
pub(super) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

/// `jwt.ToRoutingClaim(name).Match`: `@request.auth.claims.x` or `@request.auth.claims[x]`.
pub fn is_jwt_claim(name: &str) -> bool {
    const P: &str = "@request.auth.claims";
    // Compared as bytes: slicing the str at P.len() could split a multi-byte character.
    if name.len() < P.len() || !name.as_bytes()[..P.len()].eq_ignore_ascii_case(P.as_bytes()) {
        return false;
    }
    // The first P.len() bytes are ASCII, so P.len() is a character boundary.
    let rest = &name[P.len()..];
    (rest.starts_with('.') && rest.len() > 1) || (rest.starts_with('[') && rest.ends_with(']') && rest.len() > 2)
}

/// The pseudo headers a match may name.
pub const PSEUDO_HEADERS: &[&str] = &[":method", ":scheme", ":authority", ":path", ":status"];

pub(super) fn match_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if is_jwt_claim(name) || PSEUDO_HEADERS.contains(&name) || is_token(name) {
        return Ok(());
    }
    Err(format!("header name {} is not a valid header name", cut(name, 60)))
}

pub(super) fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

/// `ValidateHTTPHeaderWithAuthorityOperationName`: request add/set.
fn header_name_with_authority(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if name.starts_with(':') && !is_authority_header(name) {
        return Err(format!("invalid header {}: header cannot have \":\" prefix", q(name)));
    }
    Ok(())
}

/// `ValidateHTTPHeaderOperationName`: request remove and every response operation.
fn header_operation_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if name.eq_ignore_ascii_case("host") {
        return Err(format!("invalid header {}: cannot set Host header", q(name)));
    }
    if name.starts_with(':') {
        return Err(format!("invalid header {}: header cannot have \":\" prefix", q(name)));
    }
    Ok(())
}

/// `ValidateHTTPHeaderValue`: no control characters, and `%` only as `%%` or around an Envoy
/// `%COMMAND%` / `%COMMAND(args)%` (header_value_validator.go, state for state).
pub fn header_value(value: &str) -> Result<(), String> {
    if value.bytes().any(|c| (c <= 0x08) || (0x0a..=0x1f).contains(&c) || c == 0x7f) {
        return Err(format!("header value configuration {} is invalid", q(value)));
    }
    #[derive(PartialEq)]
    enum S {
        Literal,
        VarName,
        ExpectArray,
        ExpectString,
        Str,
        DelimOrEnd,
        ArgsEnd,
        VarEnd,
    }
    let b = value.as_bytes();
    let mut state = S::Literal;
    let mut pos = 0;
    let err = |m: &str| Err(format!("header value configuration: invalid header configuration. {m}"));
    while pos < b.len() {
        let ch = b[pos];
        let has_next = pos + 1 < b.len();
        match state {
            S::Literal => {
                if ch == b'%' {
                    if !has_next {
                        return err("Un-escaped %");
                    }
                    if b[pos + 1] == b'%' {
                        pos += 1;
                    } else {
                        state = S::VarName;
                    }
                }
            }
            S::VarName => {
                if ch == b'%' {
                    state = S::Literal;
                } else if ch == b'(' {
                    state = S::ExpectArray;
                }
            }
            S::ExpectArray => {
                if ch == b'[' {
                    state = S::ExpectString;
                } else if ch != b' ' {
                    state = S::Str;
                }
            }
            S::DelimOrEnd => {
                if ch == b',' {
                    state = S::ExpectString;
                } else if ch == b']' {
                    state = S::ArgsEnd;
                } else if ch != b' ' {
                    return err("Expecting ',', ']', or whitespace");
                }
            }
            S::ExpectString => {
                if ch == b'"' {
                    state = S::Str;
                } else if ch != b' ' {
                    return err("Expecting '\"'");
                }
            }
            S::Str => {
                if ch == b'\\' {
                    if !has_next {
                        return err("Un-terminated backslash in JSON string");
                    }
                    pos += 1;
                } else if ch == b')' {
                    state = S::VarEnd;
                } else if ch == b'"' {
                    state = S::DelimOrEnd;
                }
            }
            S::ArgsEnd => {
                if ch == b')' {
                    state = S::VarEnd;
                } else if ch != b' ' {
                    return err("Expecting ')' or whitespace");
                }
            }
            S::VarEnd => {
                if ch == b'%' {
                    state = S::Literal;
                } else if ch != b' ' {
                    return err("Expecting '%' or whitespace after");
                }
            }
        }
        pos += 1;
    }
    if state != S::Literal {
        return Err(format!(
            "header value configuration: invalid header configuration. Un-terminated variable expression {}",
            q(value)
        ));
    }
    Ok(())
}

pub(super) fn header_operations(v: &mut Validation, base: &str, h: &Headers) {
    if let Some(r) = &h.request {
        for (which, map) in [("add", &r.add), ("set", &r.set)] {
            for (name, val) in map {
                let p = format!("{base}.request.{which}.{name}");
                v.check(p.clone(), header_name_with_authority(name));
                v.check(p, header_value(val));
            }
        }
        for (i, name) in r.remove.iter().enumerate() {
            v.check(format!("{base}.request.remove[{i}]"), header_operation_name(name));
        }
    }
    if let Some(r) = &h.response {
        for (which, map) in [("add", &r.add), ("set", &r.set)] {
            for (name, val) in map {
                let p = format!("{base}.response.{which}.{name}");
                v.check(p.clone(), header_operation_name(name));
                v.check(p, header_value(val));
            }
        }
        for (i, name) in r.remove.iter().enumerate() {
            v.check(format!("{base}.response.remove[{i}]"), header_operation_name(name));
        }
    }
}

/// The CRD's oneOf on StringMatch: at most one of exact, prefix, regex.
fn string_match_one_of(sm: &StringMatch) -> Result<(), String> {
    let n = [sm.exact.is_some(), sm.prefix.is_some(), sm.regex.is_some()].iter().filter(|b| **b).count();
    if n > 1 {
        return Err("must validate one and only one schema (oneOf): set only one of exact, prefix, regex".into());
    }
    Ok(())
}

/// `validateStringRegexp`: at most 1024 bytes, RE2 syntax.
pub(super) fn regex_syntax(re: &str, where_: &str) -> Result<(), String> {
    if re.len() > 1024 {
        return Err(format!("{where_:?}: regex is too large, max length allowed is 1024"));
    }
    // The regex crate's syntax is RE2's (no look-around, no backreferences).
    match regex::Regex::new(re) {
        Ok(_) => Ok(()),
        Err(e) => {
            let e = e.to_string();
            let last = e.lines().last().unwrap_or("").trim();
            Err(format!(
                "{where_:?}: error parsing regexp: {}; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)",
                cut(last, 80)
            ))
        }
    }
}

/// `validateStringMatchRegexp`.
pub(super) fn string_match_regexp(sm: &StringMatch, where_: &str) -> Result<(), String> {
    string_match_one_of(sm)?;
    match &sm.regex {
        None => Ok(()),
        Some(r) if r.is_empty() => Err(format!("{where_:?}: regex string match should not be empty")),
        Some(r) => regex_syntax(r, where_),
    }
}

/// `validateStringMatch`: also no empty prefix.
pub(super) fn string_match(sm: &StringMatch, where_: &str) -> Result<(), String> {
    string_match_one_of(sm)?;
    if sm.prefix.as_deref() == Some("") {
        return Err(format!("{where_:?}: prefix string match should not be empty"));
    }
    string_match_regexp(sm, where_)
}
