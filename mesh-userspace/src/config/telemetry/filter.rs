//! `accessLogging[].filter.expression`: a CEL expression over Envoy's request attributes that
//! decides whether a request gets an access log line. Parsed at admission as istio/istio's
//! validation does (`cel.NewEnv().Parse`: syntax only, no type check), evaluated per request as
//! Envoy's CEL access-log filter does: the line is written only when the expression evaluates to
//! `true`; an error — an attribute this proxy does not have, a missing header, a type mismatch —
//! counts as `false` ("expression errors are considered false", Envoy's `ExpressionFilter`).
use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use cel::{common::value::Val, Context, Env, Program, Value};

/// Why an expression was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// Not CEL: the parser's first error, with its `line:column` inside the expression.
    #[error("must be a valid CEL expression, ERROR: <input>:{line}:{column}: {message}")]
    Syntax {
        /// 1-based line in the expression.
        line: isize,
        /// 1-based column of the token where the syntax breaks.
        column: isize,
        /// The parser's message.
        message: String,
    },
    /// The CEL parser panicked on it (a bug in the parser): refused rather than crash the agent.
    #[error("must be a valid CEL expression: the CEL parser failed on it")]
    ParserFailed,
}

/// A compiled filter: the program and which header maps it may read (captured only then).
pub struct LogFilter {
    program: Program,
    env: Arc<Env>,
    expression: String,
    request_headers: bool,
    response_headers: bool,
    /// The top-level attributes (`request`, `response`...) the expression names: only those are
    /// built per request.
    variables: Vec<&'static str>,
}

impl std::fmt::Debug for LogFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFilter").field("expression", &self.expression).finish()
    }
}

/// The expressions admission parses are short; a longer one is refused before the parser sees it
/// (Istio's CRD has no limit, Envoy none either; a megabyte of CEL is a mistake, not a filter).
pub const MAX_EXPRESSION_LEN: usize = 16 * 1024;

impl LogFilter {
    /// Parses `expression`; the error says where the syntax breaks.
    pub fn compile(expression: &str) -> Result<LogFilter, FilterError> {
        if expression.len() > MAX_EXPRESSION_LEN {
            return Err(FilterError::Syntax {
                line: 1,
                column: isize::try_from(MAX_EXPRESSION_LEN).unwrap_or(isize::MAX),
                message: format!("expression longer than {MAX_EXPRESSION_LEN} bytes"),
            });
        }
        // The parser is a dependency's (an ANTLR grammar): a panic in it on some input must not
        // take the config reload down with it. A panic is reported by the default hook and the
        // object is rejected.
        let parsed =
            std::panic::catch_unwind(|| Program::compile(expression)).map_err(|_| FilterError::ParserFailed)?;
        let program = parsed.map_err(|e| match e.errors.first() {
            Some(first) => FilterError::Syntax {
                line: first.pos.0,
                column: first.pos.1,
                message: super::cut(&first.msg, 200).to_string(),
            },
            None => FilterError::Syntax { line: 1, column: 0, message: "unparsable".into() },
        })?;
        // Conservative: a mention of `headers` anywhere (even in a string) makes the proxy keep
        // that request's headers for the filter; other requests keep nothing.
        let request_headers = expression.contains("headers");
        let references = program.references();
        let variables = VARIABLES.iter().copied().filter(|v| references.has_variable(v)).collect();
        Ok(LogFilter {
            variables,
            program,
            env: Arc::new(Env::stdlib()),
            expression: expression.to_owned(),
            request_headers,
            response_headers: request_headers,
        })
    }

    /// The expression as written.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// Whether evaluating may read `request.headers` (the proxy keeps a copy for it only then).
    pub fn wants_request_headers(&self) -> bool {
        self.request_headers
    }

    /// Whether evaluating may read `response.headers`.
    pub fn wants_response_headers(&self) -> bool {
        self.response_headers
    }

    /// Whether a request with `attrs` is logged: the expression evaluates to `true`. Anything else —
    /// `false`, a non-boolean, an error — is not logged, as in Envoy.
    pub fn matches(&self, attrs: &Attributes<'_>) -> bool {
        let mut ctx = Context::with_env(self.env.clone());
        for (name, value) in attrs.to_values(&self.variables) {
            // Conversion of the plain maps built here cannot fail; if it ever did the variable is
            // absent and the expression errors, i.e. not logged.
            if let Ok(v) = Box::<dyn Val>::try_from(value) {
                ctx.add_variable_as_val(name, v);
            }
        }
        matches!(self.program.execute(&ctx), Ok(Value::Bool(true)))
    }
}

