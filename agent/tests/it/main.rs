//! The agent's integration tests, one binary: the job runner (`jobs`),
//! `check`/`apply` run as a user would (`local`), the state dir (`state`),
//! the resource engine on temp roots with stand-in system tools
//! (`resources`), sharing the helpers in `support`.

mod crash;
mod jobs;
mod local;
mod resources;
mod state;
mod support;
