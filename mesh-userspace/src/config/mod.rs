//! Istio networking YAML: parsing with positions, and the watched ConfigMap directory.
//!
//! A file may hold many documents (`---`). Each document is parsed on its own so an error can be
//! reported as `file:line:col: field.path: what was expected`; positions of fields are kept (a
//! [`Locator`]) so errors found later, when the route table is compiled, point at the field too.
pub mod types;
pub mod watch;

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::de::DeserializeOwned;
use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser},
    scanner::Marker,
};

pub use types::*;

pub const API_GROUP: &str = "networking.istio.io";
pub const API_VERSIONS: &[&str] = &["v1alpha3", "v1beta1", "v1"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Field path inside the document, e.g. `spec.http[0].route[1].weight`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every error found, one per line when displayed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    pub fn single(file: &str, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            file: file.into(),
            line: 1,
            column: 1,
            path: String::new(),
            message: message.into(),
        }])
    }
}

/// Where each field of one document is: `spec.http[0].route` → (line, column), 1-based.
#[derive(Clone, Debug, Default)]
pub struct Locator {
    pub file: Arc<str>,
    positions: HashMap<String, (usize, usize)>,
    start: (usize, usize),
}

impl Locator {
    /// Position of `path`, or of its nearest ancestor that has one.
    pub fn at(&self, path: &str) -> (usize, usize) {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.start,
            }
        }
    }

    pub fn error(&self, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let path = path.into();
        let (line, column) = self.at(&path);
        ConfigError { file: self.file.to_string(), line, column, path, message: message.into() }
    }
}

/// A parsed resource and where it came from.
#[derive(Clone, Debug)]
pub struct Sourced<S> {
    pub name: String,
    pub namespace: String,
    pub api_version: String,
    pub spec: S,
    pub at: Arc<Locator>,
}

