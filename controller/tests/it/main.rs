//! Integration tests of the `muster` command and the controller library.

mod actions;
mod admin;
mod agents;
mod agents_attacks;
mod agents_offline;
mod audit;
mod cli;
mod controller;
mod corpus;
mod dashboard;
mod dashboard_admin;
mod dashboard_hosts;
mod dashboard_jobs;
mod db;
mod harness;
mod jobs;
mod jobs_store;
mod plan;
mod quickstart;
mod rbac;
mod robustness;
mod scheduler;
mod source;
mod store;
mod support;
mod users;
