//! From file bytes to typed documents: UTF-8 and size checks, YAML parsing,
//! the `apiVersion`/`kind` envelope, and structural problems.

use crate::de::{self, Problem};
use crate::diagnostic::Diagnostic;
use crate::model::{API_VERSION, Kind, Spec};
use crate::suggest;
use crate::yaml::{self, Location, Node, Value};

/// Fleet files larger than this are refused unread.
pub const MAX_FILE_BYTES: usize = 4 << 20;

/// Keys of the document envelope, handled here rather than by the kinds.
const ENVELOPE: &[&str] = &["apiVersion", "kind"];

/// Whether a repo path names a fleet file: `.yaml` or `.yml`, outside
/// directories whose name starts with a dot.
pub fn is_fleet_file(path: &str) -> bool {
    let is_yaml = path.ends_with(".yaml") || path.ends_with(".yml");
    let hidden = path
        .split('/')
        .rev()
        .skip(1)
        .any(|dir| dir.starts_with('.'));
    let file_name = path.rsplit('/').next().unwrap_or(path);
    is_yaml && !hidden && !file_name.starts_with('.')
}

/// One parsed file.
#[derive(Debug, Clone, Default)]
pub struct ParsedFile {
    pub path: String,
    pub documents: Vec<ParsedDocument>,
    pub diagnostics: Vec<Diagnostic>,
}

/// One document of a file, as far as it could be read.
#[derive(Debug, Clone)]
pub struct ParsedDocument {
    /// The document's root node, kept to locate later diagnostics.
    pub node: Node,
    pub kind: Option<Kind>,
    /// For a misspelt kind, the kind it was probably meant to be: its name
    /// still counts for references, so one typo is not reported again at
    /// every use.
    pub assumed_kind: Option<Kind>,
    /// The `name`, when it is a string, even if the rest is broken.
    pub name: Option<String>,
    /// The typed content; placeholders stand where problems were, so it is
    /// only trusted when the repo has no errors.
    pub spec: Option<Spec>,
    /// Paths that had structural problems: checks beneath them are skipped
    /// so that one mistake is reported once.
    pub broken_paths: Vec<String>,
}

impl ParsedDocument {
    pub fn location(&self) -> Location {
        self.node.location
    }
}

/// The result for a fleet file too large to read: callers that can see a
/// file's size check it first, so that a huge file is never read.
pub fn too_large(path: &str, n_bytes: u64) -> ParsedFile {
    ParsedFile {
        path: path.to_string(),
        documents: Vec::new(),
        diagnostics: vec![
            Diagnostic::file_error(
                path,
                format!(
                    "file is {n_bytes} bytes, over the {} MiB limit for fleet files",
                    MAX_FILE_BYTES >> 20
                ),
            )
            .with_hint(Some("split it into several files")),
        ],
    }
}

/// The result for a fleet file that is a symbolic link: never followed, so
/// that a link in a pull request cannot make Muster read outside the repo.
pub fn symlinked(path: &str) -> ParsedFile {
    ParsedFile {
        path: path.to_string(),
        documents: Vec::new(),
        diagnostics: vec![
            Diagnostic::file_error(
                path,
                "fleet file is a symbolic link, and links are not followed",
            )
            .with_hint(Some("replace the link with the file itself")),
        ],
    }
}

