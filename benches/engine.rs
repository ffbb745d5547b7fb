//! Decision micro-benchmarks, no model involved: the keyword layer (`KeywordLayer::match_text`:
//! normalisation, jieba segmentation, synonym / phrase / regex / lookup rules), the fusion of
//! keyword and model scores (`fusion::fuse`), the playbook's decision
//! (`Playbook::decide_message`), and the whole keyword-only decision the server makes when no
//! model is loaded (precheck + keywords + fusion + playbook), and entity extraction
//! (`EntityExtractor::extract`). Issue 6 asks for keyword-only
//! decisions with p99 < 1 ms; this is the in-process part of that figure.
//!
//! Uses the shipped operator files (`config/operator/`, `training-data/nlu/`) and the SMP2017
//! test texts (`shared/datasets/smp2017/test.tsv` above the crate, or `INTENTD_BENCH_TEXTS`).
//! The playbook runs on a manual clock advanced 50 ms per message, over 500 chats (one message per
//! chat every 25 s), so its spacing and cooldown state looks like a busy server's rather than one
//! chat's.
//!
//! `cargo bench --bench engine` (about 30 s), `-- --quick` for a rough figure.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use intentd::clock::{Clock, ManualClock, SharedClock};
use intentd::engine::fusion::{self, FusionConfig};
use intentd::operator::OperatorSnapshot;
use intentd::policy::playbook::Playbook;
use intentd::types::{IntentScore, MessageContext, UserInfo};

const DATASET: &str = "shared/datasets/smp2017/test.tsv";
/// 2027-02-22 10:00 Asia/Shanghai, a Monday morning.
const START_MS: i64 = 1_803_261_600_000;
const CHATS: usize = 500;

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

fn ctx(i: usize, text: &str, at_ms: i64) -> MessageContext {
    MessageContext {
        bot_id: "demo".into(),
        chat_id: format!("chat-{}", i % CHATS),
        chat_name: "bench group".into(),
        message_id: format!("m{i}"),
        text: text.into(),
        at_ms,
        sent_at_ms: 0,
        user: UserInfo {
            id: format!("u{}", i % 997),
            nickname: "bench".into(),
            ..Default::default()
        },
    }
}

/// A plausible model output: most mass on the keyword layer's best intent (or on a fixed intent
/// when the rules found nothing), the rest spread over the catalogue.
fn model_scores(intents: &[String], favourite: Option<&str>, i: usize) -> Vec<IntentScore> {
    let top = favourite
        .map(str::to_string)
        .unwrap_or_else(|| intents[i % intents.len()].clone());
    let rest = 0.3 / (intents.len() - 1) as f32;
    let mut scores: Vec<IntentScore> = intents
        .iter()
        .map(|id| IntentScore {
            intent: id.clone(),
            confidence: if *id == top { 0.7 } else { rest },
        })
        .collect();
    scores.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    scores
}

fn benches(c: &mut Criterion) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let texts = intentd::data::texts::read_texts(&texts_path()).expect("read the benchmark texts");
    let rules = OperatorSnapshot::load_dir(
        &repo.join("config/operator"),
        &repo.join("training-data/nlu"),
        FusionConfig::default(),
    )
    .expect("load config/operator");
    let clock = Arc::new(ManualClock::new(START_MS));
    let shared: SharedClock = clock.clone();
    let playbook =
        Playbook::load(&repo.join("config/operator"), shared, 42).expect("load the playbook");
    let intents: Vec<String> = rules.catalog.ids().map(str::to_string).collect();
    let names = |i: &str| rules.display_name(i);
    // The playbook's calls are async (its state store may be a database); the in-memory store
    // answers at once, so a current-thread runtime drives them as the server's tasks would.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime");

    let mut g = c.benchmark_group("keywords");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(texts.len() as u64));
    g.bench_function(format!("match_text_smp2017_{}_texts", texts.len()), |b| {
        b.iter(|| {
            for t in &texts {
                black_box(rules.keywords.match_text(black_box(t)));
            }
        })
    });
    g.finish();

    // Entity extraction (built-in patterns, dates on a fixed "now", lookup tables, operator
    // regexes), which the server runs beside the keyword layer on every message.
    let now = chrono::TimeZone::timestamp_millis_opt(&chrono_tz::Asia::Shanghai, START_MS)
        .single()
        .expect("a valid time");
    let mut g = c.benchmark_group("entities");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(texts.len() as u64));
    g.bench_function(format!("extract_smp2017_{}_texts", texts.len()), |b| {
        b.iter(|| {
            for t in &texts {
                black_box(rules.entities.extract(black_box(t), now));
            }
        })
    });
    g.finish();

    let matches: Vec<_> = texts.iter().map(|t| rules.keywords.match_text(t)).collect();
    let scores: Vec<Vec<IntentScore>> = matches
        .iter()
        .enumerate()
        .map(|(i, m)| model_scores(&intents, m.best().map(|s| s.intent.as_str()), i))
        .collect();
    let mut g = c.benchmark_group("fusion");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Elements(texts.len() as u64));
    g.bench_function("fuse_with_model", |b| {
        b.iter(|| {
            for (m, s) in matches.iter().zip(&scores) {
                black_box(fusion::fuse(Some(s), m, &rules.fusion));
            }
        })
    });
    g.bench_function("fuse_keywords_only", |b| {
        b.iter(|| {
            for m in &matches {
                black_box(fusion::fuse(None, m, &rules.fusion));
            }
        })
    });
    g.finish();

    let classifications: Vec<_> = matches
        .iter()
        .zip(&scores)
        .map(|(m, s)| fusion::fuse(Some(s), m, &rules.fusion))
        .collect();
    let mut g = c.benchmark_group("playbook");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(texts.len() as u64));
    let mut n = 0usize;
    g.bench_function("decide_message", |b| {
        b.iter(|| {
            for (t, cls) in texts.iter().zip(&classifications) {
                clock.advance_ms(50);
                let c = ctx(n, t, clock.now_ms());
                n += 1;
                black_box(
                    rt.block_on(playbook.decide_message(&c, cls, &names))
                        .expect("in-memory state"),
                );
            }
        })
    });
    g.finish();

    // What `Core::classify_valid` does per message when no model is loaded, minus the log row.
    let mut g = c.benchmark_group("decision");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(texts.len() as u64));
    g.bench_function("keyword_only_full_decision", |b| {
        b.iter(|| {
            for t in &texts {
                clock.advance_ms(50);
                let c = ctx(n, t, clock.now_ms());
                n += 1;
                let d = match rt.block_on(playbook.precheck(&c)).expect("in-memory state") {
                    Some(d) => d,
                    None => {
                        let kw = rules.keywords.match_text(&c.text);
                        let cls = fusion::fuse(None, &kw, &rules.fusion);
                        rt.block_on(playbook.decide_message(&c, &cls, &names))
                            .expect("in-memory state")
                    }
                };
                black_box(d);
            }
        })
    });
    g.finish();
}

criterion_group!(engine, benches);
criterion_main!(engine);
