//! The dashboard's commits page (being built).

use axum::Router;

use crate::server::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
}
