//! Persistent publishes with publisher confirms, and what each outcome means for the producer.

use std::time::Duration;

use http::StatusCode;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation, PublisherConfirm};

use super::connection::Supervisor;
use super::message::{HeaderValue, Message};
use crate::metrics::AmqpOutcomeLabels;
use crate::policy::Unroutable;

/// AMQP `delivery-mode` 2: the broker writes the message to disk in durable queues.
const PERSISTENT: u8 = 2;

/// One message with the exchange and routing key rendered for it.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Exchange name.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// Headers, properties and body.
    pub message: Message,
}

/// Counts of a publish that succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Messages sent.
    pub published: usize,
    /// Messages the broker confirmed.
    pub confirmed: usize,
    /// Confirmed messages that no queue took, accepted because of `unroutable: success`.
    pub returned: usize,
}

/// Why a publish failed. Nothing is committed after any of these, so the producer's retry
/// is forwarded again.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No connection is open; the supervisor is reconnecting.
    #[error("amqp upstream `{upstream}` is not connected; retry after {} s", retry_after.as_secs())]
    NotConnected {
        /// Upstream name.
        upstream: String,
        /// Time until the next reconnect attempt, at least one second.
        retry_after: Duration,
    },
    /// The connection or channel closed before the broker confirmed.
    #[error(
        "amqp upstream `{upstream}` lost its connection before the broker confirmed; retry later"
    )]
    ConnectionLost {
        /// Upstream name.
        upstream: String,
        /// Time until the next reconnect attempt, at least one second.
        retry_after: Duration,
    },
    /// The broker refused the message (`basic.nack`).
    #[error(
        "amqp upstream `{upstream}` rejected the message for exchange `{exchange}` (basic.nack)"
    )]
    Nacked {
        /// Upstream name.
        upstream: String,
        /// Exchange the message was published to.
        exchange: String,
    },
    /// A mandatory message matched no queue (`basic.return`) and `unroutable` is `error`.
    #[error("amqp upstream `{upstream}` returned the message as unroutable: exchange `{exchange}` has no queue bound for routing key `{routing_key}` ({reply_code} {reply_text}); bind a queue or set `unroutable: success`")]
    Returned {
        /// Upstream name.
        upstream: String,
        /// Exchange the message was published to.
        exchange: String,
        /// Routing key of the message.
        routing_key: String,
        /// AMQP reply code, usually 312 NO_ROUTE.
        reply_code: u16,
        /// The broker's reply text.
        reply_text: String,
    },
    /// The broker closed the channel, for example because the exchange does not exist.
    #[error("amqp upstream `{upstream}` failed the publish to exchange `{exchange}`: {reason}")]
    ChannelError {
        /// Upstream name.
        upstream: String,
        /// Exchange the message was published to.
        exchange: String,
        /// The client library's error text.
        reason: String,
    },
    /// No confirm arrived within `confirm_timeout`; the broker may still have the message.
    #[error("amqp upstream `{upstream}` did not confirm within {timeout:?}")]
    TimedOut {
        /// Upstream name.
        upstream: String,
        /// The configured `confirm_timeout`.
        timeout: Duration,
    },
}

impl PublishError {
    /// Returns the producer's status: 503 while disconnected, 504 on a confirm timeout,
    /// 502 when the broker refused or returned the message.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotConnected { .. } | Self::ConnectionLost { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::TimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Nacked { .. } | Self::Returned { .. } | Self::ChannelError { .. } => {
                StatusCode::BAD_GATEWAY
            }
        }
    }

    /// Returns the `Retry-After` delay of a 503.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::NotConnected { retry_after, .. } | Self::ConnectionLost { retry_after, .. } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    /// Returns the machine-readable error code of the producer's JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotConnected { .. } => "amqp_not_connected",
            Self::ConnectionLost { .. } => "amqp_connection_lost",
            Self::Nacked { .. } => "amqp_nacked",
            Self::Returned { .. } => "amqp_unroutable",
            Self::ChannelError { .. } => "amqp_channel_error",
            Self::TimedOut { .. } => "amqp_confirm_timeout",
        }
    }

    /// Returns the `outcome` label of `ekko_amqp_publishes_total`.
    fn outcome(&self) -> &'static str {
        match self {
            Self::NotConnected { .. } | Self::ConnectionLost { .. } => "unconnected",
            Self::Nacked { .. } => "nacked",
            Self::Returned { .. } => "returned",
            Self::ChannelError { .. } => "failed",
            Self::TimedOut { .. } => "timeout",
        }
    }
}

