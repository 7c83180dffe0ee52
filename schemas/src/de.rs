//! A serde deserializer over [`Node`] trees that reports every problem.
//!
//! Serde's derived code stops at the first error. Fleet authors want every
//! mistake in one run, so this deserializer recovers instead of failing:
//! a value of the wrong type is recorded as a problem and replaced by a
//! placeholder of the requested type; unknown keys are recorded and skipped
//! (with a "did you mean" from the struct's own field list); a missing
//! required field is recorded, and the document is deserialized again with a
//! placeholder injected for it. The value that comes out is only meant for
//! further checks: a document with problems is never deployed.
//!
//! Leaf types that parse strings (modes, durations, cron expressions) report
//! their parse errors through [`leaf`], which records them at the node being
//! read while this deserializer runs and is an ordinary serde error otherwise.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

use crate::suggest;
use crate::yaml::{Location, Node, Resolved, Scalar, Value};

/// How often a document is deserialized again to inject missing fields.
const MAX_ATTEMPTS: usize = 64;

/// A structural problem in a document: wrong type, unknown or missing key.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub location: Location,
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

/// What [`from_node`] made of a node.
#[derive(Debug)]
pub struct Outcome<T> {
    /// The value, with placeholders where problems were; `None` only when
    /// a problem could not be recovered from.
    pub value: Option<T>,
    /// Every problem, in document order.
    pub problems: Vec<Problem>,
    /// Paths where placeholders stand: the problems' paths, plus missing
    /// fields that were reported as a misspelt key instead.
    pub broken_paths: Vec<String>,
}

/// Deserializes `node` into `T`, recovering from every problem it can.
///
/// `envelope` names keys of the root mapping that the caller has already
/// handled (`apiVersion`, `kind`); they are neither passed on nor reported.
pub fn from_node<T: DeserializeOwned>(node: &Node, envelope: &[&str]) -> Outcome<T> {
    let _guard = leaf::activate();
    let mut injected: BTreeSet<(String, &'static str)> = BTreeSet::new();
    let mut injected_problems = Vec::new();
    let mut silent_paths = Vec::new();
    let finish = |value: Option<T>, mut problems: Vec<Problem>, silent_paths: Vec<String>| {
        sort(&mut problems);
        let mut broken_paths: Vec<String> = problems.iter().map(|p| p.path.clone()).collect();
        broken_paths.extend(silent_paths);
        if value.is_none() {
            broken_paths.push(String::new());
        }
        Outcome {
            value,
            problems,
            broken_paths,
        }
    };
    for _ in 0..MAX_ATTEMPTS {
        let session = Session {
            problems: RefCell::new(Vec::new()),
            injected: &injected,
            envelope,
        };
        let result = child(std::marker::PhantomData::<T>, node, Path::Root, &session);
        let mut problems = session.problems.into_inner();
        match result {
            Ok(value) => {
                problems.extend(injected_problems);
                return finish(Some(value), problems, silent_paths);
            }
            Err(Error::Retry {
                problem,
                field,
                silent,
            }) => {
                let key = (problem.path.clone(), field);
                if !injected.insert(key) {
                    problems.push(*problem);
                    problems.extend(injected_problems);
                    return finish(None, problems, silent_paths);
                }
                if silent {
                    silent_paths.push(problem.path);
                } else {
                    injected_problems.push(*problem);
                }
            }
            Err(other) => {
                problems.push(other.into_problem(node.location, String::new()));
                problems.extend(injected_problems);
                return finish(None, problems, silent_paths);
            }
        }
    }
    finish(None, injected_problems, silent_paths)
}

fn sort(problems: &mut Vec<Problem>) {
    problems.sort_by(|a, b| a.location.cmp(&b.location).then(a.path.cmp(&b.path)));
    problems.dedup();
}

struct Session<'s> {
    problems: RefCell<Vec<Problem>>,
    injected: &'s BTreeSet<(String, &'static str)>,
    envelope: &'s [&'s str],
}

impl Session<'_> {
    fn report(&self, location: Location, path: &Path<'_>, message: String, hint: Option<String>) {
        self.problems.borrow_mut().push(Problem {
            location,
            path: path.to_string(),
            message,
            hint,
        });
    }
}