impl<S> Sourced<S> {
    /// `name.namespace`, how `mesh explain` and logs name a resource.
    pub fn key(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Config {
    pub virtual_services: Vec<Sourced<VirtualServiceSpec>>,
    pub destination_rules: Vec<Sourced<DestinationRuleSpec>>,
    pub gateways: Vec<Sourced<GatewaySpec>>,
    /// Documents of other kinds (a Service, a ConfigMap...) found in the files: skipped, reported.
    pub skipped: Vec<String>,
}

impl Config {
    pub fn empty() -> Config {
        Config::default()
    }

    /// Every `*.yaml` / `*.yml` file directly in `dir`, in name order. Dot entries are skipped:
    /// a Kubernetes ConfigMap volume shows each key as a symlink into `..data/`, and also has the
    /// `..data` and timestamped directories themselves.
    pub fn load_dir(dir: &Path) -> Result<Config, ConfigErrors> {
        let shown = dir.display().to_string();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| ConfigErrors::single(&shown, format!("cannot read config directory: {e}")))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml")) && p.is_file()
            })
            .collect();
        files.sort();
        Config::load_files(&files)
    }

    pub fn load_files(paths: &[PathBuf]) -> Result<Config, ConfigErrors> {
        let mut config = Config::default();
        let mut errors = Vec::new();
        for path in paths {
            let shown = path.display().to_string();
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    if let Err(e) = config.add_str(&shown, &text) {
                        errors.extend(e.0);
                    }
                }
                Err(e) => errors.push(ConfigErrors::single(&shown, format!("cannot read: {e}")).0.remove(0)),
            }
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    pub fn parse_str(file: &str, text: &str) -> Result<Config, ConfigErrors> {
        let mut config = Config::default();
        config.add_str(file, text)?;
        Ok(config)
    }

    /// Adds every document of one file; all errors of the file are collected.
    pub fn add_str(&mut self, file: &str, text: &str) -> Result<(), ConfigErrors> {
        let file: Arc<str> = Arc::from(file);
        let docs = match split_documents(&file, text) {
            Ok(d) => d,
            Err(e) => return Err(ConfigErrors(vec![e])),
        };
        let mut errors = Vec::new();
        for doc in docs {
            if let Err(e) = self.add_document(&file, doc) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    fn add_document(&mut self, file: &Arc<str>, doc: Document) -> Result<(), ConfigError> {
        let at = Arc::new(doc.locator);
        let value: serde_yaml::Value =
            serde_yaml::from_str(&doc.text).map_err(|e| yaml_error(&at, doc.line_offset, e, ""))?;
        if value.is_null() {
            return Ok(());
        }
        let api_version = value.get("apiVersion").and_then(|v| v.as_str()).unwrap_or("").to_owned();
        let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or("").to_owned();
        let name = value.get("metadata").and_then(|m| m.get("name")).and_then(|n| n.as_str()).unwrap_or("").to_owned();
        let is_istio = api_version.split('/').next() == Some(API_GROUP);
        if !is_istio || !matches!(kind.as_str(), "VirtualService" | "DestinationRule" | "Gateway") {
            if kind.is_empty() {
                return Err(at.error("kind", "missing `kind`: expected VirtualService, DestinationRule or Gateway"));
            }
            if is_istio {
                // ServiceEntry, Sidecar, EnvoyFilter...: valid Istio, not something this mesh acts on.
                self.skipped.push(format!("{file}: {kind} {name} (not supported; ignored)"));
            } else {
                self.skipped.push(format!("{file}: {api_version} {kind} {name} (not Istio networking; ignored)"));
            }
            return Ok(());
        }
        let version = api_version.split('/').nth(1).unwrap_or("");
        if !API_VERSIONS.contains(&version) {
            return Err(at.error(
                "apiVersion",
                format!("unsupported apiVersion {api_version:?}: expected {API_GROUP}/v1alpha3, v1beta1 or v1"),
            ));
        }
        if name.is_empty() {
            return Err(at.error("metadata.name", "missing metadata.name"));
        }
        match kind.as_str() {
            "VirtualService" => {
                let r: Resource<VirtualServiceSpec> = typed(&doc.text, &at, doc.line_offset)?;
                upsert(&mut self.virtual_services, sourced(r, at), &kind, &mut self.skipped);
            }
            "DestinationRule" => {
                let r: Resource<DestinationRuleSpec> = typed(&doc.text, &at, doc.line_offset)?;
                upsert(&mut self.destination_rules, sourced(r, at), &kind, &mut self.skipped);
            }
            _ => {
                let r: Resource<GatewaySpec> = typed(&doc.text, &at, doc.line_offset)?;
                upsert(&mut self.gateways, sourced(r, at), &kind, &mut self.skipped);
            }
        }
        Ok(())
    }
}

/// Same kind, namespace and name is the same object: the document loaded later replaces the
/// earlier one, as a second `kubectl apply` would (files load in name order).
fn upsert<S>(list: &mut Vec<Sourced<S>>, new: Sourced<S>, kind: &str, notes: &mut Vec<String>) {
    match list.iter_mut().find(|o| o.name == new.name && o.namespace == new.namespace) {
        Some(old) => {
            notes.push(format!(
                "{kind} {} from {} replaces the one from {} (same name, like kubectl apply)",
                new.key(),
                new.at.file,
                old.at.file
            ));
            *old = new;
        }
        None => list.push(new),
    }
}

fn sourced<S>(r: Resource<S>, at: Arc<Locator>) -> Sourced<S> {
    Sourced {
        name: r.metadata.name,
        namespace: r.metadata.namespace.unwrap_or_else(|| "default".into()),
        api_version: r.api_version,
        spec: r.spec,
        at,
    }
}

fn typed<T: DeserializeOwned>(text: &str, at: &Locator, line_offset: usize) -> Result<T, ConfigError> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = clean_path(&e.path().to_string());
        yaml_error(at, line_offset, e.into_inner(), &path)
    })
}

/// serde_path_to_error prints `spec.http[0].?` for some positions; `?` says nothing to a user.
fn clean_path(p: &str) -> String {
    let p = p.trim_end_matches(".?").trim_end_matches('?');
    if p == "." {
        String::new()
    } else {
        p.to_owned()
    }
}

fn yaml_error(at: &Locator, line_offset: usize, e: serde_yaml::Error, path: &str) -> ConfigError {
    let (line, column) = match e.location() {
        Some(l) => (l.line() + line_offset, l.column()),
        None => at.at(path),
    };
    // serde_yaml appends " at line L column C"; we already print the position up front.
    let mut message = e.to_string();
    if let Some(i) = message.find(" at line ") {
        message.truncate(i);
    }
    // serde prefixes the message with the path of the map it was in; the path is printed already.
    if let Some((head, rest)) = message.split_once(": ") {
        if !head.contains(' ') && (path.starts_with(head) || head == ".") {
            message = rest.to_owned();
        }
    }
    ConfigError { file: at.file.to_string(), line, column, path: path.to_owned(), message }
}

struct Document {
    text: String,
    /// Lines before this document in its file.
    line_offset: usize,
    locator: Locator,
}

