//! Producer-facing responses: every error maps to one status and a JSON body here.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::Full;

use crate::amqp::PublishError;
use crate::upstream::{failure_status, UpstreamError};

/// Response header that names ekko's decision for each notification.
pub const DECISION_HEADER: &str = "ekko-decision";

/// Failure of a notification request, mapped to one response.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// No route matches the request path.
    #[error("no notification route matches {method} {path}: check `match.path` in the policy")]
    NoRoute {
        /// Request method.
        method: Method,
        /// Request path without the query.
        path: String,
    },
    /// A route matches the path but not the method.
    #[error("method {method} is not allowed here; allowed: {allowed}")]
    WrongMethod {
        /// Request method.
        method: Method,
        /// Allowed methods, comma-separated.
        allowed: String,
    },
    /// The body exceeded the route's `max_body`.
    #[error("request body is larger than the route's max_body of {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body did not arrive in time.
    #[error("request body was not received within {seconds} s")]
    BodyTimeout {
        /// The limit in seconds.
        seconds: u64,
    },
    /// The body could not be read (connection closed).
    #[error("request body could not be read: {0}")]
    BodyRead(String),
    /// The envelope could not be decoded.
    #[error("notification could not be decoded: {0}")]
    Undecodable(String),
    /// The entity template names a field the notification does not have.
    #[error("{}notification has no `{field}`, which the route's entity template `{template}` needs", element_prefix(*.element))]
    MissingField {
        /// The missing field.
        field: String,
        /// The entity template.
        template: String,
        /// Index of the event in a CloudEvents batch.
        element: Option<usize>,
    },
    /// The entity key is longer than the limit.
    #[error("{}entity key is {length} bytes long; the limit is {limit} bytes", element_prefix(*.element))]
    KeyTooLong {
        /// Actual length.
        length: usize,
        /// The limit.
        limit: usize,
        /// Index of the event in a CloudEvents batch.
        element: Option<usize>,
    },
    /// An earlier notification for the same entity held it longer than `max_entity_wait`.
    #[error("entity is busy with earlier notifications; retry later")]
    EntityBusy,
    /// A held notification could not be written to disk, so it is not acknowledged.
    #[error("the held notification could not be saved; retry later")]
    HoldNotSaved,
    /// Forwarding failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// Publishing to an AMQP upstream failed or was not confirmed.
    #[error(transparent)]
    Amqp(#[from] PublishError),
    /// A bug or resource problem inside ekko; details go to the log, not to the client.
    #[error("internal error")]
    Internal(String),
}

fn element_prefix(element: Option<usize>) -> String {
    element.map_or_else(String::new, |index| {
        format!("cloudevents batch element {index}: ")
    })
}

impl NotifyError {
    /// Names the batch element that the error is about.
    pub fn in_element(mut self, index: usize) -> Self {
        if let Self::MissingField { element, .. } | Self::KeyTooLong { element, .. } = &mut self {
            *element = Some(index);
        }
        self
    }

    /// Returns the HTTP status: 4xx when the producer's request is at fault, 502/504 for the
    /// upstream, 503 when the entity is busy or an AMQP upstream is not connected, 500 for
    /// ekko's own trouble.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::WrongMethod { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::BodyRead(_)
            | Self::Undecodable(_)
            | Self::MissingField { .. }
            | Self::KeyTooLong { .. } => StatusCode::BAD_REQUEST,
            Self::EntityBusy | Self::HoldNotSaved => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream(error) => failure_status(error),
            Self::Amqp(error) => error.status(),
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Returns the `Ekko-Decision` value of an error response: `rejected` when the request
    /// is at fault, `upstream_error` when the upstream failed, `busy` or `error` otherwise.
    pub fn decision(&self) -> &'static str {
        match self {
            Self::Upstream(_) | Self::Amqp(_) => "upstream_error",
            Self::EntityBusy => "busy",
            Self::HoldNotSaved | Self::Internal(_) => "error",
            _ => "rejected",
        }
    }

    /// Returns a short machine-readable error code for the JSON body.
    fn code(&self) -> &'static str {
        match self {
            Self::NoRoute { .. } => "no_route",
            Self::WrongMethod { .. } => "method_not_allowed",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BodyTimeout { .. } => "body_timeout",
            Self::BodyRead(_) => "body_unreadable",
            Self::Undecodable(_) => "undecodable",
            Self::MissingField { .. } => "missing_field",
            Self::KeyTooLong { .. } => "entity_key_too_long",
            Self::EntityBusy => "entity_busy",
            Self::HoldNotSaved => "hold_not_saved",
            Self::Upstream(UpstreamError::TimedOut { .. }) => "upstream_timeout",
            Self::Upstream(_) => "upstream_unavailable",
            Self::Amqp(error) => error.code(),
            Self::Internal(_) => "internal",
        }
    }

    /// Builds the response for the producer: JSON `{"error": code, "message": text}`.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({ "error": self.code(), "message": self.to_string() });
        let mut response = json_response(self.status(), &body);
        response
            .headers_mut()
            .insert(DECISION_HEADER, HeaderValue::from_static(self.decision()));
        match &self {
            Self::WrongMethod { allowed, .. } => {
                if let Ok(value) = HeaderValue::from_str(allowed) {
                    response.headers_mut().insert(header::ALLOW, value);
                }
            }
            Self::EntityBusy | Self::HoldNotSaved => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::Amqp(error) => {
                if let Some(delay) = error.retry_after() {
                    let seconds = delay.as_secs().max(1);
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                }
            }
            _ => {}
        }
        response
    }
}

/// Builds a JSON response with `Cache-Control: no-store`.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    json_bytes_response(status, body.to_string().into_bytes())
}

/// Builds a JSON response with `Cache-Control: no-store` from an already serialised body.
pub fn json_bytes_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
