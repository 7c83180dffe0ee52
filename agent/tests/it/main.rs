//! The agent's integration tests, one binary: the resource engine on temp
//! roots with stand-in system tools (`resources`), sharing the helpers in
//! `support`.

mod resources;
mod support;
