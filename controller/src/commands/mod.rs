//! One module per `muster` subcommand.

pub mod schema;
pub mod validate;
