//! Span-preserving YAML: the parse tree that every diagnostic points into.
//!
//! Fleet files are parsed into [`Node`] trees that remember where each node
//! starts, so that validation can report `file:line:column` for any value,
//! not only for syntax errors. Parsing is bounded: nesting depth and the size
//! a document grows to through aliases are capped, so hostile input (alias
//! bombs, deep nesting) costs bounded time and memory.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// How deep collections may nest in one document.
pub const MAX_DEPTH: usize = 64;

/// How many nodes one document may hold once aliases are expanded.
pub const MAX_NODES: usize = 200_000;

/// A position in a source file; both numbers start at 1 and count characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct Location {
    pub line: u32,
    pub column: u32,
}

impl Location {
    pub fn new(line: u32, column: u32) -> Self {
        Location { line, column }
    }

    fn from_span(span: &Span) -> Self {
        Location {
            line: u32::try_from(span.start.line()).unwrap_or(u32::MAX),
            column: u32::try_from(span.start.col() + 1).unwrap_or(u32::MAX),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One node of a YAML document with the place it starts at.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub location: Location,
}

/// The content of a node. Scalars keep their source text; they are resolved
/// to strings, numbers or booleans only when the target type asks for one.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// A scalar as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub text: String,
    /// Quoted and block scalars are always strings; plain ones are resolved
    /// by the YAML 1.2 core schema.
    pub plain: bool,
    /// A core-schema tag such as `!!str`, without the `!!`.
    pub tag: Option<String>,
}

/// What a scalar means under the YAML 1.2 core schema.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
}

impl Resolved<'_> {
    /// The noun used in "expected X, found Y" messages.
    pub fn noun(&self) -> &'static str {
        match self {
            Resolved::Null => "null",
            Resolved::Bool(_) => "a boolean",
            Resolved::Int(_) => "an integer",
            Resolved::Float(_) => "a number",
            Resolved::Str(_) => "a string",
        }
    }
}

impl Scalar {
    pub fn resolve(&self) -> Resolved<'_> {
        let text = self.text.as_str();
        match self.tag.as_deref() {
            Some("str") => return Resolved::Str(text),
            Some("null") => return Resolved::Null,
            _ => {}
        }
        if !self.plain {
            return Resolved::Str(text);
        }
        match text {
            "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
            "true" | "True" | "TRUE" => return Resolved::Bool(true),
            "false" | "False" | "FALSE" => return Resolved::Bool(false),
            ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
                return Resolved::Float(f64::INFINITY);
            }
            "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
            ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
            _ => {}
        }
        if let Some(int) = parse_int(text) {
            return Resolved::Int(int);
        }
        if looks_like_float(text)
            && let Ok(float) = text.parse::<f64>()
        {
            return Resolved::Float(float);
        }
        Resolved::Str(text)
    }
}

fn parse_int(text: &str) -> Option<i64> {
    if let Some(octal) = text.strip_prefix("0o") {
        return i64::from_str_radix(octal, 8).ok();
    }
    if let Some(hex) = text.strip_prefix("0x") {
        return i64::from_str_radix(hex, 16).ok();
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn looks_like_float(text: &str) -> bool {
    // YAML 1.2 core: [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], Some(&body[at + 1..])),
        None => (body, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (mantissa, None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match fraction {
        Some(fraction) => {
            digits(whole) && digits(fraction) && !(whole.is_empty() && fraction.is_empty())
        }
        None => !whole.is_empty() && digits(whole),
    };
    let exponent_ok = match exponent {
        Some(exp) => {
            let exp = exp.strip_prefix(['-', '+']).unwrap_or(exp);
            !exp.is_empty() && digits(exp)
        }
        None => true,
    };
    mantissa_ok && exponent_ok
}

impl Node {
    /// A short noun for the node's type, for "expected X, found Y".
    pub fn noun(&self) -> &'static str {
        match &self.value {
            Value::Scalar(scalar) => scalar.resolve().noun(),
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(scalar) => match scalar.resolve() {
                Resolved::Str(s) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar(s) if s.resolve() == Resolved::Null)
    }

    /// The value under `key` in a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The key node for `key` in a mapping node (where the key is written).
    pub fn get_key(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(k, _)| k),
            _ => None,
        }
    }
}

/// A syntax or limit error that stops parsing a file.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub location: Location,
    pub message: String,
    pub hint: Option<String>,
}

/// A problem found while building the tree that does not stop parsing
/// (duplicate keys), reported with the documents.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeProblem {
    pub document: usize,
    pub location: Location,
    pub path: String,
    pub message: String,
}

