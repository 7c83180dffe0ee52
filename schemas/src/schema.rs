//! JSON Schemas of the fleet-repo documents, generated from the model.
//!
//! One schema per kind, and one for any document that picks the kind's
//! schema by its `kind` field. They are committed under `schemas/json/`
//! for editors (yaml-language-server) and checked for freshness by a test.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::model::*;

/// File name of the schema of any document.
pub const DOCUMENT_SCHEMA_FILE: &str = "document.json";

fn generator() -> SchemaGenerator {
    // Draft-07 is the draft yaml-language-server and most editors know best.
    SchemaSettings::draft07().for_deserialize().into_generator()
}

/// The file name of a kind's schema, such as `role-binding.json`.
pub fn file_name(kind: Kind) -> String {
    let mut name = String::new();
    for (i, c) in kind.as_str().chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('-');
        }
        name.push(c.to_ascii_lowercase());
    }
    name + ".json"
}

fn subschema(generator: &mut SchemaGenerator, kind: Kind) -> Schema {
    fn of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
        generator.subschema_for::<T>()
    }
    match kind {
        Kind::Fleet => of::<FleetSpec>(generator),
        Kind::Host => of::<HostSpec>(generator),
        Kind::Group => of::<GroupSpec>(generator),
        Kind::Policy => of::<PolicySpec>(generator),
        Kind::Script => of::<ScriptSpec>(generator),
        Kind::AlertRule => of::<AlertRuleSpec>(generator),
        Kind::Channel => of::<ChannelSpec>(generator),
        Kind::Window => of::<WindowSpec>(generator),
        Kind::Role => of::<RoleSpec>(generator),
        Kind::RoleBinding => of::<RoleBindingSpec>(generator),
        Kind::Team => of::<TeamSpec>(generator),
    }
}

/// Adds the `apiVersion` and `kind` envelope to a kind's object schema.
fn add_envelope(schema: &mut Map<String, Value>, kind: Kind) {
    let mut properties = Map::new();
    properties.insert(
        "apiVersion".into(),
        json!({ "description": "The document format version.", "const": API_VERSION }),
    );
    properties.insert(
        "kind".into(),
        json!({ "description": kind.summary(), "const": kind.as_str() }),
    );
    if let Some(Value::Object(existing)) = schema.remove("properties") {
        properties.extend(existing);
    }
    schema.insert("properties".into(), Value::Object(properties));
    let mut required = vec![json!("apiVersion"), json!("kind")];
    if let Some(Value::Array(existing)) = schema.remove("required") {
        required.extend(existing);
    }
    schema.insert("required".into(), Value::Array(required));
}

/// The schema of one kind's documents.
pub fn kind_schema(kind: Kind) -> Value {
    let mut generator = generator();
    let reference = subschema(&mut generator, kind);
    let mut definitions = generator.take_definitions(true);
    let name = definition_name(&reference);
    let Some(Value::Object(mut root)) = definitions.remove(&name) else {
        return reference.to_value();
    };
    add_envelope(&mut root, kind);
    let mut schema = Map::new();
    schema.insert(
        "$schema".into(),
        json!("http://json-schema.org/draft-07/schema#"),
    );
    schema.insert("title".into(), json!(format!("Muster {kind}")));
    schema.extend(root);
    schema.insert("description".into(), json!(kind.summary()));
    if !definitions.is_empty() {
        schema.insert("definitions".into(), Value::Object(definitions));
    }
    let mut schema = Value::Object(schema);
    describe_variants(&mut schema);
    schema
}

