//! The one place where engine errors become HTTP statuses and `{code, message}` bodies.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use actors::registry::graph::GraphError;
use actors::Error;
use serde::Serialize;

/// An error answer; boxed, so that `Result`s carrying it stay small.
#[derive(Debug)]
pub struct ApiError {
    body: Box<ErrorBody>,
    allow: Option<&'static str>,
}

/// The `error` object: `code` always equals the HTTP status. The optional fields extend the
/// contract's `error` so a client can tell which object of a nested request failed and why.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    pub code: u16,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            body: Box::new(ErrorBody {
                code: status.as_u16(),
                message: message.into(),
                object: None,
                stage: None,
                reason: None,
                field: None,
            }),
            allow: None,
        }
    }

    /// 422 for a request field that does not fit the schema.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let mut error = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{field}: {}", message.into()),
        );
        error.body.field = Some(field);
        error
    }

    /// The JSON body this error answers with.
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }

    /// 405 with the methods the path has.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut error = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method not allowed; use {allow}"),
        );
        error.allow = Some(allow);
        error
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.body.code, self.body.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.body.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Some(allow) = self.allow {
            response.insert_header((header::ALLOW, allow));
        }
        response.json(&self.body)
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let status = match &error {
            Error::Invalid(_) | Error::Rejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Graph(GraphError::NotFound(_) | GraphError::WrongKind { .. })
            | Error::NameNotFound(_) => StatusCode::NOT_FOUND,
            Error::Graph(
                GraphError::NameTaken(_) | GraphError::InUse { .. } | GraphError::DependencyGone(_),
            )
            | Error::ContainerBusy { .. } => StatusCode::CONFLICT,
            Error::Unsupported { .. } => StatusCode::NOT_IMPLEMENTED,
            Error::Unreachable { .. } => StatusCode::GATEWAY_TIMEOUT,
            Error::Kernel { .. } | Error::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut answer = ApiError::new(status, error.to_string());
        if let Error::Invalid(invalid) = &error {
            answer.body.field = Some(invalid.field.clone());
        }
        if let Some(origin) = error.origin() {
            answer.body.object = Some(origin.object.as_str());
            answer.body.stage = Some(origin.stage);
        }
        answer.body.reason = error.reason();
        answer
    }
}
