//! `/events`: the engine's events as Server-Sent Events (docs/events.md).

use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::ConnectionType;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use actors::events::{Delivery, Event, Subscription};
use actors::registry::graph::ObjectKind;
use actors::Engine;

use super::error::ApiError;
use super::extract::Query;

/// How often an idle stream sends a comment, so that proxies and clients see it alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Marks a response that stays open for as long as the client listens: the connection's
/// watchdog does not wait for a next request on it (see `server::limits`).
pub struct LongLived;

/// Where the client resumes: the `Last-Event-ID` header, else `?since=`.
fn resume_point(request: &HttpRequest, query: &Query) -> Result<Option<u64>, ApiError> {
    let header = request
        .headers()
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty());
    let (name, value) = match header {
        Some(value) => ("Last-Event-ID", value.to_string()),
        None => match query.string("since") {
            Some(value) => ("since", value),
            None => return Ok(None),
        },
    };
    value
        .parse()
        .map(Some)
        .map_err(|_| ApiError::invalid_field(name, format!("{value:?} is not an event id")))
}

/// The object kinds `?object=` keeps (all when absent).
fn object_filter(query: &Query) -> Result<Vec<ObjectKind>, ApiError> {
    query
        .list("object")
        .iter()
        .map(|name| match name.as_str() {
            "attach" => Ok(ObjectKind::Attach),
            "mount" => Ok(ObjectKind::Mount),
            "container" => Ok(ObjectKind::Container),
            other => Err(ApiError::invalid_field(
                "object",
                format!("{other:?} is not attach, mount or container"),
            )),
        })
        .collect()
}

fn event_text(event: &Event) -> String {
    let data = serde_json::to_string(event).expect("an event always serializes");
    format!(
        "id: {}\nevent: {}\ndata: {data}\n\n",
        event.seq,
        event.change.as_str()
    )
}

fn lost_text(oldest: u64) -> String {
    format!("event: lost\ndata: {{\"oldest\":{oldest}}}\n\n")
}

struct Stream {
    subscription: Subscription,
    objects: Vec<ObjectKind>,
    keep_alive: tokio::time::Interval,
}

impl Stream {
    /// The next text to send; `None` when the service stops.
    async fn next(&mut self) -> Option<String> {
        loop {
            let delivery = tokio::select! {
                delivery = self.subscription.next() => delivery?,
                _ = self.keep_alive.tick() => return Some(": keep-alive\n\n".to_string()),
            };
            match delivery {
                Delivery::Lost { oldest } => return Some(lost_text(oldest)),
                Delivery::Event(event)
                    if self.objects.is_empty() || self.objects.contains(&event.subject.object) =>
                {
                    self.keep_alive.reset();
                    return Some(event_text(&event));
                }
                Delivery::Event(_) => {}
            }
        }
    }
}

pub async fn stream(
    engine: web::Data<Engine>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = Query::of(&request)?;
    let after = resume_point(&request, &query)?;
    let objects = object_filter(&query)?;
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.reset();
    let stream = Stream {
        subscription: engine.subscribe(after),
        objects,
        keep_alive,
    };
    let body = futures::stream::unfold(stream, |mut stream| async move {
        let text = stream.next().await?;
        Some((Ok::<_, actix_web::Error>(Bytes::from(text)), stream))
    });
    let mut response = HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .streaming(body);
    // The connection ends with the stream: no next request comes after one.
    response
        .head_mut()
        .set_connection_type(ConnectionType::Close);
    response.extensions_mut().insert(LongLived);
    Ok(response)
}
