//! A fixed amount of encoder work for profilers: `iters` forward passes (pad + BERT + mean pool,
//! what the batcher runs) over `batch` texts of the SMP2017 test set. Instruction counts under
//! callgrind do not depend on the machine's load, so they show whether a change removes work:
//!
//!   cargo build --release --example profile_encoder
//!   RAYON_NUM_THREADS=1 valgrind --tool=callgrind --toggle-collect='*SentenceEncoder*embed*' \
//!       target/release/examples/profile_encoder --batch 1 --iters 5
//!
//! (one thread: idle workers spinning would otherwise add load-dependent instructions). Prints
//! the wall time per pass as well, for `perf record` or a quick check.
//!
//!   profile_encoder [--batch 1] [--iters 5] [--texts FILE] [--model-dir models/m3e-small]

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use intentd::model::bert::Mode;
use intentd::model::classifier::load_base_encoder;
use intentd::model::encoder::Tokenized;

const DATASET: &str = "shared/datasets/smp2017/test.tsv";

fn main() -> Result<()> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut batch = 1usize;
    let mut iters = 5usize;
    let mut texts: Option<PathBuf> = None;
    let mut model_dir = crate_dir.join("models/m3e-small");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--batch" => batch = value()?.parse().context("--batch")?,
            "--iters" => iters = value()?.parse().context("--iters")?,
            "--texts" => texts = Some(value()?.into()),
            "--model-dir" => model_dir = value()?.into(),
            other => {
                bail!("unknown argument {other} (see the header of examples/profile_encoder.rs)")
            }
        }
    }
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let texts = match texts {
        Some(t) => t,
        None => crate_dir
            .ancestors()
            .map(|d| d.join(DATASET))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "{DATASET} not found above {}; pass --texts",
                    crate_dir.display()
                )
            })?,
    };
    let all = intentd::data::texts::read_texts(&texts)?;
    let (tokenizer, encoder) = load_base_encoder(&model_dir, 64)?;
    let tokens = tokenizer.tokenize_all(&all)?;
    // Batch 1: a text of median length; larger batches: texts spread over the file.
    let chosen: Vec<Tokenized> = if batch == 1 {
        let mut by_len = tokens.clone();
        by_len.sort_by_key(|t| t.ids.len());
        vec![by_len[by_len.len() / 2].clone()]
    } else {
        (0..batch)
            .map(|i| tokens[i * tokens.len() / batch].clone())
            .collect()
    };
    let refs: Vec<&Tokenized> = chosen.iter().collect();
    let longest = refs.iter().map(|t| t.ids.len()).max().unwrap_or(0);
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t0 = Instant::now();
        let padded = tokenizer.pad(&refs, &encoder.device)?;
        let pooled = encoder.embed(&padded, Mode::Infer)?;
        std::hint::black_box(pooled.to_vec2::<f32>()?);
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "batch {batch} (longest {longest} tokens), {iters} passes: median {:.3} ms, min {:.3} ms",
        times[times.len() / 2],
        times[0]
    );
    Ok(())
}
