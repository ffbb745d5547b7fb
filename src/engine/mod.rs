//! The decision core besides the model: the intent catalog, the keyword layer (segmentation,
//! synonyms, operator rules) and the fusion of model and rules into one `Classification`.

pub mod catalog;
pub mod entities;
pub mod fusion;
pub mod keywords;
pub mod normalize;
pub mod rules;
pub mod synonyms;

pub use catalog::{Catalog, Handoff, IntentInfo};
pub use fusion::{fuse, FusionConfig};
pub use keywords::{ConfigError, KeywordLayer, KeywordMatch};
pub use normalize::normalize_for_matching;

#[cfg(test)]
mod shipped_config_tests;
