//! The resource engine against temp roots and stand-in tools: a timeline
//! per resource kind, path attacks, dependencies, secrets, and commands.

mod accounts;
mod commands;
mod converge;
mod exec;
mod files;
mod packages;
mod path_attacks;
mod services;
