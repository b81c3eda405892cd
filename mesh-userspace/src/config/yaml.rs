//! YAML mechanics: splitting a file into documents, typed parsing with `serde_path_to_error`, and
//! the positions of every field (from yaml-rust2's marked events) for error messages.
use super::*;

pub(super) fn typed<T: DeserializeOwned>(text: &str, at: &Locator, line_offset: usize) -> Result<T, ConfigError> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = clean_path(&e.path().to_string());
        yaml_error(at, line_offset, e.into_inner(), &path)
    })
}

/// serde_path_to_error prints `spec.http[0].?` for some positions; `?` says nothing to a user.
pub(super) fn clean_path(p: &str) -> String {
    let p = p.trim_end_matches(".?").trim_end_matches('?');
    if p == "." {
        String::new()
    } else {
        p.to_owned()
    }
}

pub(super) fn yaml_error(at: &Locator, line_offset: usize, e: serde_yaml::Error, path: &str) -> ConfigError {
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
    // serde quotes the offending value whole; a 10 MB value must not make a 10 MB error line.
    let message = cut(&message, 300).into_owned();
    ConfigError { file: at.file.to_string(), line, column, path: path.to_owned(), message }
}

pub(super) struct Document {
    pub(super) text: Arc<str>,
    /// Lines before this document in its file.
    pub(super) line_offset: usize,
    pub(super) locator: Locator,
}

/// Splits a file into documents, each with the positions of its fields, using a YAML parser
/// that reports positions (serde_yaml does not).
pub(super) fn split_documents(file: &Arc<str>, text: &str) -> Result<Vec<Document>, ConfigError> {
    // Only where documents start: field positions are found per document, when one is asked for.
    let mut rx = Positions { paths: false, ..Positions::default() };
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
        let body: Arc<str> = body.strip_prefix("---").map_or(Arc::from(body), |b| Arc::from(format!("   {b}")));
        let line_offset = first_line - 1;
        out.push(Document {
            text: body.clone(),
            line_offset,
            locator: Locator { file: file.clone(), text: body, line_offset, start: doc.start, ..Locator::default() },
        });
    }
    Ok(out)
}

/// Every field's position in one document (`text`, the lines after `line_offset` of its file).
pub(super) fn field_positions(text: &str, line_offset: usize) -> HashMap<String, (usize, usize)> {
    let mut rx = Positions { paths: true, ..Positions::default() };
    // The whole file parsed before this document was cut from it, so this cannot fail; if it
    // did, errors would point at the document's start, which is still right.
    if Parser::new_from_str(text).load(&mut rx, false).is_err() {
        return HashMap::new();
    }
    let positions = rx.docs.into_iter().next().map(|d| d.positions).unwrap_or_default();
    positions.into_iter().map(|(path, (line, column))| (path, (line + line_offset, column))).collect()
}

#[derive(Default)]
pub(super) struct DocPositions {
    start: (usize, usize),
    positions: HashMap<String, (usize, usize)>,
}

pub(super) enum Frame {
    Map { key: Option<String>, awaiting_key: bool },
    Seq { index: usize },
}

#[derive(Default)]
pub(super) struct Positions {
    /// false: only where each document starts.
    paths: bool,
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
        if !self.paths && !matches!(ev, Event::DocumentStart) {
            return;
        }
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