/// The YAML path of the node being read, as a linked list on the stack.
#[derive(Clone, Copy)]
enum Path<'p> {
    Root,
    Key(&'p Path<'p>, &'p str),
    Index(&'p Path<'p>, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Key(Path::Root, key) => write!(f, "{key}"),
            Path::Key(parent, key) => write!(f, "{parent}.{key}"),
            Path::Index(parent, index) => write!(f, "{parent}[{index}]"),
        }
    }
}

/// Errors that travel through serde's derived code.
#[derive(Debug)]
pub enum Error {
    /// Raised by derived visitors; located by the enclosing struct.
    MissingField(&'static str),
    /// A missing field, already located: retry with a placeholder for it.
    /// `silent` when an unknown key nearby was already reported as its
    /// likely misspelling.
    Retry {
        problem: Box<Problem>,
        field: &'static str,
        silent: bool,
    },
    /// Anything else, located at the node that saw it first.
    Located(Box<Problem>),
    /// Not yet located.
    Custom(String),
}

impl Error {
    fn into_problem(self, location: Location, path: String) -> Problem {
        match self {
            Error::MissingField(field) => Problem {
                location,
                path,
                message: format!("missing field `{field}`"),
                hint: None,
            },
            Error::Retry { problem, .. } | Error::Located(problem) => *problem,
            Error::Custom(message) => Problem {
                location,
                path,
                message,
                hint: None,
            },
        }
    }

