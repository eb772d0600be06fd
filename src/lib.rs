//! ekko: a notification gateway that forwards only real changes.

pub mod notify;
pub mod policy;
pub mod state;
