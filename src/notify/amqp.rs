//! Publishing a forwarded notification to an AMQP upstream, and the producer's reply.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use super::envelope::{self, Decoded, Event};
use super::reply::NotifyError;
use super::route::Matched;
use super::Gateway;
use crate::amqp::message;
use crate::amqp::{Outgoing, Supervisor};
use crate::policy::template::Template;

/// Maximum length in bytes of an exchange name or routing key, which are AMQP short strings.
const MAX_SHORT_STRING: usize = 255;

impl Gateway {
    /// Publishes a notification whose hop count is already in `headers` and `body` as one
    /// message per event, and waits for every confirm. On success the reply is 200 with
    /// `{"published": N, "confirmed": N}`, which counts as the upstream's 2xx.
    pub(super) async fn publish(
        &self,
        matched: &Matched<'_>,
        supervisor: &Supervisor,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Response<Bytes>, NotifyError> {
        let route = &matched.route.route;
        let batch = outgoing(matched, supervisor, headers, body)?;
        let published = supervisor.publish(&batch).await.inspect_err(|error| {
            tracing::warn!(route = %route.name, upstream = %supervisor.upstream(), %error, "amqp publish failed; nothing committed");
        })?;
        let reply = serde_json::json!({
            "published": published.published,
            "confirmed": published.confirmed,
            "returned": published.returned,
        });
        let mut response = Response::new(Bytes::from(reply.to_string()));
        *response.status_mut() = StatusCode::OK;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(response)
    }
}

/// Builds the messages with their exchange and routing key, rendered from each event's
/// fields and the route's path captures.
fn outgoing(
    matched: &Matched<'_>,
    supervisor: &Supervisor,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Vec<Outgoing>, NotifyError> {
    let format = &matched.route.route.format;
    let messages = message::build(format, headers, body)
        .map_err(|error| NotifyError::Undecodable(error.to_string()))?;
    let events: Vec<Event> = match envelope::decode(format, headers, body) {
        Ok(Decoded::Single(event)) => vec![event],
        Ok(Decoded::Batch(events)) => events.into_iter().map(|(event, _)| event).collect(),
        Err(error) => return Err(NotifyError::Undecodable(error.0)),
    };
    if events.len() != messages.len() {
        return Err(NotifyError::Internal(format!(
            "{} events decoded but {} amqp messages built",
            events.len(),
            messages.len()
        )));
    }
    let amqp = &supervisor.settings().amqp;
    events
        .iter()
        .zip(messages)
        .map(|(event, mut message)| {
            if message.message_id.is_none() {
                message.message_id = event.id.clone();
            }
            Ok(Outgoing {
                exchange: render(&amqp.exchange, matched, event)?,
                routing_key: render(&amqp.routing_key, matched, event)?,
                message,
            })
        })
        .collect()
}

fn render(
    template: &Template,
    matched: &Matched<'_>,
    event: &Event,
) -> Result<String, NotifyError> {
    let text = template
        .render_text(|name| super::decide::field(matched, event, name))
        .map_err(|field| NotifyError::MissingField {
            field,
            template: template.to_string(),
            element: None,
        })?;
    if text.len() > MAX_SHORT_STRING {
        return Err(NotifyError::Undecodable(format!(
            "the amqp exchange or routing key rendered from `{template}` is {} bytes long; the limit is {MAX_SHORT_STRING} bytes",
            text.len()
        )));
    }
    Ok(text)
}
