//! Persistent publishes with publisher confirms, and what each outcome means for the producer.

use std::time::Duration;

use http::StatusCode;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use tokio::time::Instant;

use super::connection::Supervisor;
use super::exchanges;
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

/// Failure of a publish. Nothing is committed after any of these, so the producer's retry
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
    /// The exchange does not exist on the broker: the passive declare that checks it got
    /// 404 NOT_FOUND.
    #[error("amqp upstream `{upstream}` has no exchange `{exchange}` (404 NOT_FOUND); declare the exchange on the broker, or fix the route's `exchange` template")]
    ExchangeNotFound {
        /// Upstream name.
        upstream: String,
        /// The exchange name rendered for the message.
        exchange: String,
    },
    /// The broker closed the channel for a reason other than a missing exchange, or closed
    /// the reopened channel too when the batch was published once more.
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
    /// 502 when the exchange is missing or the broker refused or returned the message.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotConnected { .. } | Self::ConnectionLost { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::TimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Nacked { .. }
            | Self::Returned { .. }
            | Self::ExchangeNotFound { .. }
            | Self::ChannelError { .. } => StatusCode::BAD_GATEWAY,
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
            Self::ExchangeNotFound { .. } => "amqp_exchange_not_found",
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
            Self::ExchangeNotFound { .. } | Self::ChannelError { .. } => "failed",
            Self::TimedOut { .. } => "timeout",
        }
    }
}

impl Supervisor {
    /// Publishes every message, persistent and with `mandatory` as configured, and waits
    /// up to `confirm_timeout` for all of the broker's confirms.
    ///
    /// Before the first publish to an exchange name, a passive declare on a short-lived
    /// channel checks that the exchange exists, so a missing one does not close the shared
    /// channel. When the broker closes the shared channel anyway, for example because an
    /// exchange was deleted after it was checked, the batch's exchanges are checked again
    /// and, if they all exist, the batch is published once more on the reopened channel.
    ///
    /// # Errors
    ///
    /// Fails when not connected, when the connection is lost, when an exchange does not
    /// exist, when any message is nacked or returned (with `unroutable: error`), when the
    /// channel fails, or on the timeout. Messages before a failed one may have been
    /// delivered, and so may messages of a batch that is published once more.
    pub async fn publish(&self, batch: &[Outgoing]) -> Result<Published, PublishError> {
        let deadline = Instant::now() + self.settings().amqp.confirm_timeout;
        let result = self.publish_checked(batch, deadline).await;
        match &result {
            Ok(published) => {
                self.count("confirmed", published.confirmed - published.returned);
                self.count("returned", published.returned);
            }
            Err(error) => self.count(error.outcome(), 1),
        }
        result
    }

    async fn publish_checked(
        &self,
        batch: &[Outgoing],
        deadline: Instant,
    ) -> Result<Published, PublishError> {
        self.check_exchanges(batch, deadline).await?;
        let error = match self.publish_once(batch, deadline).await {
            Err(error @ PublishError::ChannelError { .. }) if self.connection_open() => error,
            other => return other,
        };
        // The broker closed the shared channel. Either an exchange of this batch is gone,
        // or another request's publish closed the channel under this one.
        for outgoing in batch {
            self.exchanges().forget(&outgoing.exchange);
        }
        self.check_exchanges(batch, deadline).await?;
        tracing::debug!(upstream = %self.upstream(), %error, "amqp channel closed during a publish; publishing the batch again on the reopened channel");
        self.publish_once(batch, deadline).await
    }

    /// Checks with a passive declare that every exchange of `batch` not yet known exists,
    /// and remembers those that do.
    async fn check_exchanges(
        &self,
        batch: &[Outgoing],
        deadline: Instant,
    ) -> Result<(), PublishError> {
        for outgoing in batch {
            let exchange = outgoing.exchange.as_str();
            if self.exchanges().contains(exchange) {
                continue;
            }
            let Some(connection) = self.connection() else {
                return Err(self.not_connected());
            };
            let probe = exchanges::exchange_exists(&connection, exchange);
            match tokio::time::timeout_at(deadline, probe).await {
                Ok(Ok(true)) => self.exchanges().insert(exchange),
                Ok(Ok(false)) => return Err(self.exchange_not_found(exchange)),
                Ok(Err(error)) => return Err(self.lost_or_failed(exchange, &error)),
                Err(_) => return Err(self.timed_out()),
            }
        }
        Ok(())
    }

    /// Publishes `batch` on the open channel, waiting for a reopened one if the broker
    /// closed it, and waits for the confirms until `deadline`.
    async fn publish_once(
        &self,
        batch: &[Outgoing],
        deadline: Instant,
    ) -> Result<Published, PublishError> {
        let Some(link) = self.open_link(deadline).await else {
            return Err(self.not_connected());
        };
        tokio::time::timeout_at(deadline, self.publish_on(&link.channel, batch))
            .await
            .unwrap_or_else(|_| Err(self.timed_out()))
    }

    async fn publish_on(
        &self,
        channel: &Channel,
        batch: &[Outgoing],
    ) -> Result<Published, PublishError> {
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

    /// Classifies a client error: with the connection lost it is `ConnectionLost` (503),
    /// and on an open connection a `ChannelError` (502), because the broker closed the
    /// channel. The background task is woken to reopen the shared channel.
    ///
    /// A 404 NOT_FOUND on the shared channel is a `ChannelError` too, because it reaches
    /// every publish in flight there, not only the one to the missing exchange.
    fn lost_or_failed(&self, exchange: &str, error: &lapin::Error) -> PublishError {
        let upstream = self.upstream().to_owned();
        if error.is_amqp_soft_error() || self.connection_open() {
            self.report_channel_closed();
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

    fn exchange_not_found(&self, exchange: &str) -> PublishError {
        PublishError::ExchangeNotFound {
            upstream: self.upstream().to_owned(),
            exchange: exchange.to_owned(),
        }
    }

    fn not_connected(&self) -> PublishError {
        PublishError::NotConnected {
            upstream: self.upstream().to_owned(),
            retry_after: self.retry_after(),
        }
    }

    fn timed_out(&self) -> PublishError {
        PublishError::TimedOut {
            upstream: self.upstream().to_owned(),
            timeout: self.settings().amqp.confirm_timeout,
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