/// The schema of any fleet document: the kind's schema, chosen by `kind`.
pub fn document_schema() -> Value {
    let mut generator = generator();
    let references: Vec<(Kind, Schema)> = Kind::ALL
        .into_iter()
        .map(|kind| (kind, subschema(&mut generator, kind)))
        .collect();
    let mut definitions = generator.take_definitions(true);
    let mut branches = Vec::new();
    for (kind, reference) in &references {
        let name = definition_name(reference);
        if let Some(Value::Object(definition)) = definitions.get_mut(&name) {
            add_envelope(definition, *kind);
        }
        branches.push(json!({
            "if": { "properties": { "kind": { "const": kind.as_str() } }, "required": ["kind"] },
            "then": reference.as_value(),
        }));
    }
    let kinds: Vec<&str> = Kind::ALL.iter().map(|kind| kind.as_str()).collect();
    let mut schema = json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Muster fleet document",
        "description": "Any document of a Muster fleet repo; `kind` selects its schema.",
        "type": "object",
        "required": ["apiVersion", "kind", "name"],
        "properties": {
            "apiVersion": { "description": "The document format version.", "const": API_VERSION },
            "kind": { "description": "What the document declares.", "enum": kinds },
            "name": { "description": "The document's name, unique within its kind.", "type": "string" }
        },
        "allOf": branches,
        "definitions": definitions,
    });
    describe_variants(&mut schema);
    schema
}

/// Copies the description of each externally tagged enum variant (a
/// `oneOf` branch with one property) onto that property, where editors
/// show it when hovering the key.
fn describe_variants(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(branches)) = map.get_mut("oneOf") {
                for branch in branches.iter_mut() {
                    let Some(description) = branch.get("description").cloned() else {
                        continue;
                    };
                    let Some(Value::Object(properties)) = branch.get_mut("properties") else {
                        continue;
                    };
                    if properties.len() != 1 {
                        continue;
                    }
                    for property in properties.values_mut() {
                        if property.get("description").is_none() {
                            let inner = property.take();
                            *property = json!({ "description": description, "allOf": [inner] });
                        }
                    }
                }
            }
            map.values_mut().for_each(describe_variants);
        }
        Value::Array(items) => items.iter_mut().for_each(describe_variants),
        _ => {}
    }
}

fn definition_name(reference: &Schema) -> String {
    reference
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
        .unwrap_or_default()
        .to_string()
}

/// Every schema file: `(file name, pretty JSON with a final newline)`.
pub fn all_files() -> Vec<(String, String)> {
    let render = |value: &Value| {
        let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
        text.push('\n');
        text
    };
    let mut files = vec![(DOCUMENT_SCHEMA_FILE.to_string(), render(&document_schema()))];
    for kind in Kind::ALL {
        files.push((file_name(kind), render(&kind_schema(kind))));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(file_name(Kind::RoleBinding), "role-binding.json");
        assert_eq!(file_name(Kind::Policy), "policy.json");
        assert_eq!(file_name(Kind::AlertRule), "alert-rule.json");
    }

    #[test]
    fn kind_schemas_carry_the_envelope_and_forbid_unknown_keys() {
        for kind in Kind::ALL {
            let schema = kind_schema(kind);
            assert_eq!(schema["properties"]["kind"]["const"], kind.as_str());
            assert_eq!(schema["additionalProperties"], false, "{kind}");
            let required: Vec<&str> = schema["required"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert!(
                required.starts_with(&["apiVersion", "kind", "name"]),
                "{kind}: {required:?}"
            );
        }
    }

    #[test]
    fn every_field_is_described() {
        fn walk(value: &Value, path: &str, missing: &mut Vec<String>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::Object(properties)) = map.get("properties") {
                        for (name, property) in properties {
                            if property.get("description").is_none() {
                                missing.push(format!("{path}.{name}"));
                            }
                        }
                    }
                    for (key, child) in map.iter().filter(|(key, _)| *key != "if") {
                        walk(child, &format!("{path}/{key}"), missing);
                    }
                }
                Value::Array(items) => items.iter().for_each(|item| walk(item, path, missing)),
                _ => {}
            }
        }
        let mut missing = Vec::new();
        walk(&document_schema(), "", &mut missing);
        assert!(
            missing.is_empty(),
            "fields without a description: {missing:#?}"
        );
    }
}
