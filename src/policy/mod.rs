//! Policy file: YAML schema, validation with line numbers, and the compiled routes.

mod model;
mod parse;
pub mod template;

pub use model::*;
pub use parse::{load, parse, PolicyErrors, Problem};
