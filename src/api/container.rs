//! `/container`: system containers.

use actix_web::{web, HttpRequest, HttpResponse};
use actors::model::wire::{Container, ContainerState};
use actors::{Engine, Selector};

use super::error::ApiError;
use super::extract::{json_body, Query};

/// The container a query names by `id` or `name` (`id` wins when both are given).
fn selector(query: &Query) -> Result<Option<Selector>, ApiError> {
    if let Some(id) = query.int("id")? {
        return Ok(Some(Selector::Id(id)));
    }
    Ok(query.string("name").map(Selector::Name))
}

pub async fn list(
    engine: web::Data<Engine>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = Query::of(&request)?;
    let state = query.choice::<ContainerState>("state")?;
    let containers = engine.list_container(selector(&query)?, state).await?;
    Ok(HttpResponse::Ok().json(containers))
}

pub async fn create(
    engine: web::Data<Engine>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let container: Container = json_body(&request, payload).await?;
    Ok(HttpResponse::Created().json(engine.create_container(container).await?))
}

pub async fn delete(
    engine: web::Data<Engine>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = Query::of(&request)?;
    let target =
        selector(&query)?.ok_or_else(|| ApiError::invalid_field("id", "id or name is required"))?;
    let force = query.bool("force")?;
    Ok(HttpResponse::Ok().json(engine.delete_container(target, force).await?))
}

pub async fn set_state(
    engine: web::Data<Engine>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = Query::of(&request)?;
    let state = query
        .choice::<ContainerState>("state")?
        .ok_or_else(|| ApiError::invalid_field("state", "required"))?;
    if !matches!(
        state,
        ContainerState::Running | ContainerState::Exited | ContainerState::Paused
    ) {
        return Err(ApiError::invalid_field(
            "state",
            "a container can be set to running, exited or paused",
        ));
    }
    let target =
        selector(&query)?.ok_or_else(|| ApiError::invalid_field("id", "id or name is required"))?;
    Ok(HttpResponse::Ok().json(engine.set_container_state(target, state).await?))
}
