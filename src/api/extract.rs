//! Request bodies and queries, read strictly: each misfit gets its own status and a message that
//! names the field, where actix's stock extractors would answer plain text.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest};
use futures::StreamExt;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 1 << 20;

/// Deepest nesting of JSON objects and arrays accepted in a body. Real requests stay well under
/// it (a container over an overlay over an rbd attach mount is 9 deep, a loopback in a mount in
/// that 13); a deeper one is refused before it reaches the engine, whose depth-first walk of a
/// definition recurses.
pub const DEPTH_LIMIT: usize = 24;

/// Longest array accepted in a body (an overlay takes at most 500 lowers): refused before the
/// engine spends time on each element.
pub const ARRAY_LIMIT: usize = 1000;

/// How deep objects and arrays nest in a JSON value (0 for a scalar), and its longest array.
/// serde_json refuses to parse past 128 levels, which bounds the recursion.
fn shape(value: &serde_json::Value) -> (usize, usize) {
    let children = |values: &mut dyn Iterator<Item = &serde_json::Value>, len: usize| {
        values
            .map(shape)
            .fold((1, len), |(depth, longest), (d, l)| {
                (depth.max(d + 1), longest.max(l))
            })
    };
    match value {
        serde_json::Value::Array(items) => children(&mut items.iter(), items.len()),
        serde_json::Value::Object(fields) => children(&mut fields.values(), 0),
        _ => (0, 0),
    }
}

/// Reads a JSON body: 415 for another content type (none at all is taken as JSON), 413 past
/// [`BODY_LIMIT`], 400 for malformed JSON, 422 when it does not fit `T`, nests deeper than
/// [`DEPTH_LIMIT`] or has an array longer than [`ARRAY_LIMIT`].
pub async fn json_body<T: DeserializeOwned>(
    request: &HttpRequest,
    mut payload: web::Payload,
) -> Result<T, ApiError> {
    if let Some(content_type) = request.headers().get(header::CONTENT_TYPE) {
        let is_json = content_type
            .to_str()
            .ok()
            .and_then(|value| value.split(';').next())
            .map(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the body must be application/json",
            ));
        }
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|err| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("reading the body: {err}"))
        })?;
        if body.len() + chunk.len() > BODY_LIMIT {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {BODY_LIMIT} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {err}")))?;
    let (depth, longest) = shape(&value);
    if depth > DEPTH_LIMIT {
        return Err(ApiError::invalid_field(
            "body",
            format!("objects nest {depth} levels deep, more than {DEPTH_LIMIT}"),
        ));
    }
    if longest > ARRAY_LIMIT {
        return Err(ApiError::invalid_field(
            "body",
            format!("an array has {longest} elements, more than {ARRAY_LIMIT}"),
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let message = err.into_inner().to_string();
        // serde reports a missing field at its parent; the client wants the field itself.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        let field = match (path.as_str(), missing) {
            (".", Some(name)) => name.to_string(),
            (".", None) => "body".to_string(),
            (parent, Some(name)) => format!("{parent}.{name}"),
            (parent, None) => parent.to_string(),
        };
        ApiError::invalid_field(field, message)
    })
}

/// The query parameters of a request, read one typed parameter at a time so that each error
/// names its parameter. Unknown parameters are ignored, as the reference does. A repeated
/// parameter takes its last value, and an empty value (`?id=`, `?kind=`) is taken as absent, as
/// the reference's go-swagger server reads them: so `GET /attach?id=` lists every attach, and
/// `DELETE /attach?id=` is refused like a DELETE without an id.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn of(request: &HttpRequest) -> Result<Query, ApiError> {
        serde_urlencoded::from_str(request.query_string())
            .map(Query)
            .map_err(|err| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("malformed query string: {err}"),
                )
            })
    }

    fn raw(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .filter(|value| !value.is_empty())
    }

    /// Every value of a parameter that may be repeated or given as a comma list.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(key, _)| key == name)
            .flat_map(|(_, value)| value.split(','))
            .map(str::trim)
            .filter(|value| !value.is_empty())
            .map(str::to_string)
            .collect()
    }

    pub fn string(&self, name: &str) -> Option<String> {
        self.raw(name).map(str::to_string)
    }

    pub fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.raw(name)
            .map(|value| {
                value.parse().map_err(|_| {
                    ApiError::invalid_field(name, format!("{value:?} is not an integer"))
                })
            })
            .transpose()
    }

    pub fn required_int(&self, name: &str) -> Result<i64, ApiError> {
        self.int(name)?
            .ok_or_else(|| ApiError::invalid_field(name, "required"))
    }

    /// A boolean, spelled as the reference's go-swagger server reads them (`1`, `yes`, `on`, `t`
    /// ... for true), so existing clients keep working; a word that means neither is a 422.
    pub fn bool(&self, name: &str) -> Result<bool, ApiError> {
        const TRUE: [&str; 10] = [
            "true", "1", "yes", "ok", "y", "on", "selected", "checked", "t", "enabled",
        ];
        const FALSE: [&str; 7] = ["false", "0", "no", "n", "off", "f", "disabled"];
        match self.raw(name).map(str::to_ascii_lowercase) {
            None => Ok(false),
            Some(word) if TRUE.contains(&word.as_str()) => Ok(true),
            Some(word) if FALSE.contains(&word.as_str()) => Ok(false),
            Some(word) => Err(ApiError::invalid_field(
                name,
                format!("{word:?} is not a boolean (true or false)"),
            )),
        }
    }

    /// A parameter whose values are the serde names of `T`'s variants.
    pub fn choice<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, ApiError> {
        self.raw(name)
            .map(|value| {
                serde_json::from_value(serde_json::Value::String(value.to_string()))
                    .map_err(|err| ApiError::invalid_field(name, err.to_string()))
            })
            .transpose()
    }
}
