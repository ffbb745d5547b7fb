//! Model micro-benchmarks: tokenisation of the SMP2017 test texts and the encoder forward pass
//! (padding + BERT + mean pooling, what the batcher runs per batch) at batch 1, 8 and 32, and
//! the lexical head's share of a request (character n-gram features + the mix), fitted on the
//! SMP2017 train texts beside the test file.
//!
//! Needs the pretrained encoder in `models/m3e-small` (`intentd fetch-model`) and the texts in
//! `shared/datasets/smp2017/test.tsv` beside the repository (found by walking up from the
//! crate); `INTENTD_BENCH_MODEL` / `INTENTD_BENCH_TEXTS` override either path.
//!
//! Sample counts are small so the whole run stays under two minutes on two cores:
//! `cargo bench --bench model` (or `-- --quick` for a rough figure in seconds).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use intentd::model::bert::Mode;
use intentd::model::classifier::load_base_encoder;
use intentd::model::encoder::Tokenized;
use intentd::model::lexical::{LexicalHead, LexicalSettings};

/// The same token limit the served model uses by default.
const MAX_TOKENS: usize = 128;
const DATASET: &str = "shared/datasets/smp2017/test.tsv";

fn texts_path() -> PathBuf {
    if let Some(p) = std::env::var_os("INTENTD_BENCH_TEXTS") {
        return PathBuf::from(p);
    }
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .ancestors()
        .map(|d| d.join(DATASET))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{DATASET} not found above {}; set INTENTD_BENCH_TEXTS",
                crate_dir.display()
            )
        })
}

fn model_dir() -> PathBuf {
    std::env::var_os("INTENTD_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/m3e-small"))
}

/// `n` texts spread evenly over the file, so a batch has the file's mix of lengths.
fn spread<T: Clone>(all: &[T], n: usize) -> Vec<T> {
    (0..n).map(|i| all[i * all.len() / n].clone()).collect()
}

fn benches(c: &mut Criterion) {
    let texts = intentd::data::texts::read_texts(&texts_path()).expect("read the benchmark texts");
    let (tokenizer, encoder) = load_base_encoder(&model_dir(), MAX_TOKENS)
        .expect("load models/m3e-small (run `intentd fetch-model`)");

    let mut g = c.benchmark_group("tokenize");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Elements(texts.len() as u64));
    g.bench_function(format!("smp2017_test_{}_texts", texts.len()), |b| {
        b.iter(|| tokenizer.tokenize_all(black_box(&texts)).unwrap())
    });
    g.finish();

    let tokens = tokenizer.tokenize_all(&texts).unwrap();
    let mut g = c.benchmark_group("encoder_forward");
    // Flat sampling: the same few iterations per sample, so a slow batch-32 pass does not make
    // criterion's linear ramp run it dozens of times.
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for batch in [1usize, 8, 32] {
        let chosen: Vec<Tokenized> = if batch == 1 {
            // A text of the median length stands for "a typical single message".
            let mut by_len = tokens.clone();
            by_len.sort_by_key(|t| t.ids.len());
            vec![by_len[by_len.len() / 2].clone()]
        } else {
            spread(&tokens, batch)
        };
        let refs: Vec<&Tokenized> = chosen.iter().collect();
        let longest = refs.iter().map(|t| t.ids.len()).max().unwrap_or(0);
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(
            BenchmarkId::new("m3e_small", format!("b{batch}_t{longest}")),
            &refs,
            |b, refs| {
                b.iter(|| {
                    let padded = tokenizer.pad(black_box(refs), &encoder.device).unwrap();
                    encoder.embed(&padded, Mode::Infer).unwrap()
                })
            },
        );
    }
    g.finish();

    let train = intentd::data::load(&texts_path().with_file_name("train.tsv"))
        .expect("read train.tsv beside the benchmark texts");
    let (labels, gold) = intentd::data::label_check::label_indices(&train.examples);
    let train_texts: Vec<&str> = train.examples.iter().map(|e| e.text.as_str()).collect();
    let settings = LexicalSettings {
        weight: intentd::model::train::DEFAULT_LEXICAL_WEIGHT,
        c: 30.0,
    };
    let mut g = c.benchmark_group("lexical_head");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Elements(train_texts.len() as u64));
    g.bench_function(format!("fit_{}_texts", train_texts.len()), |b| {
        b.iter(|| LexicalHead::fit(black_box(&train_texts), &gold, labels.len(), settings).unwrap())
    });
    let head = LexicalHead::fit(&train_texts, &gold, labels.len(), settings).unwrap();
    let encoder_probs = vec![1.0 / labels.len() as f32; labels.len()];
    g.throughput(Throughput::Elements(texts.len() as u64));
    g.bench_function(format!("features_and_mix_{}_texts", texts.len()), |b| {
        b.iter(|| {
            for t in &texts {
                black_box(head.mix(&encoder_probs, &head.ngrams.features(black_box(t))));
            }
        })
    });
    g.finish();
}

criterion_group!(model, benches);
criterion_main!(model);
