//! `/attach`: block devices.

use actix_web::{web, HttpRequest, HttpResponse};
use actors::model::wire::{Attach, AttachKind};
use actors::Engine;

use super::error::ApiError;
use super::extract::{json_body, Query};

pub async fn list(
    engine: web::Data<Engine>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = Query::of(&request)?;
    let id = query.int("id")?;
    let kind = query.choice::<AttachKind>("kind")?;
    super::json_list(&engine.list_attach(id, kind).await?)
}

pub async fn create(
    engine: web::Data<Engine>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let attach: Attach = json_body(&request, payload).await?;
    Ok(HttpResponse::Created().json(engine.create_attach(attach).await?))
}

pub async fn delete(
    engine: web::Data<Engine>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = Query::of(&request)?;
    let id = query.required_int("id")?;
    let force = query.bool("force")?;
    Ok(HttpResponse::Ok().json(engine.delete_attach(id, force).await?))
}
