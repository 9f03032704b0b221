//! `/mount`: filesystems.

use actix_web::{web, HttpRequest, HttpResponse};
use actors::model::wire::{Mount, MountKind};
use actors::Engine;

use super::error::ApiError;
use super::extract::{json_body, Query};

pub async fn list(
    engine: web::Data<Engine>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = Query::of(&request)?;
    let id = query.int("id")?;
    let kind = query.choice::<MountKind>("kind")?;
    super::json_list(&engine.list_mount(id, kind).await?)
}

pub async fn create(
    engine: web::Data<Engine>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let mount: Mount = json_body(&request, payload).await?;
    Ok(HttpResponse::Created().json(engine.create_mount(mount).await?))
}

pub async fn delete(
    engine: web::Data<Engine>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = Query::of(&request)?;
    let id = query.required_int("id")?;
    let force = query.bool("force")?;
    Ok(HttpResponse::Ok().json(engine.delete_mount(id, force).await?))
}