    fn locate(self, node: &Node, path: &Path<'_>) -> Error {
        match self {
            Error::Custom(_) => {
                Error::Located(Box::new(self.into_problem(node.location, path.to_string())))
            }
            other => other,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::MissingField(field) => write!(f, "missing field `{field}`"),
            Error::Retry { problem, .. } | Error::Located(problem) => {
                write!(f, "{}: {}", problem.location, problem.message)
            }
            Error::Custom(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::Custom(msg.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        Error::MissingField(field)
    }
}

type Result<T> = std::result::Result<T, Error>;

/// Deserializes the value at `node` with `seed`, then records at that node
/// any parse error a leaf type reported while doing so.
/// A leaf error after another problem at the same node (a number where a
/// mode string belongs, say) is a consequence of it and is dropped.
fn child<'n, T: DeserializeSeed<'n>>(
    seed: T,
    node: &'n Node,
    path: Path<'_>,
    session: &Session<'_>,
) -> Result<T::Value> {
    leaf::take();
    let n_before = session.problems.borrow().len();
    let value = seed.deserialize(NodeDe {
        node,
        path,
        session,
    });
    if let Some((message, hint)) = leaf::take() {
        let path_text = path.to_string();
        let already = session.problems.borrow()[n_before..]
            .iter()
            .any(|p| p.path == path_text);
        if !already {
            session.report(node.location, &path, message, hint);
        }
    }
    value
}

/// Deserializes a placeholder with `seed`; leaf errors it causes are not
/// the user's and are dropped.
fn placeholder<'de, T: DeserializeSeed<'de>>(seed: T) -> Result<T::Value> {
    let value = seed.deserialize(Placeholder);
    leaf::take();
    value
}

/// Deserializes one node.
struct NodeDe<'n, 'p, 's> {
    node: &'n Node,
    path: Path<'p>,
    session: &'s Session<'s>,
}

impl<'n, 'p, 's> NodeDe<'n, 'p, 's> {
    fn scalar(&self) -> Option<&'n Scalar> {
        match &self.node.value {
            Value::Scalar(scalar) => Some(scalar),
            _ => None,
        }
    }

    /// Records "expected X, found Y" at this node.
    fn mismatch(&self, expected: &str) {
        let found = self.node.noun();
        let mut message = format!("expected {expected}, found {found}");
        let mut hint = None;
        if let Some(scalar) = self.scalar() {
            if !scalar.text.is_empty() {
                message = format!("expected {expected}, found {found} `{}`", scalar.text);
            }
            if expected == "a string" && scalar.plain && !scalar.text.is_empty() {
                hint = Some(format!("quote it: \"{}\"", scalar.text));
            }
            if expected == "a list" && !scalar.text.is_empty() {
                hint = Some(format!("write a list: [{}]", scalar.text));
            }
            if expected == "a boolean" {
                let lower = scalar.text.to_ascii_lowercase();
                if matches!(lower.as_str(), "yes" | "no" | "on" | "off" | "y" | "n") {
                    hint = Some("YAML 1.2 reads this as a string: write true or false".into());
                } else if !scalar.plain && matches!(lower.as_str(), "true" | "false") {
                    hint = Some(format!("remove the quotes: {lower}"));
                }
            }
        } else if let Value::Seq(items) = &self.node.value
            && expected == "a string"
            && items.len() == 1
        {
            hint = Some("write a single value, not a list".into());
        }
        self.session
            .report(self.node.location, &self.path, message, hint);
    }

    fn deserialize_str_like<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value> {
        let value = match self.scalar().map(Scalar::resolve) {
            Some(Resolved::Str(text)) => visitor.visit_str(text),
            // The text goes on as the placeholder, so that a leaf type can
            // say what is wrong with it (see `child`).
            other => {
                self.mismatch("a string");
                let text = match other {
                    Some(_) => self.scalar().map_or("", |s| s.text.as_str()),
                    None => "",
                };
                visitor.visit_str(text)
            }
        };
        value.map_err(|err: Error| err.locate(self.node, &self.path))
    }

    fn integer(&self, min: i128, max: i128, expected: &str) -> Option<i128> {
        match self.scalar().map(Scalar::resolve) {
            Some(Resolved::Int(int)) if (min..=max).contains(&i128::from(int)) => {
                Some(i128::from(int))
            }
            _ => {
                self.mismatch(expected);
                None
            }
        }
    }
}

macro_rules! integer_methods {
    ($($method:ident $visit:ident $ty:ty, $expected:literal;)*) => {$(
        fn $method<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value> {
            let value = self
                .integer(i128::from(<$ty>::MIN), i128::from(<$ty>::MAX), $expected)
                .and_then(|int| <$ty>::try_from(int).ok())
                .unwrap_or_default();
            visitor.$visit(value)
        }
    )*};
}

impl<'n> de::Deserializer<'n> for NodeDe<'n, '_, '_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value> {
        let result = match &self.node.value {
            Value::Scalar(scalar) => match scalar.resolve() {
                Resolved::Null => visitor.visit_unit(),
                Resolved::Bool(b) => visitor.visit_bool(b),
                Resolved::Int(i) => visitor.visit_i64(i),
                Resolved::Float(x) => visitor.visit_f64(x),
                Resolved::Str(s) => visitor.visit_str(s),
            },
            Value::Seq(items) => visitor.visit_seq(SeqAccess::new(items, &self.path, self.session)),
            Value::Map(entries) => {
                visitor.visit_map(MapAccess::new(entries, &self.path, self.session))
            }
        };
        result.map_err(|err| err.locate(self.node, &self.path))
    }

    fn deserialize_bool<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value> {
        match self.scalar().map(Scalar::resolve) {
            Some(Resolved::Bool(b)) => visitor.visit_bool(b),
            _ => {
                self.mismatch("a boolean");
                visitor.visit_bool(false)
            }
        }
    }

    integer_methods! {
        deserialize_i8 visit_i8 i8, "an integer";
        deserialize_i16 visit_i16 i16, "an integer";
        deserialize_i32 visit_i32 i32, "an integer";
        deserialize_i64 visit_i64 i64, "an integer";
        deserialize_u8 visit_u8 u8, "an integer from 0 to 255";
        deserialize_u16 visit_u16 u16, "an integer from 0 to 65535";
        deserialize_u32 visit_u32 u32, "an integer from 0 to 4294967295";
        deserialize_u64 visit_u64 u64, "a non-negative integer";
    }

    fn deserialize_f32<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value> {
        match self.scalar().map(Scalar::resolve) {
            Some(Resolved::Float(x)) if x.is_finite() => visitor.visit_f64(x),
            #[allow(clippy::cast_precision_loss)]
            Some(Resolved::Int(i)) => visitor.visit_f64(i as f64),
            _ => {
                self.mismatch("a number");
                visitor.visit_f64(0.0)
            }
        }
    }

