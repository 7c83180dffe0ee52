//! Muster's dashboard views: pure presentation. Handlers in the controller
//! load data, build the view models defined here and call a `render`
//! function; this crate turns them into HTML and serves the static assets
//! (CSS, vendored htmx and its SSE extension). It knows nothing of the
//! database, of RBAC or of HTTP: what a user may see or do arrives already
//! decided, as fields of the view models.
//!
//! Pages work without JavaScript for reading; htmx only enhances them:
//! regions marked live re-fetch themselves when the server-sent event
//! stream (`/events`) names their topic.

pub mod assets;
pub mod audit;
pub mod chart;
pub mod commits;
pub mod enrollment;
pub mod hosts;
pub mod jobs;
pub mod layout;
pub mod overview;
pub mod parts;

pub use layout::{Chrome, Nav, Section};
pub use maud::{Markup, PreEscaped, html};