/// Parses the bytes of one fleet file.
pub fn parse_file(path: &str, bytes: &[u8]) -> ParsedFile {
    if bytes.len() > MAX_FILE_BYTES {
        return too_large(path, bytes.len() as u64);
    }
    let mut file = ParsedFile {
        path: path.to_string(),
        ..ParsedFile::default()
    };
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => {
            let valid = &bytes[..err.valid_up_to()];
            let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
            let line_start = valid
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |at| at + 1);
            let column = String::from_utf8_lossy(&valid[line_start..])
                .chars()
                .count()
                + 1;
            let location = Location::new(
                u32::try_from(line).unwrap_or(u32::MAX),
                u32::try_from(column).unwrap_or(u32::MAX),
            );
            file.diagnostics.push(
                Diagnostic::error(path, location, "", "file is not valid UTF-8")
                    .with_hint(Some("save the file as UTF-8")),
            );
            return file;
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let stream = match yaml::parse_stream(text) {
        Ok(stream) => stream,
        Err(err) => {
            file.diagnostics
                .push(Diagnostic::error(path, err.location, "", err.message).with_hint(err.hint));
            return file;
        }
    };
    for problem in &stream.problems {
        file.diagnostics.push(Diagnostic::error(
            path,
            problem.location,
            problem.path.clone(),
            problem.message.clone(),
        ));
    }
    if stream.documents.is_empty() {
        file.diagnostics.push(
            Diagnostic::file_error(path, "file holds no documents")
                .with_hint(Some("add a document, or delete the file")),
        );
        return file;
    }
    for (_, node) in stream.documents {
        let document = parse_document(path, node, &mut file.diagnostics);
        file.documents.push(document);
    }
    file
}

fn parse_document(path: &str, node: Node, diagnostics: &mut Vec<Diagnostic>) -> ParsedDocument {
    let (kind, spec, broken_paths) = read_document(path, &node, diagnostics);
    let assumed_kind = match (kind, node.get("kind").and_then(Node::as_str)) {
        (None, Some(text)) => {
            suggest::closest(text, Kind::ALL.iter().map(|k| k.as_str())).and_then(Kind::parse)
        }
        _ => None,
    };
    ParsedDocument {
        kind,
        assumed_kind,
        // Any scalar counts, so that `name: 2024` (reported as a number)
        // still declares the name its references use.
        name: node.get("name").and_then(|name| match &name.value {
            Value::Scalar(scalar) if !scalar.text.is_empty() => Some(scalar.text.clone()),
            _ => None,
        }),
        spec,
        broken_paths,
        node,
    }
}

/// Reads the envelope and the typed content of a document.
fn read_document(
    path: &str,
    node: &Node,
    diagnostics: &mut Vec<Diagnostic>,
) -> (Option<Kind>, Option<Spec>, Vec<String>) {
    let unreadable = || (None, None, vec![String::new()]);
    let Value::Map(entries) = &node.value else {
        diagnostics.push(
            Diagnostic::error(
                path,
                node.location,
                "",
                format!("expected a document (a mapping), found {}", node.noun()),
            )
            .with_hint(Some(format!(
                "start the document with `apiVersion: {API_VERSION}`, `kind:` and `name:`"
            ))),
        );
        return unreadable();
    };
    let keys: Vec<&str> = entries.iter().filter_map(|(k, _)| k.as_str()).collect();

    match node.get("apiVersion") {
        None => diagnostics.push(
            Diagnostic::error(path, node.location, "", "missing field `apiVersion`")
                .with_hint(Some(format!("add `apiVersion: {API_VERSION}`"))),
        ),
        Some(version) if version.as_str() == Some(API_VERSION) => {}
        Some(version) => diagnostics.push(
            Diagnostic::error(
                path,
                version.location,
                "apiVersion",
                format!("unsupported apiVersion `{}`", scalar_text(version)),
            )
            .with_hint(Some(format!(
                "this version of muster reads `apiVersion: {API_VERSION}`"
            ))),
        ),
    }

    let kind_names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    let kind = match node.get("kind") {
        None => {
            let typo = keys
                .iter()
                .find(|key| suggest::closest(key, ["kind"]).is_some());
            let (location, hint) = match typo {
                Some(typo) => (
                    node.get_key(typo).map_or(node.location, |key| key.location),
                    format!("did you mean `kind` instead of `{typo}`?"),
                ),
                None => (
                    node.location,
                    format!("add `kind:` with one of {}", suggest::one_of(&kind_names)),
                ),
            };
            diagnostics.push(
                Diagnostic::error(path, location, "", "missing field `kind`").with_hint(Some(hint)),
            );
            None
        }
        Some(value) => match value.as_str().and_then(Kind::parse) {
            Some(kind) => Some(kind),
            None => {
                let text = scalar_text(value);
                let hint = suggest::did_you_mean(&text, kind_names.iter().copied())
                    .unwrap_or_else(|| format!("expected one of {}", suggest::one_of(&kind_names)));
                diagnostics.push(
                    Diagnostic::error(
                        path,
                        value.location,
                        "kind",
                        format!("unknown kind `{text}`"),
                    )
                    .with_hint(Some(hint)),
                );
                None
            }
        },
    };
    let Some(kind) = kind else {
        return unreadable();
    };
    let (spec, problems, broken_paths) = parse_spec(kind, node);
    for problem in problems {
        diagnostics.push(
            Diagnostic::error(path, problem.location, problem.path, problem.message)
                .with_hint(problem.hint),
        );
    }
    (Some(kind), spec, broken_paths)
}