/// Splits a file into documents, each with the positions of its fields, using a YAML parser
/// that reports positions (serde_yaml does not).
fn split_documents(file: &Arc<str>, text: &str) -> Result<Vec<Document>, ConfigError> {
    let mut rx = Positions::default();
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut rx, true) {
        let m = e.marker();
        return Err(ConfigError {
            file: file.to_string(),
            line: m.line(),
            column: m.col() + 1,
            path: String::new(),
            message: format!("invalid YAML: {}", e.info()),
        });
    }
    // Documents are cut on the lines where the parser saw them start (line-based, so a
    // multi-byte character can never split a slice).
    let line_starts: Vec<usize> = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
    let offset_of_line =
        |line: usize| line_starts.get(line.saturating_sub(1)).copied().unwrap_or(text.len()).min(text.len());
    let starts: Vec<usize> = rx.docs.iter().map(|d| d.start.0).collect();
    let mut out = Vec::new();
    for (i, doc) in rx.docs.into_iter().enumerate() {
        let first_line = doc.start.0.max(1);
        let start = offset_of_line(first_line);
        let end = starts.get(i + 1).map_or(text.len(), |l| offset_of_line(*l)).max(start);
        let body = &text[start..end];
        // Blank out the `---` marker (same width) so serde_yaml reads one document and its
        // columns stay the file's.
        let body = body.strip_prefix("---").map_or(body.to_owned(), |b| format!("   {b}"));
        out.push(Document {
            text: body,
            line_offset: first_line - 1,
            locator: Locator { file: file.clone(), positions: doc.positions, start: doc.start },
        });
    }
    Ok(out)
}

#[derive(Default)]
struct DocPositions {
    start: (usize, usize),
    positions: HashMap<String, (usize, usize)>,
}

enum Frame {
    Map { key: Option<String>, awaiting_key: bool },
    Seq { index: usize },
}

#[derive(Default)]
struct Positions {
    docs: Vec<DocPositions>,
    stack: Vec<(String, Frame)>,
}

impl Positions {
    /// Path of the node about to start at the current position, recording where it is.
    fn enter_node(&mut self, mark: Marker) -> Option<String> {
        let doc = self.docs.last_mut()?;
        let (base, frame) = self.stack.last_mut()?;
        let path = match frame {
            Frame::Map { key: Some(k), .. } => {
                if base.is_empty() {
                    k.clone()
                } else {
                    format!("{base}.{k}")
                }
            }
            Frame::Map { key: None, .. } => return None,
            Frame::Seq { index } => {
                let p = format!("{base}[{index}]");
                *index += 1;
                doc.positions.entry(p.clone()).or_insert((mark.line(), mark.col() + 1));
                p
            }
        };
        Some(path)
    }

    fn after_value(&mut self) {
        if let Some((_, Frame::Map { key, awaiting_key })) = self.stack.last_mut() {
            *key = None;
            *awaiting_key = true;
        }
    }
}

impl MarkedEventReceiver for Positions {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::DocumentStart => {
                self.docs.push(DocPositions { start: (mark.line(), mark.col() + 1), ..Default::default() });
                self.stack.clear();
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                let path = if self.stack.is_empty() { Some(String::new()) } else { self.enter_node(mark) };
                let path = path.unwrap_or_default();
                self.stack.push((
                    path,
                    if is_map { Frame::Map { key: None, awaiting_key: true } } else { Frame::Seq { index: 0 } },
                ));
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.after_value();
            }
            Event::Scalar(value, ..) => {
                let awaiting = matches!(self.stack.last(), Some((_, Frame::Map { awaiting_key: true, .. })));
                if awaiting {
                    let base = self.stack.last().map(|(b, _)| b.clone()).unwrap_or_default();
                    let path = if base.is_empty() { value.clone() } else { format!("{base}.{value}") };
                    if let Some(doc) = self.docs.last_mut() {
                        doc.positions.entry(path).or_insert((mark.line(), mark.col() + 1));
                    }
                    if let Some((_, Frame::Map { key, awaiting_key })) = self.stack.last_mut() {
                        *key = Some(value);
                        *awaiting_key = false;
                    }
                } else {
                    let _ = self.enter_node(mark);
                    self.after_value();
                }
            }
            Event::Alias(_) => {
                let _ = self.enter_node(mark);
                self.after_value();
            }
            _ => {}
        }
    }
}

/// Istio durations: Go/protobuf style, e.g. `7s`, `0.5s`, `100ms`, `1m30s`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let expected = || {
        format!("invalid duration {s:?}: expected a number with a unit (ns, us, ms, s, m, h), e.g. \"7s\", \"0.5s\", \"100ms\"")
    };
    let t = s.trim();
    if t.is_empty() {
        return Err(expected());
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_end == 0 {
            return Err(expected());
        }
        let n: f64 = rest[..num_end].parse().map_err(|_| expected())?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let secs = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(expected()),
        };
        total += n * secs;
        rest = &rest[unit_end..];
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests;
