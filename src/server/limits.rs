//! The request middleware of every listener: the head size limit (431), the body read deadline
//! (408), and keeping the connection's watchdog ([`super::conn`]) informed.
//!
//! The body size limit (413 past 1 MiB) is enforced where the body is read, in
//! `api::extract`.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderMap};
use actix_web::http::{ConnectionType, StatusCode};
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{HttpMessage, HttpResponse, ResponseError};
use futures::Stream;
use tokio::time::Sleep;
use tracing::debug;

use super::conn::{ConnGuard, Watch};
use crate::api::error::ApiError;
use crate::cli::Limits;

/// Size of a request head as it came on the wire (request line, headers, blank line).
fn head_size(request: &ServiceRequest) -> usize {
    let line = request.method().as_str().len() + 1 + request.uri().to_string().len() + 11;
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    line + headers + 2
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .is_some_and(|length| length > 0)
}

/// The request body, cut with a timeout error when it has not all come by the deadline.
/// The connection's watchdog holds the client to the deadline only once the handler reads the
/// body: a handler that never reads it (a DELETE sent with a body) may take its time.
struct BodyDeadline {
    inner: Payload,
    deadline: Instant,
    timer: Pin<Box<Sleep>>,
    timed_out: Rc<Cell<bool>>,
    watch: Option<Rc<Watch>>,
    reading: bool,
    done: bool,
}

impl Stream for BodyDeadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if !this.reading {
            this.reading = true;
            if let Some(watch) = &this.watch {
                watch.body_started(this.deadline);
            }
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(None) => {
                this.done = true;
                if let Some(watch) = &this.watch {
                    watch.body_done();
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(item)) => Poll::Ready(Some(item)),
            Poll::Pending => {
                if this.timer.as_mut().poll(cx).is_ready() {
                    this.done = true;
                    this.timed_out.set(true);
                    Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the request body did not come in time",
                    )))))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

fn closing(mut response: HttpResponse) -> HttpResponse {
    response
        .head_mut()
        .set_connection_type(ConnectionType::Close);
    response
}

/// The middleware of every listener's app, with that listener's limits:
/// `from_fn(move |request, next| guard(limits, request, next))`.
pub async fn guard(
    limits: Limits,
    mut request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let watch = request.conn_data::<ConnGuard>().map(ConnGuard::watch);
    let started = Instant::now();
    // What the access log names: never the body, which may carry credentials.
    let line = format!("{} {}", request.method(), request.uri());
    let size = head_size(&request);
    if size > limits.max_header_size {
        let error = ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request head ({size} bytes) is larger than {} bytes",
                limits.max_header_size
            ),
        );
        if let Some(watch) = &watch {
            watch.request_started();
            watch.response_ready();
        }
        return Ok(request.into_response(closing(error.error_response())));
    }
    let body_deadline = match limits.read_timeout {
        Some(timeout) if has_body(request.headers()) => Some(Instant::now() + timeout),
        _ => None,
    };
    if let Some(watch) = &watch {
        watch.request_started();
    }
    let timed_out = Rc::new(Cell::new(false));
    if let Some(deadline) = body_deadline {
        let body = BodyDeadline {
            inner: request.take_payload(),
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline.into())),
            timed_out: timed_out.clone(),
            watch: watch.clone(),
            reading: false,
            done: false,
        };
        let stream: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> = Box::pin(body);
        request.set_payload(Payload::from(stream));
    }
    let answered = next.call(request).await;
    if let Some(watch) = &watch {
        let long_lived = answered.as_ref().is_ok_and(|response| {
            response
                .response()
                .extensions()
                .contains::<crate::api::LongLived>()
        });
        if long_lived {
            watch.stream_ready();
        } else {
            watch.response_ready();
        }
    }
    let response = answered?.map_into_boxed_body();
    let response = if timed_out.get() {
        let error = ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not come within the read timeout",
        );
        let (request, _) = response.into_parts();
        ServiceResponse::new(request, closing(error.error_response()))
    } else {
        response
    };
    debug!(
        peer = watch.as_ref().map_or("", |watch| watch.peer()),
        request = %line,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "answered"
    );
    Ok(response)
}
