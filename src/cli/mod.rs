//! Command-line front door: each subcommand parses its flags and calls into the library.

pub mod calibrate;
pub mod classify;
pub mod data;
pub mod eval;
pub mod export;
pub mod fetch_model;
pub mod keygen;
pub mod serve;
pub mod stats;
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::Result;
use intentd::model::base_models::{self, BaseModel};
use intentd::model::fetch::{self, FetchOptions};

/// Where `fetch-model` puts pretrained encoders and `train` puts the default model.
pub const MODELS_DIR: &str = "models";
/// The model `serve` uses when none is named.
pub const DEFAULT_MODEL_DIR: &str = "models/intentd-default";
/// The default model's training data and held-out set.
pub const DEFAULT_TRAINING_DATA: &str = "training-data/nlu";
pub const DEFAULT_HELDOUT_DATA: &str = "training-data/heldout";

pub fn base_model(name: &str) -> Result<&'static BaseModel> {
    base_models::find(name).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown base model '{name}'; known: {}",
            base_models::names().join(", ")
        )
    })
}

/// The pretrained encoder's folder, fetching it first when it is missing.
pub fn ensure_base_model(base: &BaseModel, models_dir: &Path) -> Result<PathBuf> {
    let dir = models_dir.join(base.name);
    if fetch::is_installed(base, &dir) {
        return Ok(dir);
    }
    eprintln!("{} is not installed yet; fetching it first", base.name);
    fetch::fetch(
        base,
        &FetchOptions {
            models_dir: models_dir.to_path_buf(),
            wheels: Vec::new(),
            force: false,
            python: "python3".into(),
        },
    )
}
