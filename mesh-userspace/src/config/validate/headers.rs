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
    let b = value.as_bytes();
    let mut state = Format::Literal;
    let mut pos = 0;
    while let Some(&ch) = b.get(pos) {
        let (next, skip) = format_step(state, ch, b.get(pos + 1).copied())
            .map_err(|m| format!("header value configuration: invalid header configuration. {m}"))?;
        state = next;
        pos += 1 + skip;
    }
    if state != Format::Literal {
        return Err(format!(
            "header value configuration: invalid header configuration. Un-terminated variable expression {}",
            q(value)
        ));
    }
    Ok(())
}

/// Where Envoy's header format parser is (header_value_validator.go's states).
#[derive(Clone, Copy, PartialEq)]
enum Format {
    Literal,
    VarName,
    ExpectArray,
    ExpectString,
    Str,
    DelimOrEnd,
    ArgsEnd,
    VarEnd,
}

/// One byte of the parser: the next state and how many more bytes it consumed (the second `%`
/// of `%%`, the byte after a backslash), or why the value is rejected. `next` is the byte after.
fn format_step(state: Format, ch: u8, next: Option<u8>) -> Result<(Format, usize), &'static str> {
    use Format as S;
    Ok(match state {
        S::Literal if ch == b'%' => match next {
            None => return Err("Un-escaped %"),
            Some(b'%') => (S::Literal, 1),
            Some(_) => (S::VarName, 0),
        },
        S::Literal => (S::Literal, 0),
        S::VarName if ch == b'%' => (S::Literal, 0),
        S::VarName if ch == b'(' => (S::ExpectArray, 0),
        S::VarName => (S::VarName, 0),
        S::ExpectArray if ch == b'[' => (S::ExpectString, 0),
        S::ExpectArray if ch != b' ' => (S::Str, 0),
        S::ExpectArray => (S::ExpectArray, 0),
        S::DelimOrEnd if ch == b',' => (S::ExpectString, 0),
        S::DelimOrEnd if ch == b']' => (S::ArgsEnd, 0),
        S::DelimOrEnd if ch != b' ' => return Err("Expecting ',', ']', or whitespace"),
        S::DelimOrEnd => (S::DelimOrEnd, 0),
        S::ExpectString if ch == b'"' => (S::Str, 0),
        S::ExpectString if ch != b' ' => return Err("Expecting '\"'"),
        S::ExpectString => (S::ExpectString, 0),
        S::Str if ch == b'\\' => match next {
            None => return Err("Un-terminated backslash in JSON string"),
            Some(_) => (S::Str, 1),
        },
        S::Str if ch == b')' => (S::VarEnd, 0),
        S::Str if ch == b'"' => (S::DelimOrEnd, 0),
        S::Str => (S::Str, 0),
        S::ArgsEnd if ch == b')' => (S::VarEnd, 0),
        S::ArgsEnd if ch != b' ' => return Err("Expecting ')' or whitespace"),
        S::ArgsEnd => (S::ArgsEnd, 0),
        S::VarEnd if ch == b'%' => (S::Literal, 0),
        S::VarEnd if ch != b' ' => return Err("Expecting '%' or whitespace after"),
        S::VarEnd => (S::VarEnd, 0),
    })
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
