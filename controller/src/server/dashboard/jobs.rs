//! The dashboard's jobs page (being built).

use axum::Router;

use crate::server::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
}