    fn deserialize_char<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str_like(visitor)
    }

    fn deserialize_str<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str_like(visitor)
    }

    fn deserialize_string<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str_like(visitor)
    }

    fn deserialize_bytes<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str_like(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str_like(visitor)
    }

    fn deserialize_option<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value> {
        if self.node.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value> {
        if !self.node.is_null() {
            self.mismatch("nothing");
        }
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'n>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'n>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value> {
        let result = match &self.node.value {
            Value::Seq(items) => visitor.visit_seq(SeqAccess::new(items, &self.path, self.session)),
            _ => {
                self.mismatch("a list");
                visitor.visit_seq(SeqAccess::new(&[], &self.path, self.session))
            }
        };
        result.map_err(|err| err.locate(self.node, &self.path))
    }

    fn deserialize_tuple<V: Visitor<'n>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'n>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value> {
        let result = match &self.node.value {
            Value::Map(entries) => {
                visitor.visit_map(MapAccess::new(entries, &self.path, self.session))
            }
            _ => {
                self.mismatch("a mapping");
                visitor.visit_map(MapAccess::new(&[], &self.path, self.session))
            }
        };
        result.map_err(|err| err.locate(self.node, &self.path))
    }

    fn deserialize_struct<V: Visitor<'n>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        let Value::Map(entries) = &self.node.value else {
            self.mismatch("a mapping");
            return visitor.visit_map(PlaceholderStruct::new(fields));
        };
        let path = self.path.to_string();
        let envelope: &[&str] = if matches!(self.path, Path::Root) {
            self.session.envelope
        } else {
            &[]
        };
        let mut known = Vec::with_capacity(entries.len());
        let mut suggested: Vec<&str> = Vec::new();
        for (key, value) in entries {
            let Some(name) = key.as_str() else {
                NodeDe {
                    node: key,
                    path: self.path,
                    session: self.session,
                }
                .mismatch("a field name");
                continue;
            };
            if envelope.contains(&name) {
                continue;
            }
            if fields.contains(&name) {
                known.push((key, value, name));
            } else {
                let closest = suggest::closest(name, fields.iter().chain(envelope).copied());
                suggested.extend(closest);
                let hint = closest
                    .map(|field| format!("did you mean `{field}`?"))
                    .or_else(|| Some(format!("expected one of {}", suggest::one_of(fields))));
                let child = Path::Key(&self.path, name);
                self.session.report(
                    key.location,
                    &child,
                    format!("unknown field `{name}`"),
                    hint,
                );
            }
        }
        let injected: Vec<&'static str> = fields
            .iter()
            .copied()
            .filter(|field| {
                self.session
                    .injected
                    .contains(&(path_key(&path, field), *field))
            })
            .collect();
        let access = StructAccess {
            known: known.into_iter(),
            injected: injected.into_iter(),
            pending: None,
            path: &self.path,
            session: self.session,
        };
        match visitor.visit_map(access) {
            Err(Error::MissingField(field)) => {
                let problem = Problem {
                    location: self.node.location,
                    path: path_key(&path, field),
                    message: format!("missing field `{field}`"),
                    hint: Some(format!("add `{field}:`")),
                };
                Err(Error::Retry {
                    problem: Box::new(problem),
                    field,
                    silent: suggested.contains(&field),
                })
            }
            other => other.map_err(|err| err.locate(self.node, &self.path)),
        }
    }

    fn deserialize_enum<V: Visitor<'n>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        let fallback = || visitor_placeholder_variant(variants);
        let result = match &self.node.value {
            Value::Scalar(scalar) => match scalar.resolve() {
                Resolved::Str(text) if variants.contains(&text) => visitor.visit_enum(EnumAccess {
                    variant: text,
                    key: self.node,
                    value: None,
                    path: &self.path,
                    session: self.session,
                }),
                _ => {
                    let message = if scalar.text.is_empty() {
                        format!("expected one of {}", suggest::one_of(variants))
                    } else {
                        format!(
                            "invalid value `{}`, expected one of {}",
                            scalar.text,
                            suggest::one_of(variants)
                        )
                    };
                    let hint = suggest::did_you_mean(&scalar.text, variants.iter().copied());
                    self.session
                        .report(self.node.location, &self.path, message, hint);
                    visitor.visit_enum(fallback())
                }
            },
            Value::Map(entries) if entries.len() == 1 => {
                let (key, value) = &entries[0];
                match key.as_str() {
                    Some(name) if variants.contains(&name) => visitor.visit_enum(EnumAccess {
                        variant: name,
                        key,
                        value: Some(value),
                        path: &self.path,
                        session: self.session,
                    }),
                    _ => {
                        let name = key.as_str().unwrap_or_default();
                        let hint =
                            suggest::did_you_mean(name, variants.iter().copied()).or_else(|| {
                                Some(format!("expected one of {}", suggest::one_of(variants)))
                            });
                        self.session.report(
                            key.location,
                            &self.path,
                            format!("unknown type `{name}`"),
                            hint,
                        );
                        visitor.visit_enum(fallback())
                    }
                }
            }
            Value::Map(entries) => {
                let present: Vec<&str> = entries
                    .iter()
                    .filter_map(|(k, _)| k.as_str())
                    .filter(|k| variants.contains(k))
                    .collect();
                let (message, hint) = match present.as_slice() {
                    [] => (
                        format!(
                            "expected exactly one of {} as the key",
                            suggest::one_of(variants)
                        ),
                        None,
                    ),
                    [one]
                        if entries
                            .iter()
                            .any(|(k, v)| k.as_str() == Some(one) && v.is_null()) =>
                    {
                        (
                            format!("`{one}` must hold its fields, and be the only key here"),
                            Some(format!("indent the fields under `{one}:`")),
                        )
                    }
                    _ => (
                        format!(
                            "expected exactly one of {} as the only key",
                            suggest::one_of(variants)
                        ),
                        None,
                    ),
                };
                self.session
                    .report(self.node.location, &self.path, message, hint);
                visitor.visit_enum(fallback())
            }
            Value::Seq(_) => {
                self.mismatch(&format!("one of {}", suggest::one_of(variants)));
                visitor.visit_enum(fallback())
            }
        };
        result.map_err(|err| err.locate(self.node, &self.path))
    }

    fn deserialize_identifier<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str_like(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_unit()
    }
}

