//! `/container`: system containers.

use std::time::Duration;

use actix_web::http::StatusCode;
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
    // Checked even without `wait`, so that a bad value is refused wherever it is sent.
    let timeout = wait_timeout(&query)?;
    if let Some(wanted) = query.choice::<ContainerState>("wait")? {
        return wait(&engine, &query, wanted, timeout).await;
    }
    let state = query.choice::<ContainerState>("state")?;
    let containers = engine.list_container(selector(&query)?, state).await?;
    super::json_list(&containers)
}

/// How long a long poll waits when not told.
const WAIT_DEFAULT: Duration = Duration::from_secs(30);
/// The longest a long poll may wait.
const WAIT_MAX: Duration = Duration::from_secs(300);

/// The long poll's `timeout` (seconds, 0 to [`WAIT_MAX`]).
fn wait_timeout(query: &Query) -> Result<Duration, ApiError> {
    match query.int("timeout")? {
        None => Ok(WAIT_DEFAULT),
        Some(seconds) if (0..=WAIT_MAX.as_secs() as i64).contains(&seconds) => {
            Ok(Duration::from_secs(seconds as u64))
        }
        Some(seconds) => Err(ApiError::invalid_field(
            "timeout",
            format!(
                "{seconds} is not between 0 and {} seconds",
                WAIT_MAX.as_secs()
            ),
        )),
    }
}

/// The long poll (`wait=<state>`): the one-element list once the container named by `id` or
/// `name` is in that state, or a 408 when `timeout` seconds pass first.
async fn wait(
    engine: &Engine,
    query: &Query,
    wanted: ContainerState,
    timeout: Duration,
) -> Result<HttpResponse, ApiError> {
    let target = selector(query)?
        .ok_or_else(|| ApiError::invalid_field("wait", "a wait needs an id or a name"))?;
    match engine.wait_container(target, wanted, timeout).await? {
        Some(containers) => Ok(HttpResponse::Ok().json(containers)),
        None => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the container was not {} within {} s",
                wanted.as_str(),
                timeout.as_secs()
            ),
        )),
    }
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