fn scalar_text(node: &Node) -> String {
    match &node.value {
        Value::Scalar(scalar) => scalar.text.clone(),
        _ => node.noun().to_string(),
    }
}

fn parse_spec(kind: Kind, node: &Node) -> (Option<Spec>, Vec<Problem>, Vec<String>) {
    fn typed<T: serde::de::DeserializeOwned>(
        node: &Node,
        wrap: fn(T) -> Spec,
    ) -> (Option<Spec>, Vec<Problem>, Vec<String>) {
        let outcome = de::from_node::<T>(node, ENVELOPE);
        (
            outcome.value.map(wrap),
            outcome.problems,
            outcome.broken_paths,
        )
    }
    match kind {
        Kind::Fleet => typed(node, Spec::Fleet),
        Kind::Host => typed(node, Spec::Host),
        Kind::Group => typed(node, Spec::Group),
        Kind::Policy => typed(node, Spec::Policy),
        Kind::Script => typed(node, Spec::Script),
        Kind::AlertRule => typed(node, Spec::AlertRule),
        Kind::Channel => typed(node, Spec::Channel),
        Kind::Window => typed(node, Spec::Window),
        Kind::Role => typed(node, Spec::Role),
        Kind::RoleBinding => typed(node, Spec::RoleBinding),
        Kind::Team => typed(node, Spec::Team),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_files() {
        assert!(is_fleet_file("policies/ssh.yaml"));
        assert!(is_fleet_file("fleet.yml"));
        assert!(!is_fleet_file(".github/workflows/ci.yaml"));
        assert!(!is_fleet_file("a/.hidden/b.yaml"));
        assert!(!is_fleet_file(".muster.yaml"));
        assert!(!is_fleet_file("files/motd"));
    }

    #[test]
    fn non_utf8_is_located() {
        let file = parse_file("bad.yaml", b"kind: Host\nname: caf\xe9\n");
        assert_eq!(file.diagnostics.len(), 1);
        let diagnostic = &file.diagnostics[0];
        assert_eq!((diagnostic.line, diagnostic.column), (2, 10));
        assert_eq!(diagnostic.message, "file is not valid UTF-8");
    }

    #[test]
    fn empty_files_are_errors() {
        for text in ["", "# nothing here\n", "---\n---\n"] {
            let file = parse_file("empty.yaml", text.as_bytes());
            assert_eq!(
                file.diagnostics[0].message, "file holds no documents",
                "{text:?}"
            );
        }
    }

    #[test]
    fn huge_files_are_refused_unread() {
        let bytes = vec![b'#'; MAX_FILE_BYTES + 1];
        let file = parse_file("huge.yaml", &bytes);
        assert!(file.diagnostics[0].message.contains("over the 4 MiB limit"));
    }

    #[test]
    fn a_typed_document() {
        let file = parse_file(
            "g.yaml",
            b"apiVersion: muster/v1\nkind: Group\nname: web\nselector: {role: web}\n",
        );
        assert!(file.diagnostics.is_empty(), "{:?}", file.diagnostics);
        let Some(Spec::Group(group)) = &file.documents[0].spec else {
            panic!("not a group");
        };
        assert_eq!(group.name, "web");
    }
}
