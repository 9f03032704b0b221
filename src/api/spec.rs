//! The service's own Swagger 2.0 document, served as written and as JSON.

use std::sync::LazyLock;

use actix_web::HttpResponse;

/// The document, compiled in so the binary always serves the spec it was built with.
pub const SWAGGER_YAML: &str = include_str!("../../swagger.yaml");

static SWAGGER_JSON: LazyLock<String> = LazyLock::new(|| {
    let document: serde_json::Value = serde_norway::from_str(SWAGGER_YAML)
        .expect("swagger.yaml is valid YAML (checked by tests/api_contract.rs)");
    document.to_string()
});

pub async fn yaml() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/yaml")
        .body(SWAGGER_YAML)
}

pub async fn json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(SWAGGER_JSON.as_str())
}