fn path_key(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn visitor_placeholder_variant(variants: &'static [&'static str]) -> PlaceholderEnum {
    PlaceholderEnum {
        variant: variants.first().copied().unwrap_or_default(),
    }
}

struct SeqAccess<'n, 'p, 's> {
    items: std::iter::Enumerate<std::slice::Iter<'n, Node>>,
    path: &'p Path<'p>,
    session: &'s Session<'s>,
}

impl<'n, 'p, 's> SeqAccess<'n, 'p, 's> {
    fn new(items: &'n [Node], path: &'p Path<'p>, session: &'s Session<'s>) -> Self {
        SeqAccess {
            items: items.iter().enumerate(),
            path,
            session,
        }
    }
}

impl<'n> de::SeqAccess<'n> for SeqAccess<'n, '_, '_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'n>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        let Some((index, node)) = self.items.next() else {
            return Ok(None);
        };
        child(seed, node, Path::Index(self.path, index), self.session).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// Map access for free-form maps (`HashMap`, `serde_json::Value`).
struct MapAccess<'n, 'p, 's> {
    entries: std::slice::Iter<'n, (Node, Node)>,
    value: Option<(&'n Node, &'n str)>,
    path: &'p Path<'p>,
    session: &'s Session<'s>,
}

impl<'n, 'p, 's> MapAccess<'n, 'p, 's> {
    fn new(entries: &'n [(Node, Node)], path: &'p Path<'p>, session: &'s Session<'s>) -> Self {
        MapAccess {
            entries: entries.iter(),
            value: None,
            path,
            session,
        }
    }
}

