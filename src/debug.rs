//! A debug page for operators (feature `debug`): [`routes`] gives an axum router that serves
//! `GET /debug/registry`, the [`RegistrySnapshot`] as JSON, and
//! `GET /debug`, a page built from it that refreshes itself every second: a table per Service,
//! each pod's state in colour, and its calls over the last minute. The page is plain HTML with
//! a little script and fetches nothing from anywhere else.
//!
//! ```no_run
//! # async fn f(registry: k8s_headless_svc::Registry) {
//! use std::sync::Arc;
//! let app: axum::Router = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "hello" }))
//!     .merge(k8s_headless_svc::debug::routes(Arc::new(registry)));
//! # }
//! ```

use std::sync::Arc;

use axum::{Json, Router, extract::State, response::Html, routing::get};

use crate::{Registry, RegistrySnapshot};

/// The debug routes over `registry`, to merge into a router of one's own.
pub fn routes<S>(registry: Arc<Registry>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/debug/registry", get(snapshot))
        .route("/debug", get(|| async { Html(PAGE) }))
        .with_state(registry)
}

async fn snapshot(State(registry): State<Arc<Registry>>) -> Json<RegistrySnapshot> {
    Json(registry.snapshot())
}

/// The page: it reads `/debug/registry` every second and keeps a minute of each pod's call
/// count in the browser, so the server keeps no history.
const PAGE: &str = include_str!("debug/page.html");
