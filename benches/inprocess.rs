//! In-process encoder figures measured exactly the way `shared/peers/peer_bench.py` measures the
//! peer (ONNX Runtime), so the two are comparable line by line: same texts, same token limit,
//! per-text latency with tokenisation included, then all texts in batches padded to the longest
//! text of each batch. No criterion: it prints one JSON object with the peer's keys as its last
//! line, for `benches/compare_with_peer.sh`.
//!
//!   cargo bench --bench inprocess -- [--texts ../shared/datasets/smp2017/test.tsv]
//!       [--batch 32] [--max-len 64] [--model-dir models/m3e-small]
//!
//! Without --texts, `shared/datasets/smp2017/test.tsv` is looked for above the crate. Run by
//! `cargo test --all-targets` (no `--bench` flag) it is a smoke run over the first 24 texts.
//!
//! Threads: candle uses RAYON_NUM_THREADS when set, otherwise every core; the value used is
//! reported as `threads`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use intentd::model::bert::Mode;
use intentd::model::classifier::load_base_encoder;
use intentd::model::encoder::Tokenized;

const DATASET: &str = "shared/datasets/smp2017/test.tsv";
const SMOKE_TEXTS: usize = 24;

struct Opts {
    texts: PathBuf,
    /// Started by `cargo bench` (which passes --bench), not by `cargo test`.
    bench: bool,
    batch: usize,
    max_len: usize,
    model_dir: PathBuf,
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        texts: PathBuf::new(),
        bench: false,
        batch: 32,
        max_len: 64,
        model_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("models/m3e-small"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--texts" => o.texts = value()?.into(),
            "--batch" => o.batch = value()?.parse().context("--batch")?,
            "--max-len" => o.max_len = value()?.parse().context("--max-len")?,
            "--model-dir" => o.model_dir = value()?.into(),
            // `cargo bench` passes --bench to every bench target.
            "--bench" => o.bench = true,
            other => bail!("unknown argument {other} (see the header of benches/inprocess.rs)"),
        }
    }
    if o.texts.as_os_str().is_empty() {
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        o.texts = crate_dir
            .ancestors()
            .map(|d| d.join(DATASET))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "{DATASET} not found above {}; pass --texts FILE",
                    crate_dir.display()
                )
            })?;
    }
    if o.batch == 0 {
        bail!("--batch must be at least 1");
    }
    Ok(o)
}

/// The peer's percentile: nearest rank on the sorted list.
fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> Result<()> {
    let o = parse_args()?;
    let mut texts = intentd::data::texts::read_texts(&o.texts)?;
    if !o.bench {
        eprintln!(
            "inprocess: not run by `cargo bench`: smoke run over the first {SMOKE_TEXTS} texts"
        );
        texts.truncate(SMOKE_TEXTS);
    }
    let (tokenizer, encoder) = load_base_encoder(&o.model_dir, o.max_len)?;

    let encode = |batch: &[String]| -> Result<()> {
        let toks = tokenizer.tokenize_all(batch)?;
        let refs: Vec<&Tokenized> = toks.iter().collect();
        let padded = tokenizer.pad(&refs, &encoder.device)?;
        let pooled = encoder.embed(&padded, Mode::Infer)?;
        // Materialise the result, as the peer's numpy output is.
        std::hint::black_box(pooled.to_vec2::<f32>()?);
        Ok(())
    };

    for t in texts.iter().take(20) {
        encode(std::slice::from_ref(t))?;
    }
    let mut lat = Vec::with_capacity(texts.len());
    for t in &texts {
        let t0 = Instant::now();
        encode(std::slice::from_ref(t))?;
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);

    let t0 = Instant::now();
    for chunk in texts.chunks(o.batch) {
        encode(chunk)?;
    }
    let thr = texts.len() as f64 / t0.elapsed().as_secs_f64();

    let toks = tokenizer.tokenize_all(&texts)?;
    let mean_tokens = toks.iter().map(|t| t.ids.len()).sum::<usize>() as f64 / toks.len() as f64;
    let round = |x: f64, d: i32| (x * 10f64.powi(d)).round() / 10f64.powi(d);
    let out = serde_json::json!({
        "runtime": "intentd-candle",
        "threads": candle_core::utils::get_num_threads(),
        "texts": texts.len(),
        "mean_tokens": round(mean_tokens, 1),
        "batch1_p50_ms": round(pct(&lat, 50.0), 3),
        "batch1_p99_ms": round(pct(&lat, 99.0), 3),
        "batch_size": o.batch,
        "batch_sent_per_s": round(thr, 1),
    });
    println!("{out}");
    Ok(())
}
