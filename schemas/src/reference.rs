//! The fleet-repo reference (`docs/reference.md`), rendered from the JSON Schemas.
//!
//! Everything the reference says about a field (its type, whether it is
//! required, its default and its description) is read from
//! [`schema::document_schema`], the schema editors check fleet files
//! against, so the two cannot disagree. Only the prose around the tables is
//! written here. The output is deterministic: `tests/generated.rs` compares
//! it with the committed file.

use std::collections::BTreeMap;

use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value};

use crate::cron::CronSchedule;
use crate::model::{API_VERSION, Amount, Kind, PERMISSIONS, SCRIPT_RUN_PREFIX};
use crate::schema;
use crate::types::{AbsPath, Duration, FileMode, TimeZone};

/// Where the reference is committed, relative to the workspace root.
pub const REFERENCE_FILE: &str = "docs/reference.md";

/// The definition of a policy's resources, whose variants have ids.
const RESOURCE: &str = "Resource";

/// How similar (by normalised edit distance) a kind's description may be
/// to its summary before it counts as the same sentence rephrased.
const REPHRASED: f64 = 0.7;

/// The example at the top of the reference; a test checks that it is a
/// valid fleet file.
const EXAMPLE: &str = "\
# yaml-language-server: $schema=.schemas/document.json
apiVersion: muster/v1
kind: Group
name: web
description: Front-end web servers.
selector:
  role: web
---
apiVersion: muster/v1
kind: Policy
name: motd
targets:
  groups: [web]
resources:
  - file:
      path: /etc/motd
      content: \"Managed by Muster.\\n\"
      mode: \"0644\"
";

/// The fleet-repo reference as GitHub-flavoured Markdown.
pub fn markdown() -> String {
    let reference = Reference::new();
    let mut out = Markdown::default();
    reference.introduction(&mut out);
    reference.contents(&mut out);
    reference.documents(&mut out);
    reference.editor_support(&mut out);
    for (kind, name) in &reference.kinds {
        reference.kind_section(&mut out, *kind, name);
    }
    reference.common_types(&mut out);
    reference.value_formats(&mut out);
    reference.resource_ids(&mut out);
    reference.permissions(&mut out);
    out.text
}

/// A value syntax of its own (durations, file modes…). Its schema is
/// inlined into every field that uses it, with the field's description, so
/// a field is recognised by the rest of the schema: its pattern, its
/// alternatives or its examples.
struct Format {
    title: &'static str,
    schema: Value,
}

impl Format {
    fn of<T: JsonSchema>(title: &'static str) -> Format {
        let schema = T::json_schema(&mut SchemaGenerator::default()).to_value();
        Format { title, schema }
    }

    fn matches(&self, schema: &Value) -> bool {
        ["pattern", "anyOf", "examples"]
            .into_iter()
            .find_map(|key| self.schema.get(key).map(|own| schema.get(key) == Some(own)))
            .unwrap_or(false)
    }
}

/// How a definition is written, which decides how its section reads.
enum Shape<'a> {
    /// A map with named fields.
    Object(&'a Map<String, Value>),
    /// One of some strings, with a description of each when there is one.
    Enum(Vec<(String, Option<String>)>),
    /// An externally tagged enum: a plain string, or a map with one key.
    Union(Vec<Variant<'a>>),
    /// Anything else (a map of values, a choice of types).
    Other,
}

struct Variant<'a> {
    key: String,
    /// The value under the key; `None` for a plain string.
    value: Option<&'a Value>,
    description: String,
}

struct Reference {
    document: Value,
    definitions: Map<String, Value>,
    /// Each kind and the name of its definition.
    kinds: Vec<(Kind, String)>,
    formats: Vec<Format>,
    /// Every definition in the order of its section.
    order: Vec<String>,
    /// The nested types shown in each kind's section.
    own_types: BTreeMap<Kind, Vec<String>>,
    /// Nested types used by several kinds, shown once after the kinds.
    common: Vec<String>,
}

