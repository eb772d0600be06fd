//! ekko: a notification gateway that forwards only real changes.

pub mod admin;
pub mod amqp;
pub mod cli;
pub mod demo;
pub mod guard;
pub mod lookup;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod server;
pub mod state;
pub mod upstream;
