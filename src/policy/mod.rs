//! Policy file: YAML schema, validation with line numbers, and the compiled routes.

mod model;
mod parse;
pub mod template;
mod units;
mod yaml;

pub use model::*;
pub use parse::{load, parse, PolicyErrors, Problem};