/// The documents of one YAML stream, in order; empty documents are dropped
/// but keep their index so that documents are numbered as in the file.
#[derive(Debug, Default)]
pub struct Stream {
    pub documents: Vec<(usize, Node)>,
    pub problems: Vec<TreeProblem>,
}

enum Frame {
    Seq {
        location: Location,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        location: Location,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        pending_key: Option<Node>,
        /// Set after a duplicate key: its value is dropped.
        skip_value: bool,
    },
}

struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Node, usize)>,
    n_nodes: usize,
    document: usize,
    documents: Vec<(usize, Node)>,
    problems: Vec<TreeProblem>,
}

/// Parses a YAML stream into its documents.
pub fn parse_stream(text: &str) -> Result<Stream, SyntaxError> {
    let mut builder = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        n_nodes: 0,
        document: 0,
        documents: Vec::new(),
        problems: Vec::new(),
    };
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|err| {
            let marker = err.marker();
            SyntaxError {
                location: Location::new(
                    u32::try_from(marker.line()).unwrap_or(u32::MAX),
                    u32::try_from(marker.col() + 1).unwrap_or(u32::MAX),
                ),
                message: format!("invalid YAML: {}", err.info()),
                hint: syntax_hint(err.info()),
            }
        })?;
        builder.on_event(event, &span)?;
    }
    Ok(Stream {
        documents: builder.documents,
        problems: builder.problems,
    })
}

/// Advice for the syntax errors people make most.
fn syntax_hint(info: &str) -> Option<String> {
    let hint = if info.contains("tab") {
        "indent with spaces: YAML does not allow tabs for indentation"
    } else if info.contains("quoted scalar") {
        "check that every quoted string has its closing quote"
    } else if info.contains("flow sequence") || info.contains("flow mapping") {
        "check that every `[` and `{` is closed"
    } else if info.contains("mapping values are not allowed") || info.contains("':' indicator") {
        "a value containing `: ` must be quoted, or a `[`/`{` earlier is not closed"
    } else {
        return None;
    };
    Some(hint.to_string())
}

