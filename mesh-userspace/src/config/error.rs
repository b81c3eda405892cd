//! Errors in the Istio YAML and where they point: the file, line, column and field path of a
//! problem ([`ConfigError`]), kept for every object ([`Locator`], [`Sourced`]) so errors found
//! when the route table is compiled point at the field too.
use super::*;

/// One problem in the Istio YAML, pointing at the field: `file:line:col: path: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as given to the loader.
    pub file: String,
    /// 1-based line of the field (or of its nearest ancestor that has a position).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Field path inside the document, e.g. `spec.http[0].route[1].weight`.
    pub path: String,
    /// What is wrong and what was expected.
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
    /// One error about a whole file (it cannot be read or parsed), placed at 1:1.
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
///
/// The table is built from the document's text on first use: most objects never have an error or
/// a warning, and a per-field table for each of 10,000 objects was a third of a reload's memory.
#[derive(Clone, Debug, Default)]
pub struct Locator {
    /// The file the document was read from.
    pub file: Arc<str>,
    /// The document as parsed (its `---` blanked, so columns are the file's).
    pub(super) text: Arc<str>,
    /// Lines of the file before `text`.
    pub(super) line_offset: usize,
    pub(super) start: (usize, usize),
    pub(super) positions: OnceLock<HashMap<String, (usize, usize)>>,
}

impl Locator {
    /// Position of `path`, or of its nearest ancestor that has one.
    pub fn at(&self, path: &str) -> (usize, usize) {
        let positions = self.positions.get_or_init(|| field_positions(&self.text, self.line_offset));
        let mut p = path;
        loop {
            if let Some(pos) = positions.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.start,
            }
        }
    }

    /// The document's first line in its file that is not blank or a comment (its `---` is
    /// blanked): where `/config_dump` says the object is. Reads the text only, so it does not
    /// build the per-field table.
    pub fn first_line(&self) -> usize {
        let skipped = self
            .text
            .lines()
            .take_while(|l| {
                let t = l.trim();
                t.is_empty() || t.starts_with('#')
            })
            .count();
        self.line_offset.saturating_add(skipped).saturating_add(1)
    }

    /// An error at field `path` of this document.
    pub fn error(&self, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let path = path.into();
        let (line, column) = self.at(&path);
        ConfigError { file: self.file.to_string(), line, column, path, message: message.into() }
    }
}

/// Which object a document is, as the API server names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// `VirtualService`, `DestinationRule` or `Gateway`.
    pub kind: &'static str,
    /// `metadata.namespace` (`default` when absent).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A document that was not accepted, on its own: the rest of its file and of the config is.
#[derive(Clone, Debug)]
pub struct Rejected {
    /// None when the document could not be told apart (the file is not YAML, or the document
    /// names no kind we act on): then every object last loaded from `file` is kept.
    pub object: Option<ObjectKey>,
    /// The file the document was in.
    pub file: Arc<str>,
    /// Why it was rejected.
    pub errors: Vec<ConfigError>,
}

/// A parsed resource and where it came from.
#[derive(Clone, Debug)]
pub struct Sourced<S> {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (`default` when absent).
    pub namespace: String,
    /// `apiVersion` as written.
    pub api_version: String,
    /// `metadata.annotations` (Istio's validation looks at `istio.io/dry-run`).
    pub annotations: std::collections::BTreeMap<String, String>,
    /// The typed `spec`.
    pub spec: S,
    /// Where its fields are in the file, for errors found after parsing.
    pub at: Arc<Locator>,
}

impl<S> Sourced<S> {
    /// `name.namespace`, how `mesh explain` and logs name a resource.
    pub fn key(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }
}