/// Envoy's attributes of one finished request, as far as this proxy knows them. A `None` is an
/// attribute Envoy would also report absent, or one this proxy does not have: either way reading
/// it is an error, and the filter says no.
#[derive(Debug, Default)]
pub struct Attributes<'a> {
    /// `request.method`.
    pub method: &'a str,
    /// `request.path`: path and query as the client sent them.
    pub path: &'a str,
    /// `request.host` (`:authority` / `Host`).
    pub host: Option<&'a str>,
    /// `request.scheme`.
    pub scheme: &'a str,
    /// `request.protocol` (`HTTP/1.1`, `HTTP/2`...).
    pub protocol: &'a str,
    /// `request.id` (`x-request-id`).
    pub request_id: Option<&'a str>,
    /// `request.useragent`.
    pub user_agent: Option<&'a str>,
    /// `request.referer`.
    pub referer: Option<&'a str>,
    /// `request.headers`, when the filter reads them.
    pub request_headers: Option<&'a http::HeaderMap>,
    /// `request.size`: body bytes received.
    pub request_size: u64,
    /// `response.code`; 0 (the client left before any response) is absent, as in Envoy.
    pub code: u16,
    /// `response.flags`: Envoy's response flag bits.
    pub flags: u64,
    /// `response.headers`, when the filter reads them and a response came.
    pub response_headers: Option<&'a http::HeaderMap>,
    /// `response.size`: body bytes sent.
    pub response_size: u64,
    /// `response.grpc_status`.
    pub grpc_status: Option<u16>,
    /// `source.address` / `source.port`: the client as accepted.
    pub source: Option<SocketAddr>,
    /// `upstream.address` / `upstream.port`: the endpoint of the last attempt.
    pub upstream: Option<SocketAddr>,
    /// `xds.cluster_name`.
    pub cluster: Option<&'a str>,
}

fn int(v: u64) -> Value {
    Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

fn string(s: &str) -> Value {
    Value::String(Arc::new(s.to_owned()))
}

/// A header map as Envoy's CEL sees it: lowercase names, several values joined by `,`. Values
/// that are not UTF-8 are left out.
fn headers(h: &http::HeaderMap) -> Value {
    let mut m: HashMap<String, String> = HashMap::with_capacity(h.keys_len());
    for (k, v) in h {
        let Ok(v) = v.to_str() else { continue };
        m.entry(k.as_str().to_owned())
            .and_modify(|e| {
                e.push(',');
                e.push_str(v);
            })
            .or_insert_with(|| v.to_owned());
    }
    Value::from(m)
}

/// Envoy's top-level attribute names this proxy fills in.
const VARIABLES: [&str; 6] = ["request", "response", "source", "upstream", "xds", "connection"];

impl Attributes<'_> {
    /// The top-level variables among `wanted` (of [`VARIABLES`]).
    fn to_values(&self, wanted: &[&'static str]) -> Vec<(&'static str, Value)> {
        wanted.iter().map(|&name| (name, self.value(name))).collect()
    }

    /// One top-level variable's map.
    fn value(&self, name: &str) -> Value {
        match name {
            "request" => self.request(),
            "response" => self.response(),
            "source" => addr(self.source),
            "upstream" => addr(self.upstream),
            "xds" => {
                let mut xds: HashMap<&'static str, Value> = HashMap::new();
                if let Some(c) = self.cluster {
                    xds.insert("cluster_name", string(c));
                }
                Value::from(xds)
            }
            // No TLS between the node proxy and pods (see the README's Telemetry section).
            "connection" => Value::from(HashMap::from([("mtls", Value::Bool(false))])),
            _ => Value::Null,
        }
    }

    fn request(&self) -> Value {
        let mut request: HashMap<&'static str, Value> = HashMap::with_capacity(12);
        request.insert("method", string(self.method));
        request.insert("path", string(self.path));
        let (url_path, query) = self.path.split_once('?').unwrap_or((self.path, ""));
        request.insert("url_path", string(url_path));
        request.insert("query", string(query));
        request.insert("scheme", string(self.scheme));
        request.insert("protocol", string(self.protocol));
        request.insert("size", int(self.request_size));
        let optional =
            [("host", self.host), ("id", self.request_id), ("useragent", self.user_agent), ("referer", self.referer)];
        for (k, v) in optional {
            if let Some(v) = v {
                request.insert(k, string(v));
            }
        }
        if let Some(h) = self.request_headers {
            request.insert("headers", headers(h));
        }
        Value::from(request)
    }

    fn response(&self) -> Value {
        let mut response: HashMap<&'static str, Value> = HashMap::with_capacity(6);
        if self.code != 0 {
            response.insert("code", Value::Int(i64::from(self.code)));
        }
        response.insert("flags", int(self.flags));
        response.insert("size", int(self.response_size));
        if let Some(s) = self.grpc_status {
            response.insert("grpc_status", Value::Int(i64::from(s)));
        }
        if let Some(h) = self.response_headers {
            response.insert("headers", headers(h));
        }
        Value::from(response)
    }
}

/// `source` / `upstream`: `address` (`ip:port`) and `port`, absent when unknown.
fn addr(a: Option<SocketAddr>) -> Value {
    let mut m: HashMap<&'static str, Value> = HashMap::new();
    if let Some(a) = a {
        m.insert("address", string(&a.to_string()));
        m.insert("port", Value::Int(i64::from(a.port())));
    }
    Value::from(m)
}

#[cfg(test)]
mod tests;
