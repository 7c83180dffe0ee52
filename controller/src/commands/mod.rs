//! One module per `muster` subcommand.

pub mod actions;
pub mod admin;
pub mod audit;
pub mod plan;
pub mod quickstart;
pub mod schedules;
pub mod schema;
pub mod serve;
pub mod users;
pub mod validate;
