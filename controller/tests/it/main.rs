//! Integration tests of the `muster` command and the controller library.

mod cli;
mod corpus;
mod db;
mod robustness;
mod store;