impl Builder {
    fn on_event(&mut self, event: Event<'_>, span: &Span) -> Result<(), SyntaxError> {
        let location = Location::from_span(span);
        match event {
            Event::Nothing | Event::StreamStart | Event::StreamEnd => {}
            Event::DocumentStart(_) => {
                self.anchors.clear();
                self.n_nodes = 0;
            }
            Event::DocumentEnd => self.document += 1,
            Event::Alias(id) => {
                let Some((node, size)) = self.anchors.get(&id) else {
                    return Err(SyntaxError {
                        location,
                        message: "alias refers to an unknown anchor".into(),
                        hint: None,
                    });
                };
                let (node, size) = (node.clone(), *size);
                self.count(size, location)?;
                self.push(Node { location, ..node })?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                let tag = match tag {
                    None => None,
                    Some(tag) if tag.is_yaml_core_schema() => Some(tag.suffix.clone()),
                    Some(tag) => {
                        return Err(SyntaxError {
                            location,
                            message: format!("unsupported tag `{}{}`", tag.handle, tag.suffix),
                            hint: Some("only YAML core tags such as `!!str` are understood".into()),
                        });
                    }
                };
                self.count(1, location)?;
                let node = Node {
                    value: Value::Scalar(Scalar {
                        text: text.into_owned(),
                        plain: style == ScalarStyle::Plain,
                        tag,
                    }),
                    location,
                };
                if anchor != 0 {
                    self.anchors.insert(anchor, (node.clone(), 1));
                }
                self.push(node)?;
            }
            Event::SequenceStart(anchor, _) => {
                self.enter(location)?;
                self.stack.push(Frame::Seq {
                    location,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, _) => {
                self.enter(location)?;
                self.stack.push(Frame::Map {
                    location,
                    anchor,
                    entries: Vec::new(),
                    pending_key: None,
                    skip_value: false,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = self.stack.pop() else {
                    return Ok(());
                };
                let (node, anchor) = match frame {
                    Frame::Seq {
                        location,
                        anchor,
                        items,
                    } => (
                        Node {
                            value: Value::Seq(items),
                            location,
                        },
                        anchor,
                    ),
                    Frame::Map {
                        location,
                        anchor,
                        entries,
                        ..
                    } => (
                        Node {
                            value: Value::Map(entries),
                            location,
                        },
                        anchor,
                    ),
                };
                if anchor != 0 {
                    let size = node_count(&node);
                    self.anchors.insert(anchor, (node.clone(), size));
                }
                self.push(node)?;
            }
        }
        Ok(())
    }

    fn enter(&mut self, location: Location) -> Result<(), SyntaxError> {
        self.count(1, location)?;
        if self.stack.len() >= MAX_DEPTH {
            return Err(SyntaxError {
                location,
                message: format!("nesting is deeper than {MAX_DEPTH} levels"),
                hint: Some("flatten the document; fleet documents need only a few levels".into()),
            });
        }
        Ok(())
    }

    fn count(&mut self, n: usize, location: Location) -> Result<(), SyntaxError> {
        self.n_nodes = self.n_nodes.saturating_add(n);
        if self.n_nodes > MAX_NODES {
            return Err(SyntaxError {
                location,
                message: format!("document grows past {MAX_NODES} nodes once aliases are expanded"),
                hint: Some(
                    "this looks like an alias bomb; write the values out or use fewer aliases"
                        .into(),
                ),
            });
        }
        Ok(())
    }

    /// Adds a finished node to the collection being built, or ends a document.
    fn push(&mut self, node: Node) -> Result<(), SyntaxError> {
        let document = self.document;
        if let Some(duplicate) = self.duplicate_of(&node) {
            let name = node.as_str().unwrap_or_default();
            let path = join_path(&self.path_of_top(), name);
            self.problems.push(TreeProblem {
                document,
                location: node.location,
                path,
                message: format!(
                    "duplicate key `{name}` (first set at line {})",
                    duplicate.line
                ),
            });
            // Drop the key; its value is skipped by the `skip_value` flag.
            if let Some(Frame::Map { skip_value, .. }) = self.stack.last_mut() {
                *skip_value = true;
            }
            return Ok(());
        }
        match self.stack.last_mut() {
            None => {
                if !node.is_null() {
                    self.documents.push((document, node));
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                skip_value,
                ..
            }) => {
                if *skip_value {
                    *skip_value = false;
                } else if let Some(key) = pending_key.take() {
                    entries.push((key, node));
                } else {
                    *pending_key = Some(node);
                }
            }
        }
        Ok(())
    }

    /// Where a key that is about to be added was first set in its mapping.
    fn duplicate_of(&self, key: &Node) -> Option<Location> {
        let Some(Frame::Map {
            entries,
            pending_key: None,
            skip_value: false,
            ..
        }) = self.stack.last()
        else {
            return None;
        };
        let name = key.as_str()?;
        entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(name))
            .map(|(k, _)| k.location)
    }

    /// The YAML path of the collection on top of the stack, for messages.
    fn path_of_top(&self) -> String {
        let mut path = String::new();
        for (depth, frame) in self.stack.iter().enumerate() {
            let is_last = depth + 1 == self.stack.len();
            if is_last {
                break;
            }
            match frame {
                Frame::Seq { items, .. } => path.push_str(&format!("[{}]", items.len())),
                Frame::Map { pending_key, .. } => {
                    let key = pending_key.as_ref().and_then(|k| k.as_str()).unwrap_or("?");
                    path = join_path(&path, key);
                }
            }
        }
        path
    }
}

fn join_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn node_count(node: &Node) -> usize {
    match &node.value {
        Value::Scalar(_) => 1,
        Value::Seq(items) => 1 + items.iter().map(node_count).sum::<usize>(),
        Value::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| node_count(k) + node_count(v))
                .sum::<usize>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        let mut stream = parse_stream(text).unwrap();
        assert_eq!(stream.documents.len(), 1);
        stream.documents.remove(0).1
    }

    #[test]
    fn locations_are_one_based() {
        let node = one("a: 1\nbb:\n  c: x\n");
        assert_eq!(node.get("a").unwrap().location, Location::new(1, 4));
        assert_eq!(node.get_key("bb").unwrap().location, Location::new(2, 1));
        let bb = node.get("bb").unwrap();
        assert_eq!(bb.get("c").unwrap().location, Location::new(3, 6));
    }

    #[test]
    fn core_schema_resolution() {
        let cases = [
            ("1", Resolved::Int(1)),
            ("-12", Resolved::Int(-12)),
            ("0o17", Resolved::Int(15)),
            ("0x1f", Resolved::Int(31)),
            ("1.5", Resolved::Float(1.5)),
            ("1e3", Resolved::Float(1000.0)),
            ("true", Resolved::Bool(true)),
            ("yes", Resolved::Str("yes")),
            ("0644", Resolved::Int(644)),
            ("~", Resolved::Null),
            ("1.2.3", Resolved::Str("1.2.3")),
            ("'1'", Resolved::Str("1")),
            ("!!str 12", Resolved::Str("12")),
        ];
        for (text, expected) in cases {
            let node = one(&format!("v: {text}\n"));
            let Value::Scalar(scalar) = &node.get("v").unwrap().value else {
                panic!("not a scalar: {text}");
            };
            assert_eq!(scalar.resolve(), expected, "{text}");
        }
    }

    #[test]
    fn multi_document_streams_keep_document_numbers() {
        let stream = parse_stream("a: 1\n---\n---\nb: 2\n").unwrap();
        let numbers: Vec<usize> = stream.documents.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, vec![0, 2]);
    }

    #[test]
    fn duplicate_keys_are_problems() {
        let stream = parse_stream("a: 1\nb:\n  c: 1\n  c: 2\n").unwrap();
        assert_eq!(stream.problems.len(), 1);
        let problem = &stream.problems[0];
        assert_eq!(problem.location, Location::new(4, 3));
        assert_eq!(problem.path, "b.c");
        assert_eq!(problem.message, "duplicate key `c` (first set at line 3)");
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..9 {
            let prev = level - 1;
            let refs = vec![format!("*a{prev}"); 10].join(", ");
            text.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
        }
        let err = parse_stream(&text).unwrap_err();
        assert!(err.message.contains("aliases"), "{}", err.message);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let err = parse_stream(&text).unwrap_err();
        assert!(
            err.message.contains("nesting") || err.message.contains("recursion"),
            "{}",
            err.message
        );
    }

    #[test]
    fn aliases_expand() {
        let node = one("a: &x {k: v}\nb: *x\n");
        assert_eq!(node.get("b").unwrap().get("k").unwrap().as_str(), Some("v"));
    }

    #[test]
    fn syntax_errors_have_a_location() {
        let err = parse_stream("a: [1, 2\nb: c\n").unwrap_err();
        assert!(err.message.starts_with("invalid YAML"), "{}", err.message);
        assert!(err.location.line >= 1);
    }
}