impl<'n> de::MapAccess<'n> for MapAccess<'n, '_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'n>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        for (key, value) in self.entries.by_ref() {
            match &key.value {
                Value::Scalar(scalar) => {
                    self.value = Some((value, scalar.text.as_str()));
                    return seed
                        .deserialize(scalar.text.as_str().into_deserializer())
                        .map(Some);
                }
                _ => NodeDe {
                    node: key,
                    path: *self.path,
                    session: self.session,
                }
                .mismatch("a plain key"),
            }
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'n>>(&mut self, seed: V) -> Result<V::Value> {
        let (node, key) = self
            .value
            .take()
            .ok_or_else(|| Error::Custom("value without a key".into()))?;
        child(seed, node, Path::Key(self.path, key), self.session)
    }
}

/// Map access for structs: known keys first, then injected placeholders.
struct StructAccess<'n, 'p, 's> {
    known: std::vec::IntoIter<(&'n Node, &'n Node, &'n str)>,
    injected: std::vec::IntoIter<&'static str>,
    pending: Option<Option<(&'n Node, &'n str)>>,
    path: &'p Path<'p>,
    session: &'s Session<'s>,
}

impl<'n> de::MapAccess<'n> for StructAccess<'n, '_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'n>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if let Some((_, value, name)) = self.known.next() {
            self.pending = Some(Some((value, name)));
            return seed.deserialize(name.into_deserializer()).map(Some);
        }
        if let Some(field) = self.injected.next() {
            self.pending = Some(None);
            return seed.deserialize(field.into_deserializer()).map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'n>>(&mut self, seed: V) -> Result<V::Value> {
        match self.pending.take() {
            Some(Some((node, name))) => child(seed, node, Path::Key(self.path, name), self.session),
            Some(None) => placeholder(seed),
            None => Err(Error::Custom("value without a key".into())),
        }
    }
}

struct EnumAccess<'n, 'p, 's> {
    variant: &'n str,
    key: &'n Node,
    value: Option<&'n Node>,
    path: &'p Path<'p>,
    session: &'s Session<'s>,
}

impl<'n, 'p, 's> de::EnumAccess<'n> for EnumAccess<'n, 'p, 's> {
    type Error = Error;
    type Variant = VariantAccess<'n, 'p, 's>;

    fn variant_seed<V: DeserializeSeed<'n>>(self, seed: V) -> Result<(V::Value, Self::Variant)> {
        let tag = seed.deserialize(self.variant.into_deserializer())?;
        Ok((
            tag,
            VariantAccess {
                variant: self.variant,
                key: self.key,
                value: self.value,
                path: self.path,
                session: self.session,
            },
        ))
    }
}

struct VariantAccess<'n, 'p, 's> {
    variant: &'n str,
    key: &'n Node,
    value: Option<&'n Node>,
    path: &'p Path<'p>,
    session: &'s Session<'s>,
}

impl VariantAccess<'_, '_, '_> {
    fn needs_value(&self) {
        let child = Path::Key(self.path, self.variant);
        self.session.report(
            self.key.location,
            &child,
            format!("`{}` needs a value", self.variant),
            Some(format!("write `{}:` followed by its fields", self.variant)),
        );
    }
}

impl<'n> de::VariantAccess<'n> for VariantAccess<'n, '_, '_> {
    type Error = Error;

    fn unit_variant(self) -> Result<()> {
        if let Some(value) = self.value
            && !value.is_null()
        {
            let child = Path::Key(self.path, self.variant);
            self.session.report(
                value.location,
                &child,
                format!("`{}` takes no value", self.variant),
                Some(format!("write just `{}`", self.variant)),
            );
        }
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'n>>(self, seed: T) -> Result<T::Value> {
        match self.value {
            Some(node) => child(seed, node, Path::Key(self.path, self.variant), self.session),
            None => {
                self.needs_value();
                placeholder(seed)
            }
        }
    }

    fn tuple_variant<V: Visitor<'n>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        match self.value {
            Some(node) => {
                let path = Path::Key(self.path, self.variant);
                de::Deserializer::deserialize_seq(
                    NodeDe {
                        node,
                        path,
                        session: self.session,
                    },
                    visitor,
                )
            }
            None => {
                self.needs_value();
                de::Deserializer::deserialize_seq(Placeholder, visitor)
            }
        }
    }

    fn struct_variant<V: Visitor<'n>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.value {
            Some(node) => {
                let path = Path::Key(self.path, self.variant);
                de::Deserializer::deserialize_struct(
                    NodeDe {
                        node,
                        path,
                        session: self.session,
                    },
                    "",
                    fields,
                    visitor,
                )
            }
            None => {
                self.needs_value();
                visitor.visit_map(PlaceholderStruct::new(fields))
            }
        }
    }
}

