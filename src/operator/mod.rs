//! The operator's files as one unit: everything in `config/operator/` (intents, keyword rules,
//! replies, playbook, banned words, calendar) plus the training-data synonyms / regexes / lookups
//! the keyword layer reads, loaded and validated together into one immutable
//! [`OperatorSnapshot`]. A reload builds a new snapshot and swaps it in with one store, or
//! fails with `file:line: problem` and leaves the running one in place.

mod loader;
mod snapshot;

pub use loader::{hash_files, OperatorSources};
pub use snapshot::{LiveOperator, OperatorSnapshot};

/// Every problem with an operator file: `file:line: problem` (the one error type the data,
/// engine and policy loaders share).
pub type OperatorError = crate::data::FileError;