impl Reference {
    fn new() -> Reference {
        let document = schema::document_schema();
        let definitions = document
            .get("definitions")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let kinds: Vec<(Kind, String)> = Kind::ALL
            .into_iter()
            .filter_map(|kind| Some((kind, kind_definition(&document, kind)?)))
            .collect();
        let formats = vec![
            Format::of::<Duration>("duration"),
            Format::of::<FileMode>("file mode"),
            Format::of::<AbsPath>("absolute path"),
            Format::of::<CronSchedule>("cron schedule"),
            Format::of::<TimeZone>("time zone"),
            Format::of::<Amount>("count or percentage"),
        ];
        let mut reference = Reference {
            document,
            definitions,
            kinds,
            formats,
            order: Vec::new(),
            own_types: BTreeMap::new(),
            common: Vec::new(),
        };
        reference.place_types();
        reference
    }

    /// Puts each nested type in the section of the one kind that uses it,
    /// or among the common types when several kinds do. Within a section,
    /// types come in the order a reader meets them, depth first.
    fn place_types(&mut self) {
        let reachable: Vec<(Kind, Vec<String>)> = self
            .kinds
            .iter()
            .map(|(kind, name)| (*kind, self.reachable(name)))
            .collect();
        let mut n_kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, names) in &reachable {
            for name in names {
                *n_kinds.entry(name).or_default() += 1;
            }
        }
        let mut order = Vec::new();
        let mut shared = Vec::new();
        for ((kind, root), (_, names)) in self.kinds.iter().zip(&reachable) {
            let own: Vec<String> = names
                .iter()
                .filter(|name| n_kinds[name.as_str()] == 1)
                .cloned()
                .collect();
            for name in names {
                if n_kinds[name.as_str()] > 1 && !shared.contains(name) {
                    shared.push(name.clone());
                }
            }
            order.push(root.clone());
            order.extend(own.iter().cloned());
            self.own_types.insert(*kind, own);
        }
        let common = self.order_common(shared);
        order.extend(common.iter().cloned());
        self.order = order;
        self.common = common;
    }

    /// Orders the common types so that the ones that kinds use most come
    /// first, each followed (depth first) by the common types it uses.
    fn order_common(&self, mut shared: Vec<String>) -> Vec<String> {
        fn visit(reference: &Reference, name: &str, shared: &[String], ordered: &mut Vec<String>) {
            if ordered.iter().any(|seen| seen == name) || !shared.iter().any(|s| s == name) {
                return;
            }
            ordered.push(name.to_string());
            for child in reference.direct_references(name) {
                visit(reference, &child, shared, ordered);
            }
        }
        let n_kinds_using = |name: &String| {
            self.kinds
                .iter()
                .filter(|(_, root)| self.direct_references(root).contains(name))
                .count()
        };
        // A stable sort keeps the order of first use among equals.
        shared.sort_by_key(|name| std::cmp::Reverse(n_kinds_using(name)));
        let mut ordered = Vec::new();
        for name in &shared {
            visit(self, name, &shared, &mut ordered);
        }
        ordered
    }

    /// Definitions reachable from `root`, depth first.
    fn reachable(&self, root: &str) -> Vec<String> {
        fn visit(reference: &Reference, name: &str, root: &str, seen: &mut Vec<String>) {
            for child in reference.direct_references(name) {
                if child != root && !seen.contains(&child) {
                    seen.push(child.clone());
                    visit(reference, &child, root, seen);
                }
            }
        }
        let mut seen = Vec::new();
        visit(self, root, root, &mut seen);
        seen
    }

    /// Definitions that the definition `name` refers to, in order.
    fn direct_references(&self, name: &str) -> Vec<String> {
        fn walk(value: &Value, found: &mut Vec<String>) {
            match value {
                Value::Object(map) => {
                    if let Some(name) = definition_name(value)
                        && !found.iter().any(|seen| seen == name)
                    {
                        found.push(name.to_string());
                    }
                    map.values().for_each(|child| walk(child, found));
                }
                Value::Array(items) => items.iter().for_each(|item| walk(item, found)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        if let Some(definition) = self.definitions.get(name) {
            walk(definition, &mut found);
        }
        found
    }

    /// The fields (or union keys) of the definition `user` whose values
    /// refer to the definition `name`.
    fn keys_referring(&self, user: &str, name: &str) -> Vec<String> {
        fn refers(value: &Value, name: &str) -> bool {
            match value {
                Value::Object(map) => {
                    definition_name(value) == Some(name) || map.values().any(|v| refers(v, name))
                }
                Value::Array(items) => items.iter().any(|item| refers(item, name)),
                _ => false,
            }
        }
        let Some(definition) = self.definitions.get(user) else {
            return Vec::new();
        };
        let branches = definition.get("oneOf").and_then(Value::as_array);
        let objects = std::iter::once(definition).chain(branches.into_iter().flatten());
        objects
            .filter_map(|object| object.get("properties").and_then(Value::as_object))
            .flatten()
            .filter(|(_, value)| refers(value, name))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// What a kind's documents declare: the description of its `kind`.
    fn summary(&self, name: &str) -> String {
        self.definitions
            .get(name)
            .and_then(|definition| definition.pointer("/properties/kind"))
            .map(description)
            .unwrap_or_default()
    }

    /// The section title of a definition.
    fn title(&self, name: &str) -> String {
        match self.kinds.iter().find(|(_, root)| root == name) {
            Some((kind, _)) => kind.as_str().to_string(),
            None => humanize(name.strip_suffix("Spec").unwrap_or(name)),
        }
    }

    fn link(&self, name: &str) -> String {
        let title = self.title(name);
        format!("[{title}](#{})", anchor(&title))
    }

    fn introduction(&self, out: &mut Markdown) {
        out.line("# Fleet repo reference");
        out.blank();
        out.line(
            "<!-- Generated from the JSON Schemas by `muster_schemas::reference::markdown()`; \
             do not edit. Run `cargo test -p muster-schemas --test generated` to update it. -->",
        );
        out.blank();
        out.paragraph(
            "A Muster fleet repo is a git repository of YAML documents that declare the \
             desired state of a fleet of Linux hosts: which hosts exist and how they are \
             grouped, the policies they must follow, the scripts operators may run, alerts, \
             maintenance windows and who may do what. This reference describes every kind \
             of document and every field. It is generated from the JSON Schemas in \
             [`schemas/json/`](../schemas/json/), the same ones editors use to check fleet \
             files, so the two always agree.",
        );
    }

    fn contents(&self, out: &mut Markdown) {
        out.line("## Contents");
        out.blank();
        out.line("- [Documents](#documents)");
        out.line("- [Editor support](#editor-support)");
        for (kind, name) in &self.kinds {
            let own = &self.own_types[kind];
            if own.is_empty() {
                out.line(format!("- {}", self.link(name)));
            } else {
                let links: Vec<String> = own.iter().map(|name| self.link(name)).collect();
                out.line(format!("- {}: {}", self.link(name), links.join(", ")));
            }
        }
        let common: Vec<String> = self.common.iter().map(|name| self.link(name)).collect();
        out.line(format!(
            "- [Common types](#common-types): {}",
            common.join(", ")
        ));
        let formats: Vec<String> = self
            .used_formats()
            .iter()
            .map(|format| format!("[{}](#{})", format.title, anchor(format.title)))
            .collect();
        out.line(format!(
            "- [Value formats](#value-formats): {}",
            formats.join(", ")
        ));
        out.line("- [Resource ids](#resource-ids)");
        out.line("- [Permissions](#permissions)");
        out.blank();
    }

    fn documents(&self, out: &mut Markdown) {
        out.line("## Documents");
        out.blank();
        out.paragraph(
            "Muster reads every file in the repo whose name ends in `.yaml` or `.yml`, \
             except files in directories whose name starts with a dot (such as `.github/`) \
             and files that a document uses as its `source`. A file may hold several \
             documents, separated by lines of `---`.",
        );
        out.paragraph(format!(
            "Every document starts with the same fields: `apiVersion: {API_VERSION}`, the \
             `kind` of document, and a `name` that is unique among the documents of its \
             kind. The other fields depend on the kind. Unknown fields are errors, and \
             `muster validate` reports every problem in the repo at once."
        ));
        let envelope = self
            .document
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let required = required_fields(&self.document);
        self.field_table(out, &envelope, &required);
        out.paragraph("For example, a file that declares a group of hosts and a policy for them:");
        out.line("```yaml");
        out.text.push_str(EXAMPLE);
        out.line("```");
        out.blank();
        out.paragraph("The kinds of document:");
        out.table(
            &["Kind", "What it declares", "Schema"],
            self.kinds.iter().map(|(kind, name)| {
                let file = schema::file_name(*kind);
                vec![
                    self.link(name),
                    self.summary(name),
                    format!("[`{file}`](../schemas/json/{file})"),
                ]
            }),
        );
    }

    fn editor_support(&self, out: &mut Markdown) {
        let document_file = schema::DOCUMENT_SCHEMA_FILE;
        out.line("## Editor support");
        out.blank();
        out.paragraph(format!(
            "Every kind has a JSON Schema (draft-07) in \
             [`schemas/json/`](../schemas/json/), and \
             [`{document_file}`](../schemas/json/{document_file}) accepts a document of \
             any kind, choosing the kind's schema by its `kind` field. `muster schema \
             --write DIR` writes them all into a directory. A dot-directory of the fleet \
             repo is a good place, since Muster does not look for documents there:"
        ));
        out.line("```sh");
        out.line("muster schema --write .schemas");
        out.line("```");
        out.blank();
        out.paragraph(
            "Editors that use [yaml-language-server](https://github.com/redhat-developer/yaml-language-server) \
             (VS Code's YAML extension, Neovim, Helix, Zed and others) then complete, \
             describe and check fields as you type. Point a file at its schema with a \
             comment on its first line; a relative path is resolved from the YAML file, \
             so `policies/nginx.yaml` would start with:",
        );
        out.line("```yaml");
        out.line(format!(
            "# yaml-language-server: $schema=../.schemas/{}",
            schema::file_name(Kind::Policy)
        ));
        out.line("```");
        out.blank();
        out.paragraph(format!(
            "Use `{document_file}` for files that mix kinds, as in the example above, or map \
             file patterns to schemas once in the editor's `yaml.schemas` setting instead."
        ));
    }

    fn kind_section(&self, out: &mut Markdown, kind: Kind, name: &str) {
        let Some(definition) = self.definitions.get(name) else {
            return;
        };
        out.line(format!("## {}", self.title(name)));
        out.blank();
        let summary = self.summary(name);
        out.paragraph(&summary);
        // The model's doc comment often says more than the summary, but
        // sometimes only rephrases it, or says less.
        let description = description(definition);
        let says_more = description.len() > summary.len()
            && strsim::normalized_levenshtein(&summary, &description) < REPHRASED;
        if says_more {
            out.paragraph(description);
        }
        let file = schema::file_name(kind);
        out.paragraph(format!("Schema: [`{file}`](../schemas/json/{file})"));
        if let Some(properties) = definition.get("properties").and_then(Value::as_object) {
            self.field_table(out, properties, &required_fields(definition));
        }
        match kind {
            Kind::Policy => out.paragraph(
                "Each resource has an id, used in `depends_on` and `restart_on`: see \
                 [Resource ids](#resource-ids).",
            ),
            Kind::Role => out.paragraph(
                "The permissions a role can grant are listed under \
                 [Permissions](#permissions).",
            ),
            _ => {}
        }
        for nested in &self.own_types[&kind] {
            self.type_section(out, nested);
        }
    }

    fn common_types(&self, out: &mut Markdown) {
        out.line("## Common types");
        out.blank();
        out.paragraph("Types used by more than one kind of document.");
        for name in &self.common {
            self.type_section(out, name);
        }
    }

    fn type_section(&self, out: &mut Markdown, name: &str) {
        let Some(definition) = self.definitions.get(name) else {
            return;
        };
        out.line(format!("### {}", self.title(name)));
        out.blank();
        let description = description(definition);
        if !description.is_empty() {
            out.paragraph(description);
        }
        let users: Vec<String> = self
            .order
            .iter()
            .filter(|user| self.direct_references(user).iter().any(|r| r == name))
            .map(|user| {
                let keys = self.keys_referring(user, name);
                if keys.is_empty() {
                    self.link(user)
                } else {
                    let keys: Vec<String> = keys.iter().map(|key| code(key)).collect();
                    format!("{} ({})", self.link(user), keys.join(", "))
                }
            })
            .collect();
        if !users.is_empty() {
            out.paragraph(format!("Used in {}.", users.join(", ")));
        }
        match shape(definition) {
            Shape::Object(properties) => {
                self.field_table(out, properties, &required_fields(definition));
            }
            Shape::Enum(values) => {
                if values.iter().all(|(_, description)| description.is_none()) {
                    let values: Vec<String> = values.iter().map(|(value, _)| code(value)).collect();
                    out.paragraph(format!("One of {}.", values.join(", ")));
                } else {
                    out.table(
                        &["Value", "Description"],
                        values.into_iter().map(|(value, description)| {
                            vec![code(&value), description.unwrap_or_default()]
                        }),
                    );
                }
            }
            Shape::Union(variants) => {
                let any_plain = variants.iter().any(|variant| variant.value.is_none());
                let any_map = variants.iter().any(|variant| variant.value.is_some());
                out.paragraph(match (any_plain, any_map) {
                    (true, true) => "Write one of the plain values below, or a map with exactly one of the keys below:",
                    (false, _) => "Write a map with exactly one of these keys; the type of its value depends on the key:",
                    (true, false) => "Write one of these values:",
                });
                out.table(
                    &["Form", "Value", "Description"],
                    variants.into_iter().map(|variant| match variant.value {
                        Some(value) => vec![
                            code(&format!("{}: …", variant.key)),
                            self.type_name(value),
                            variant.description,
                        ],
                        None => vec![code(&variant.key), "—".into(), variant.description],
                    }),
                );
            }
            Shape::Other => out.paragraph(format!("Type: {}.", self.type_name(definition))),
        }
    }

    fn value_formats(&self, out: &mut Markdown) {
        out.line("## Value formats");
        out.blank();
        out.paragraph(
            "Values with a syntax of their own. The fields that take them name the format \
             as their type.",
        );
        for format in self.used_formats() {
            out.line(format!("### {}", format.title));
            out.blank();
            let description = description(&format.schema);
            if !description.is_empty() {
                out.paragraph(description);
            }
            if let Some(examples) = format.schema.get("examples").and_then(Value::as_array) {
                let examples: Vec<String> = examples.iter().map(|e| code(&flow(e))).collect();
                out.paragraph(format!("Examples: {}.", examples.join(", ")));
            }
        }
    }

    /// The formats that some field uses, in a fixed order.
    fn used_formats(&self) -> Vec<&Format> {
        fn uses(value: &Value, format: &Format) -> bool {
            match value {
                Value::Object(map) => {
                    format.matches(value) || map.values().any(|v| uses(v, format))
                }
                Value::Array(items) => items.iter().any(|item| uses(item, format)),
                _ => false,
            }
        }
        self.formats
            .iter()
            .filter(|format| uses(&self.document, format))
            .collect()
    }

    fn resource_ids(&self, out: &mut Markdown) {
        out.line("## Resource ids");
        out.blank();
        let Some(resource) = self.definitions.get(RESOURCE) else {
            return;
        };
        out.paragraph(format!(
            "Every resource of a policy has a stable id: its type (its key in {}), a colon, \
             and the field that names it on the host, such as `file:/etc/motd` or \
             `package:nginx`. Resources name each other by id in `depends_on` and \
             `restart_on`, and reports name them by id too.",
            self.link(RESOURCE)
        ));
        let Shape::Union(variants) = shape(resource) else {
            return;
        };
        let mut rows = Vec::new();
        for variant in variants {
            let Some(value) = variant.value else { continue };
            let Some(target) = definition_name(unwrap_nullable(value)) else {
                continue;
            };
            let properties = self
                .definitions
                .get(target)
                .and_then(|definition| definition.get("properties"))
                .and_then(Value::as_object);
            let Some(field) = ["path", "name"]
                .into_iter()
                .find(|field| properties.is_some_and(|p| p.contains_key(*field)))
            else {
                continue;
            };
            rows.push(vec![
                self.link(target),
                code(&format!("{}:<{field}>", variant.key)),
            ]);
        }
        out.table(&["Resource", "Id"], rows);
    }

    fn permissions(&self, out: &mut Markdown) {
        out.line("## Permissions");
        out.blank();
        out.paragraph(
            "What a [Role](#role) can grant, in its `permissions`. A \
             [RoleBinding](#rolebinding) grants a role's permissions to users, teams and \
             API tokens, on the hosts of its scope.",
        );
        let mut rows = Vec::new();
        for (permission, grants) in PERMISSIONS {
            rows.push(vec![code(permission), (*grants).to_string()]);
            if format!("{permission}:") == SCRIPT_RUN_PREFIX {
                rows.push(vec![
                    code(&format!("{SCRIPT_RUN_PREFIX}<script>")),
                    "run the script named `<script>` only".to_string(),
                ]);
            }
        }
        out.table(&["Permission", "Grants"], rows);
    }

    /// A table of an object's fields.
    fn field_table(&self, out: &mut Markdown, properties: &Map<String, Value>, required: &[&str]) {
        out.table(
            &["Field", "Type", "Required", "Default", "Description"],
            properties.iter().map(|(field, schema)| {
                let is_required = required.contains(&field.as_str());
                vec![
                    code(field),
                    self.type_name(schema),
                    if is_required { "yes" } else { "no" }.to_string(),
                    self.default_value(schema),
                    description(schema),
                ]
            }),
        );
    }

    /// The type of a value, as users read it: `string`, `list of string`,
    /// a format, or a link to a nested type.
    fn type_name(&self, schema: &Value) -> String {
        let schema = unwrap_nullable(schema);
        if let Some(format) = self.formats.iter().find(|format| format.matches(schema)) {
            return format!("[{}](#{})", format.title, anchor(format.title));
        }
        if let Some(name) = definition_name(schema) {
            return self.link(name);
        }
        if let Some(value) = schema.get("const") {
            return code(&flow(value));
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            let values: Vec<String> = values.iter().map(|value| code(&flow(value))).collect();
            return format!("one of {}", values.join(", "));
        }
        if let Some(choices) = schema.get("anyOf").and_then(Value::as_array) {
            let names: Vec<String> = choices
                .iter()
                .map(|choice| self.type_name(choice))
                .collect();
            return names.join(" or ");
        }
        let types: Vec<&str> = match schema.get("type") {
            Some(Value::String(name)) => vec![name.as_str()],
            Some(Value::Array(names)) => names
                .iter()
                .filter_map(Value::as_str)
                .filter(|name| *name != "null")
                .collect(),
            _ => Vec::new(),
        };
        match types.as_slice() {
            ["array"] => match schema.get("items") {
                Some(items) => format!("list of {}", self.type_name(items)),
                None => "list".to_string(),
            },
            ["object"] => match schema.get("additionalProperties") {
                Some(Value::Bool(false)) => "map".to_string(),
                Some(Value::Object(values)) => {
                    format!(
                        "map of string to {}",
                        self.type_name(&Value::Object(values.clone()))
                    )
                }
                _ => "map of string to any value".to_string(),
            },
            [] => "any value".to_string(),
            names => names.join(" or "),
        }
    }

    fn default_value(&self, schema: &Value) -> String {
        let Some(default) = schema.get("default") else {
            return "—".to_string();
        };
        if let Value::Object(fields) = default
            && !fields.is_empty()
            && self.is_fields_defaults(schema, fields)
        {
            return "the fields' defaults".to_string();
        }
        code(&flow(default))
    }

    /// Whether an object default is just the defaults of the object's own
    /// fields, which the nested type's table already shows.
    fn is_fields_defaults(&self, schema: &Value, fields: &Map<String, Value>) -> bool {
        let Some(properties) = definition_name(unwrap_nullable(schema))
            .and_then(|name| self.definitions.get(name))
            .and_then(|definition| definition.get("properties"))
        else {
            return false;
        };
        fields.iter().all(|(field, value)| {
            properties.get(field).and_then(|p| p.get("default")) == Some(value)
        })
    }
}

/// The name of the definition of a kind in the document schema.
fn kind_definition(document: &Value, kind: Kind) -> Option<String> {
    document
        .get("allOf")?
        .as_array()?
        .iter()
        .find(|branch| {
            branch
                .pointer("/if/properties/kind/const")
                .and_then(Value::as_str)
                == Some(kind.as_str())
        })
        .and_then(|branch| definition_name(branch.get("then")?))
        .map(str::to_string)
}

/// The definition a schema refers to with `$ref`.
fn definition_name(schema: &Value) -> Option<&str> {
    schema.get("$ref")?.as_str()?.strip_prefix("#/definitions/")
}

/// The schema of a value without what only makes it optional: a
/// `{"type": "null"}` alternative, or the single-item `allOf` that carries
/// a field's description next to a reference.
fn unwrap_nullable(schema: &Value) -> &Value {
    if let Some(Value::Array(all)) = schema.get("allOf")
        && let [single] = all.as_slice()
    {
        return unwrap_nullable(single);
    }
    if let Some(Value::Array(any)) = schema.get("anyOf") {
        let not_null: Vec<&Value> = any
            .iter()
            .filter(|choice| choice.get("type") != Some(&Value::from("null")))
            .collect();
        if let [single] = not_null.as_slice()
            && not_null.len() < any.len()
        {
            return unwrap_nullable(single);
        }
    }
    schema
}

fn shape(definition: &Value) -> Shape<'_> {
    if let Some(properties) = definition.get("properties").and_then(Value::as_object) {
        return Shape::Object(properties);
    }
    if let Some(values) = definition.get("enum").and_then(Value::as_array) {
        return Shape::Enum(values.iter().map(|value| (flow(value), None)).collect());
    }
    let Some(branches) = definition.get("oneOf").and_then(Value::as_array) else {
        return Shape::Other;
    };
    let mut variants = Vec::new();
    for branch in branches {
        let description = description(branch);
        if let Some(value) = branch.get("const") {
            variants.push(Variant {
                key: flow(value),
                value: None,
                description,
            });
            continue;
        }
        let Some(properties) = branch.get("properties").and_then(Value::as_object) else {
            return Shape::Other;
        };
        let mut properties = properties.iter();
        let (Some((key, value)), None) = (properties.next(), properties.next()) else {
            return Shape::Other;
        };
        variants.push(Variant {
            key: key.clone(),
            value: Some(value),
            description,
        });
    }
    if variants.iter().all(|variant| variant.value.is_none()) {
        let values = variants
            .into_iter()
            .map(|variant| {
                (
                    variant.key,
                    Some(variant.description).filter(|d| !d.is_empty()),
                )
            })
            .collect();
        return Shape::Enum(values);
    }
    Shape::Union(variants)
}

fn required_fields(schema: &Value) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A schema's description on one line.
fn description(schema: &Value) -> String {
    one_line(
        schema
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    )
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `AgentSettings` → `Agent settings`.
fn humanize(name: &str) -> String {
    let mut title = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            title.push(' ');
            title.push(c.to_ascii_lowercase());
        } else {
            title.push(c);
        }
    }
    title
}

/// The anchor GitHub gives a heading.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Inline code, fenced so that backticks in the text survive.
fn code(text: &str) -> String {
    if text.contains('`') {
        format!("`` {text} ``")
    } else {
        format!("`{text}`")
    }
}

/// A value in YAML flow style, as a user would write it.
fn flow(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(text) if is_plain_scalar(text) => text.clone(),
        Value::String(text) => Value::from(text.as_str()).to_string(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(flow).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(fields) => {
            let fields: Vec<String> = fields
                .iter()
                .map(|(key, value)| format!("{key}: {}", flow(value)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

/// Whether YAML reads `text` unquoted as this same string.
fn is_plain_scalar(text: &str) -> bool {
    let starts_well = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '/');
    let safe = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-%".contains(c));
    let looks_like_other_type = text.parse::<f64>().is_ok()
        || ["true", "false", "yes", "no", "on", "off", "null", "y", "n"]
            .contains(&text.to_ascii_lowercase().as_str());
    starts_well && safe && !looks_like_other_type
}

/// Markdown being written, one block at a time.
#[derive(Default)]
struct Markdown {
    text: String,
}

impl Markdown {
    fn line(&mut self, line: impl AsRef<str>) {
        self.text.push_str(line.as_ref());
        self.text.push('\n');
    }

    fn blank(&mut self) {
        self.text.push('\n');
    }

    fn paragraph(&mut self, text: impl AsRef<str>) {
        self.line(text);
        self.blank();
    }

    /// A table; cells are put on one line and their `|` escaped.
    fn table(&mut self, header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) {
        self.line(format!("| {} |", header.join(" | ")));
        self.line(format!("|{}|", vec!["---"; header.len()].join("|")));
        for row in rows {
            let cells: Vec<String> = row
                .iter()
                .map(|cell| one_line(cell).replace('|', "\\|"))
                .collect();
            self.line(format!("| {} |", cells.join(" | ")));
        }
        self.blank();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::model::ResourceType;

    fn headings(text: &str) -> Vec<String> {
        let mut in_code = false;
        let mut headings = Vec::new();
        for line in text.lines() {
            if line.starts_with("```") {
                in_code = !in_code;
            } else if !in_code && line.starts_with('#') {
                headings.push(line.trim_start_matches('#').trim().to_string());
            }
        }
        headings
    }

    #[test]
    fn is_deterministic() {
        assert_eq!(markdown(), markdown());
    }

    #[test]
    fn anchors_are_unique_and_links_resolve() {
        let text = markdown();
        let mut anchors = BTreeSet::new();
        for heading in headings(&text) {
            assert!(
                anchors.insert(anchor(&heading)),
                "two headings are `{heading}`"
            );
        }
        for (i, _) in text.match_indices("](#") {
            let rest = &text[i + 3..];
            let target = &rest[..rest.find(')').unwrap()];
            assert!(anchors.contains(target), "no heading for link `#{target}`");
        }
    }

    #[test]
    fn every_kind_and_definition_has_a_section() {
        let reference = Reference::new();
        assert_eq!(reference.kinds.len(), Kind::ALL.len());
        let headings = headings(&markdown());
        for name in reference.definitions.keys() {
            let title = reference.title(name);
            assert!(headings.contains(&title), "no section for {name} ({title})");
        }
        let mut placed = reference.order.clone();
        placed.sort();
        placed.dedup();
        assert_eq!(placed.len(), reference.order.len(), "a type is shown twice");
        assert_eq!(placed.len(), reference.definitions.len());
    }

    #[test]
    fn every_field_has_a_readable_type() {
        // Template variables, script parameters and their defaults take any
        // value; any other field shown so has a schema the renderer missed.
        const ANY_VALUE_FIELDS: [&str; 3] = ["vars", "params", "default"];
        let reference = Reference::new();
        for definition in reference.definitions.values() {
            if let Some(properties) = definition.get("properties").and_then(Value::as_object) {
                for (field, schema) in properties {
                    let name = reference.type_name(schema);
                    assert!(
                        !name.contains("any value") || ANY_VALUE_FIELDS.contains(&field.as_str()),
                        "{field}: {name}"
                    );
                    assert!(
                        !name.is_empty() && name != "map" && name != "list",
                        "{field}: {name}"
                    );
                }
            }
        }
    }

    #[test]
    fn tables_are_well_formed() {
        let text = markdown();
        let mut columns = None;
        for line in text.lines() {
            if line.starts_with('|') {
                let n = line.replace("\\|", "").matches('|').count();
                assert_eq!(*columns.get_or_insert(n), n, "ragged table row: {line}");
            } else {
                columns = None;
            }
        }
    }

    #[test]
    fn lists_every_resource_id_and_permission() {
        let text = markdown();
        for resource_type in ResourceType::ALL {
            assert!(
                text.contains(&format!("`{resource_type}:<")),
                "{resource_type}"
            );
        }
        for (permission, _) in PERMISSIONS {
            assert!(
                text.contains(&format!("| `{permission}` |")),
                "{permission}"
            );
        }
        assert!(text.contains(&format!("`{SCRIPT_RUN_PREFIX}<script>`")));
    }

    #[test]
    fn example_is_a_valid_fleet_file() {
        let validation = crate::load_repo(
            [("example.yaml", EXAMPLE.as_bytes())],
            &BTreeSet::from(["example.yaml".to_string()]),
        );
        assert_eq!(validation.n_errors(), 0, "{:#?}", validation.diagnostics);
        assert_eq!(validation.n_documents, 2);
    }

    #[test]
    fn plain_scalars() {
        assert_eq!(flow(&Value::from("5m")), "5m");
        assert_eq!(flow(&Value::from("/bin/sh")), "/bin/sh");
        assert_eq!(flow(&Value::from("0644")), "\"0644\"");
        assert_eq!(flow(&Value::from("yes")), "\"yes\"");
        assert_eq!(flow(&Value::from("")), "\"\"");
        assert_eq!(
            humanize("CommitSignatureSettings"),
            "Commit signature settings"
        );
        assert_eq!(
            anchor("Commit signature settings"),
            "commit-signature-settings"
        );
    }
}