/// Stands in for a value that was missing or unusable. It yields the
/// emptiest value of whatever type is asked for and reports nothing: the
/// problem that called for it has been reported already.
struct Placeholder;

impl<'de> de::Deserializer<'de> for Placeholder {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_unit()
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_bool(false)
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i8(0)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i16(0)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i32(0)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i64(0)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u8(0)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u16(0)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u32(0)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u64(0)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_f32(0.0)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_str("")
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_f64(0.0)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_str("")
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_none()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_seq(
            de::value::SeqDeserializer::<std::iter::Empty<()>, Error>::new(std::iter::empty()),
        )
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_map(de::value::MapDeserializer::<
            std::iter::Empty<((), ())>,
            Error,
        >::new(std::iter::empty()))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_map(PlaceholderStruct::new(fields))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_enum(visitor_placeholder_variant(variants))
    }

    serde::forward_to_deserialize_any! {
        char bytes byte_buf unit unit_struct tuple tuple_struct ignored_any
    }
}

/// A struct made of placeholders, one per field.
struct PlaceholderStruct {
    fields: std::slice::Iter<'static, &'static str>,
}

impl PlaceholderStruct {
    fn new(fields: &'static [&'static str]) -> Self {
        PlaceholderStruct {
            fields: fields.iter(),
        }
    }
}

impl<'de> de::MapAccess<'de> for PlaceholderStruct {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        match self.fields.next() {
            Some(field) => seed.deserialize((*field).into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        placeholder(seed)
    }
}

struct PlaceholderEnum {
    variant: &'static str,
}

impl<'de> de::EnumAccess<'de> for PlaceholderEnum {
    type Error = Error;
    type Variant = Placeholder;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Placeholder)> {
        let tag = seed.deserialize(self.variant.into_deserializer())?;
        Ok((tag, Placeholder))
    }
}

impl<'de> de::VariantAccess<'de> for Placeholder {
    type Error = Error;

    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        placeholder(seed)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        de::Deserializer::deserialize_seq(Placeholder, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_map(PlaceholderStruct::new(fields))
    }
}

/// Parse errors of leaf values (modes, durations, cron expressions…).
///
/// A leaf type's `Deserialize` reads a string and parses it. While
/// [`from_node`] runs, a parse error is handed to [`report`] and the leaf
/// yields a placeholder; the deserializer then records the error at the
/// node it was reading. Under any other deserializer the error is an
/// ordinary serde error.
pub mod leaf {
    use std::cell::{Cell, RefCell};

    thread_local! {
        static ACTIVE: Cell<usize> = const { Cell::new(0) };
        static PENDING: RefCell<Option<(String, Option<String>)>> = const { RefCell::new(None) };
    }

    pub(super) struct Guard;

    impl Drop for Guard {
        fn drop(&mut self) {
            ACTIVE.with(|active| active.set(active.get() - 1));
        }
    }

    pub(super) fn activate() -> Guard {
        ACTIVE.with(|active| active.set(active.get() + 1));
        Guard
    }

    pub(super) fn take() -> Option<(String, Option<String>)> {
        PENDING.with(|pending| pending.borrow_mut().take())
    }

    /// Hands a leaf's parse error to the recovering deserializer. Returns
    /// false when none is running: the caller must then fail.
    pub fn report(message: String, hint: Option<String>) -> bool {
        if ACTIVE.with(Cell::get) == 0 {
            return false;
        }
        PENDING.with(|pending| *pending.borrow_mut() = Some((message, hint)));
        true
    }