impl Supervisor {
    /// Publishes every message, persistent and with `mandatory` as configured, and waits
    /// up to `confirm_timeout` for all of the broker's confirms.
    ///
    /// # Errors
    ///
    /// Fails when not connected, when the connection is lost, when any message is nacked or
    /// returned (with `unroutable: error`), when the channel fails, or on the timeout.
    /// Messages before a failed one may have been delivered.
    pub async fn publish(&self, batch: &[Outgoing]) -> Result<Published, PublishError> {
        let timeout = self.settings().amqp.confirm_timeout;
        let result = tokio::time::timeout(timeout, self.publish_all(batch))
            .await
            .unwrap_or_else(|_| {
                Err(PublishError::TimedOut {
                    upstream: self.upstream().to_owned(),
                    timeout,
                })
            });
        match &result {
            Ok(published) => {
                self.count("confirmed", published.confirmed - published.returned);
                self.count("returned", published.returned);
            }
            Err(error) => self.count(error.outcome(), 1),
        }
        result
    }

    async fn publish_all(&self, batch: &[Outgoing]) -> Result<Published, PublishError> {
        let Some(channel) = self.channel() else {
            return Err(PublishError::NotConnected {
                upstream: self.upstream().to_owned(),
                retry_after: self.retry_after(),
            });
        };
        let options = BasicPublishOptions {
            mandatory: self.settings().amqp.mandatory,
            ..BasicPublishOptions::default()
        };
        let mut confirms: Vec<(PublisherConfirm, &Outgoing)> = Vec::with_capacity(batch.len());
        for outgoing in batch {
            let confirm = channel
                .basic_publish(
                    ShortString::from(outgoing.exchange.as_str()),
                    ShortString::from(outgoing.routing_key.as_str()),
                    options,
                    &outgoing.message.body,
                    properties(&outgoing.message),
                )
                .await
                .map_err(|error| self.lost_or_failed(&outgoing.exchange, &error))?;
            confirms.push((confirm, outgoing));
        }
        let mut published = Published {
            published: batch.len(),
            confirmed: 0,
            returned: 0,
        };
        for (confirm, outgoing) in confirms {
            let confirmation = confirm
                .await
                .map_err(|error| self.lost_or_failed(&outgoing.exchange, &error))?;
            self.check(confirmation, outgoing, &mut published)?;
        }
        Ok(published)
    }

    /// Maps a confirmation to success or to `Nacked` or `Returned`.
    fn check(
        &self,
        confirmation: Confirmation,
        outgoing: &Outgoing,
        published: &mut Published,
    ) -> Result<(), PublishError> {
        let upstream = self.upstream().to_owned();
        match confirmation {
            Confirmation::Nack(_) => Err(PublishError::Nacked {
                upstream,
                exchange: outgoing.exchange.clone(),
            }),
            Confirmation::Ack(Some(returned)) => {
                if self.settings().amqp.unroutable == Unroutable::Success {
                    published.confirmed += 1;
                    published.returned += 1;
                    return Ok(());
                }
                Err(PublishError::Returned {
                    upstream,
                    exchange: outgoing.exchange.clone(),
                    routing_key: outgoing.routing_key.clone(),
                    reply_code: returned.reply_code,
                    reply_text: returned.reply_text.to_string(),
                })
            }
            Confirmation::Ack(None) => {
                published.confirmed += 1;
                Ok(())
            }
            // The channel is put in confirm mode before it is handed out.
            Confirmation::NotRequested => Err(PublishError::ChannelError {
                upstream,
                exchange: outgoing.exchange.clone(),
                reason: "the channel is not in confirm mode".to_owned(),
            }),
        }
    }

    /// Classifies a client error: a closed connection means `ConnectionLost` (503), and a
    /// channel closed by the broker, such as for a missing exchange, is a `ChannelError` (502).
    fn lost_or_failed(&self, exchange: &str, error: &lapin::Error) -> PublishError {
        let upstream = self.upstream().to_owned();
        if error.is_amqp_soft_error() {
            return PublishError::ChannelError {
                upstream,
                exchange: exchange.to_owned(),
                reason: error.to_string(),
            };
        }
        tracing::debug!(upstream = %upstream, %error, "amqp publish failed on a lost connection");
        PublishError::ConnectionLost {
            upstream,
            retry_after: self.retry_after(),
        }
    }

    fn count(&self, outcome: &'static str, by: usize) {
        if by == 0 {
            return;
        }
        self.metrics()
            .amqp_publishes
            .get_or_create(&AmqpOutcomeLabels {
                upstream: self.upstream().to_owned(),
                outcome,
            })
            .inc_by(by as u64);
    }
}

/// Builds the AMQP properties: persistent, with content type, message id, timestamp and
/// headers where the message has them.
fn properties(message: &Message) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in &message.headers {
        let value = match value {
            HeaderValue::Text(text) => AMQPValue::LongString(LongString::from(text.as_str())),
            HeaderValue::Int(number) => AMQPValue::LongLongInt(*number),
            HeaderValue::Bool(flag) => AMQPValue::Boolean(*flag),
        };
        headers.insert(ShortString::from(name.as_str()), value);
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers);
    if let Some(timestamp) = message.timestamp {
        properties = properties.with_timestamp(timestamp);
    }
    if let Some(content_type) = &message.content_type {
        properties = properties.with_content_type(ShortString::from(content_type.as_str()));
    }
    if let Some(id) = &message.message_id {
        properties = properties.with_message_id(ShortString::from(id.as_str()));
    }
    properties
}
