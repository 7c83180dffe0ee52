//! `muster schema`: print or write the JSON Schemas of fleet documents.

use std::fs;
use std::process::ExitCode;

use muster_schemas::Kind;
use muster_schemas::schema;

use crate::Error;
use crate::cli::SchemaArgs;

pub fn run(args: &SchemaArgs) -> Result<ExitCode, Error> {
    if let Some(dir) = &args.write {
        fs::create_dir_all(dir)
            .map_err(|err| Error::io(format!("cannot create `{}`", dir.display()), err))?;
        for (name, text) in schema::all_files() {
            let path = dir.join(&name);
            fs::write(&path, text)
                .map_err(|err| Error::io(format!("cannot write `{}`", path.display()), err))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let value = match &args.kind {
        None => schema::document_schema(),
        Some(name) => schema::kind_schema(parse_kind(name)?),
    };
    let text = serde_json::to_string_pretty(&value).unwrap_or_default();
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// Accepts a kind as written in documents (`RoleBinding`), in lowercase,
/// or as its schema file is named (`role-binding`).
fn parse_kind(name: &str) -> Result<Kind, Error> {
    let wanted: String = name
        .chars()
        .filter(|c| *c != '-' && *c != '_')
        .collect::<String>()
        .to_ascii_lowercase();
    Kind::ALL
        .into_iter()
        .find(|kind| kind.as_str().to_ascii_lowercase() == wanted)
        .ok_or_else(|| {
            let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            Error::Usage(format!(
                "unknown kind `{name}`: expected one of {}",
                kinds.join(", ")
            ))
        })
}
