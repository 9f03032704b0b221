//! The REST layer: translates HTTP requests into engine calls and engine answers into JSON.

mod attach;
mod container;
pub mod error;
mod events;
mod extract;
mod health;
mod mount;
mod spec;

use actix_web::http::header::ContentType;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Serialize;

use error::ApiError;
pub use events::LongLived;
pub use health::Readiness;

/// Where the contract's paths live.
pub const BASE_PATH: &str = "/imageapi/v1";

/// Every route of the service: method and path under [`BASE_PATH`] (the spec test checks this
/// list against `swagger.yaml`).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/attach"),
    ("POST", "/attach"),
    ("DELETE", "/attach"),
    ("GET", "/mount"),
    ("POST", "/mount"),
    ("DELETE", "/mount"),
    ("GET", "/container"),
    ("POST", "/container"),
    ("DELETE", "/container"),
    ("PATCH", "/container"),
    ("GET", "/events"),
    ("GET", "/swagger.json"),
    ("GET", "/swagger.yaml"),
];

/// The routes outside [`BASE_PATH`] that swagger.yaml describes (under its
/// `x-imageapi-root-paths`, Swagger 2.0 having no paths outside `basePath`): probes and metrics.
/// The root `/swagger.json` is the same document as under the base path and is not listed.
pub const ROOT_ROUTES: &[(&str, &str)] =
    &[("GET", "/metrics"), ("GET", "/healthz"), ("GET", "/readyz")];

/// Registers the API on an actix-web app; the engine and the [`Readiness`] are expected as app
/// data.
pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(
            web::scope(BASE_PATH)
                .service(
                    web::resource("/attach")
                        .get(attach::list)
                        .post(attach::create)
                        .delete(attach::delete)
                        .default_service(web::to(|| not_allowed("GET, POST, DELETE"))),
                )
                .service(
                    web::resource("/mount")
                        .get(mount::list)
                        .post(mount::create)
                        .delete(mount::delete)
                        .default_service(web::to(|| not_allowed("GET, POST, DELETE"))),
                )
                .service(
                    web::resource("/container")
                        .get(container::list)
                        .post(container::create)
                        .delete(container::delete)
                        .patch(container::set_state)
                        .default_service(web::to(|| not_allowed("GET, POST, DELETE, PATCH"))),
                )
                .service(
                    web::resource("/events")
                        .get(events::stream)
                        .default_service(web::to(|| not_allowed("GET"))),
                )
                .service(
                    web::resource("/swagger.json")
                        .get(spec::json)
                        .default_service(web::to(|| not_allowed("GET"))),
                )
                .service(
                    web::resource("/swagger.yaml")
                        .get(spec::yaml)
                        .default_service(web::to(|| not_allowed("GET"))),
                ),
        )
        // The reference served its document at the server root; its clients may look there.
        .service(
            web::resource("/swagger.json")
                .get(spec::json)
                .default_service(web::to(|| not_allowed("GET"))),
        )
        .service(
            web::resource("/metrics")
                .get(health::metrics)
                .default_service(web::to(|| not_allowed("GET"))),
        )
        .service(
            web::resource("/healthz")
                .get(health::healthz)
                .default_service(web::to(|| not_allowed("GET"))),
        )
        .service(
            web::resource("/readyz")
                .get(health::readyz)
                .default_service(web::to(|| not_allowed("GET"))),
        )
        .default_service(web::to(not_found));
}

/// A list's 200 answer. Written into a buffer sized for it at once (about a kilobyte an object,
/// what a nested container takes), not one grown by doubling from a few bytes: a list of many
/// objects is the largest answer the service gives.
fn json_list<T: Serialize>(items: &[T]) -> Result<HttpResponse, ApiError> {
    let mut body = Vec::with_capacity(2 + items.len() * 1024);
    serde_json::to_writer(&mut body, items).map_err(|error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot write the list: {error}"),
        )
    })?;
    Ok(HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(body))
}

async fn not_allowed(allow: &'static str) -> Result<HttpResponse, ApiError> {
    Err(ApiError::method_not_allowed(allow))
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(StatusCode::NOT_FOUND, "no such path"))
}
