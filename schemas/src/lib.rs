//! The Muster fleet-repo model, its validation, and its JSON Schemas.
//!
//! This crate does no I/O: callers hand it file contents and the list of
//! files in the repo, and get back a validated [`model::FleetModel`] or
//! every [`Diagnostic`] at once.

pub mod bundle;
pub mod cron;
pub mod de;
pub mod diagnostic;
pub mod job;
pub mod load;
pub mod model;
pub mod protocol;
pub mod reference;
pub mod schema;
pub mod signed;
pub mod suggest;
pub mod types;
pub mod validate;
pub mod yaml;

use std::collections::BTreeSet;

pub use diagnostic::{Diagnostic, Severity};
pub use load::{ParsedFile, is_fleet_file, parse_file};
pub use model::{FleetModel, Kind};
pub use validate::{Validation, validate};

/// Parses and validates a whole repo given as `(path, bytes)` pairs of its
/// fleet files, plus the list of every file in it.
pub fn load_repo<'a, I>(fleet_files: I, repo_files: &BTreeSet<String>) -> Validation
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let parsed = fleet_files
        .into_iter()
        .map(|(path, bytes)| parse_file(path, bytes))
        .collect();
    validate(parsed, repo_files)
}
