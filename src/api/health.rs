//! Probes and metrics for the node's supervisor and scraper: outside the contract's base path,
//! as the reference's `/swagger.json` was.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use actors::Engine;

use super::error::ApiError;

/// Whether the service is ready: set once the restore at start is done and every listener is
/// up. Shared by every listener's app; cheap to clone.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The content type of the Prometheus text format that prometheus-client writes.
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn metrics(engine: web::Data<Engine>) -> Result<HttpResponse, ApiError> {
    let text = engine.metrics_text().await?;
    Ok(HttpResponse::Ok().content_type(OPENMETRICS_TEXT).body(text))
}

/// Alive: answering at all is the whole check.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "alive" }))
}

pub async fn readyz(readiness: web::Data<Readiness>) -> Result<HttpResponse, ApiError> {
    if !readiness.is_ready() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: the restore of the previous run's objects or the listeners are not done",
        ));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })))
}

#[cfg(test)]
mod tests {
    use actix_web::body::MessageBody;
    use actix_web::ResponseError;

    use super::*;

    #[actix_web::test]
    async fn readyz_is_503_with_an_error_body_until_ready() {
        let readiness = Readiness::default();
        let error = readyz(web::Data::new(readiness.clone()))
            .await
            .expect_err("not ready yet");
        let response = error.error_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = response.into_body().try_into_bytes().unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], 503);
        assert!(body["message"].is_string(), "{body}");

        readiness.set_ready();
        let ready = readyz(web::Data::new(readiness)).await.expect("ready");
        assert_eq!(ready.status(), StatusCode::OK);
    }
}