    /// Deserializes a string and parses it with `parse`; see the module docs.
    /// `placeholder` stands in for the value after a reported error.
    pub fn parse<'de, D, T>(
        deserializer: D,
        parse: impl FnOnce(&str) -> Result<T, crate::types::LeafError>,
        placeholder: impl FnOnce() -> T,
    ) -> Result<T, D::Error>
    where
        D: serde::Deserializer<'de>,
    {
        let text = <String as serde::Deserialize>::deserialize(deserializer)?;
        match parse(&text) {
            Ok(value) => Ok(value),
            Err(err) => {
                if report(err.message.clone(), err.hint.clone()) {
                    Ok(placeholder())
                } else {
                    Err(serde::de::Error::custom(err.message))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse_stream;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        port: u16,
        #[serde(default)]
        tls: bool,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Shape {
        Circle { radius: u32 },
        Square(Inner),
        Dot,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        inner: Inner,
        tags: Option<Vec<String>>,
        shapes: Vec<Shape>,
    }

    fn problems(text: &str) -> Vec<String> {
        let node = parse_stream(text).unwrap().documents.remove(0).1;
        from_node::<Outer>(&node, &["kind"])
            .problems
            .iter()
            .map(|p| {
                let hint = p
                    .hint
                    .as_deref()
                    .map(|h| format!(" ({h})"))
                    .unwrap_or_default();
                format!("{} {}: {}{hint}", p.location, p.path, p.message)
            })
            .collect()
    }

    #[test]
    fn a_clean_document_has_no_problems() {
        let node = parse_stream(
            "kind: X\nname: a\ninner: {port: 80}\nshapes: [dot, {circle: {radius: 2}}]\n",
        )
        .unwrap()
        .documents
        .remove(0)
        .1;
        let outcome = from_node::<Outer>(&node, &["kind"]);
        assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
        let value = outcome.value.unwrap();
        assert_eq!(value.inner.port, 80);
        assert_eq!(value.shapes, vec![Shape::Dot, Shape::Circle { radius: 2 }]);
    }

    #[test]
    fn every_problem_is_reported_in_one_pass() {
        let text = "\
nmae: a
inner:
  port: 99999
  tls: yes
tags: oops
shapes:
  - circel: {radius: 1}
  - square: {port: x}
  - dot
";
        assert_eq!(
            problems(text),
            vec![
                "1:1 nmae: unknown field `nmae` (did you mean `name`?)".to_string(),
                "3:9 inner.port: expected an integer from 0 to 65535, found an integer `99999`".into(),
                "4:8 inner.tls: expected a boolean, found a string `yes` (YAML 1.2 reads this as a string: write true or false)"
                    .into(),
                "5:7 tags: expected a list, found a string `oops` (write a list: [oops])".into(),
                "7:5 shapes[0]: unknown type `circel` (did you mean `circle`?)".into(),
                "8:20 shapes[1].square.port: expected an integer from 0 to 65535, found a string `x`".into(),
            ]
        );
    }

    #[test]
    fn missing_fields_are_found_at_every_level() {
        let text = "name: a\ninner: {tls: true}\nshapes: [{circle: {}}]\n";
        assert_eq!(
            problems(text),
            vec![
                "2:8 inner.port: missing field `port` (add `port:`)".to_string(),
                "3:19 shapes[0].circle.radius: missing field `radius` (add `radius:`)".into(),
            ]
        );
    }

    #[test]
    fn a_variant_with_its_fields_unindented_gets_a_hint() {
        let text = "name: a\ninner: {port: 1}\nshapes:\n  - circle:\n    radius: 1\n";
        assert_eq!(
            problems(text),
            vec![
                "4:5 shapes[0]: `circle` must hold its fields, and be the only key here (indent the fields under `circle:`)"
                    .to_string()
            ]
        );
    }

    #[test]
    fn strings_that_read_as_numbers_get_a_quote_hint() {
        let text = "name: 0644\ninner: {port: 1}\nshapes: []\n";
        assert_eq!(
            problems(text),
            vec![
                "1:7 name: expected a string, found an integer `0644` (quote it: \"0644\")"
                    .to_string()
            ]
        );
    }
}
