//! `/container`: system containers (no driver yet: every operation answers 501).

use actix_web::http::StatusCode;
use actix_web::HttpResponse;

use super::error::ApiError;

fn no_driver() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "containers are not implemented yet",
    ))
}

pub async fn list() -> Result<HttpResponse, ApiError> {
    no_driver()
}

pub async fn create() -> Result<HttpResponse, ApiError> {
    no_driver()
}

pub async fn delete() -> Result<HttpResponse, ApiError> {
    no_driver()
}

pub async fn set_state() -> Result<HttpResponse, ApiError> {
    no_driver()
}
