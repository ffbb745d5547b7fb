//! The int8 serving path end to end, against fp32 on the same model: `intentd classify` with
//! `INTENTD_DENSE_KERNEL=int8` / `fp32` over the shipped held-out set, and the accuracy guard
//! `intentd eval --precision int8` (within 0.5 points of fp32). On a CPU without VNNI the int8
//! path cannot run: the tests say so in their output and check that it is refused (eval) or
//! falls back to fp32 (classify) instead.

mod common;

use std::process::{Command, Output};

use intentd::model::dense::KERNEL_ENV;
use intentd::model::int8;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// The int8 kernel this CPU runs, printed either way.
fn int8_isa() -> Option<int8::Isa> {
    let isa = int8::detect();
    match isa {
        Some(i) => eprintln!("int8 path: this CPU runs the {} kernel", i.name()),
        None => eprintln!(
            "int8 path NOT available on this CPU (no AVX-512 VNNI, no AVX-VNNI): checking the \
             fp32 fallback and the refusal instead of int8 accuracy"
        ),
    }
    isa
}

fn heldout() -> Vec<(String, String)> {
    let ds = intentd::data::load(&common::repo_root().join("training-data/heldout")).unwrap();
    assert!(ds.examples.len() > 100, "held-out set too small");
    ds.examples.into_iter().map(|e| (e.text, e.label)).collect()
}

/// `intentd classify` over every held-out text with the kernel env set: the top intents.
fn classify_all(kernel: &str, texts: &[&str]) -> Vec<String> {
    let model = common::default_model_dir();
    let o = Command::new(common::intentd_bin())
        .arg("classify")
        .arg("--model")
        .arg(&model)
        .args(["--top", "1"])
        .args(texts)
        .env(KERNEL_ENV, kernel)
        .current_dir(common::repo_root())
        .output()
        .expect("run intentd");
    assert!(o.status.success(), "{}", stderr(&o));
    let out: Vec<String> = stdout(&o)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["intent"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(out.len(), texts.len());
    out
}

#[test]
fn int8_and_fp32_classify_the_heldout_set_alike() {
    let isa = int8_isa();
    let data = heldout();
    let texts: Vec<&str> = data.iter().map(|d| d.0.as_str()).collect();
    let fp32 = classify_all("fp32", &texts);
    let q = classify_all("int8", &texts);
    let acc = |pred: &[String]| {
        pred.iter().zip(&data).filter(|(p, d)| **p == d.1).count() as f64 / data.len() as f64
    };
    let agree = fp32.iter().zip(&q).filter(|(a, b)| a == b).count();
    let (a32, a8) = (acc(&fp32), acc(&q));
    eprintln!(
        "held-out ({} texts): fp32 accuracy {a32:.4}, int8 {a8:.4}; same top intent for {agree}",
        data.len()
    );
    if isa.is_none() {
        // int8 asked for, fp32 served: identical answers.
        assert_eq!(fp32, q);
        return;
    }
    assert!(
        (a32 - a8).abs() <= 0.005,
        "int8 accuracy {a8:.4} is more than 0.5 points from fp32's {a32:.4}"
    );
    // Quantization may flip a borderline text or two, not more.
    assert!(
        agree as f64 >= 0.98 * data.len() as f64,
        "only {agree} of {} texts get the same intent",
        data.len()
    );
}

fn eval(precision: &str) -> Output {
    Command::new(common::intentd_bin())
        .args(["eval", "--precision", precision, "--model"])
        .arg(common::default_model_dir())
        .env_remove(KERNEL_ENV)
        .current_dir(common::repo_root())
        .output()
        .expect("run intentd")
}

/// (accuracy, the `precision:` line) from `intentd eval`'s output.
fn eval_scores(o: &Output) -> (f64, String) {
    assert!(o.status.success(), "{}", stderr(o));
    let out = stdout(o);
    let kernel = out
        .lines()
        .find_map(|l| l.strip_prefix("precision: "))
        .expect("eval prints the precision it ran at")
        .to_string();
    let last = out.lines().last().unwrap();
    let acc = last
        .split(' ')
        .next()
        .and_then(|p| p.strip_prefix("accuracy="))
        .unwrap_or_else(|| panic!("last line: {last}"))
        .parse()
        .unwrap();
    (acc, kernel)
}

#[test]
fn eval_precision_int8_stays_within_half_a_point_of_fp32() {
    let isa = int8_isa();
    let (a32, k32) = eval_scores(&eval("fp32"));
    assert!(k32.starts_with("fp32"), "{k32}");
    let o = eval("int8");
    let Some(isa) = isa else {
        assert!(!o.status.success());
        assert!(stderr(&o).contains("VNNI"), "{}", stderr(&o));
        return;
    };
    let (a8, k8) = eval_scores(&o);
    assert_eq!(k8, format!("int8 ({})", isa.name()));
    eprintln!("intentd eval on training-data/heldout: fp32 {a32:.4}, int8 {a8:.4}");
    assert!(
        (a32 - a8).abs() <= 0.005,
        "int8 accuracy {a8:.4} is more than 0.5 points from fp32's {a32:.4}"
    );
    // auto picks int8 here.
    let (_, ka) = eval_scores(&eval("auto"));
    assert_eq!(ka, k8);
}

#[test]
fn a_bad_precision_is_an_error_naming_it() {
    let o = Command::new(common::intentd_bin())
        .args(["eval", "--precision", "int4"])
        .current_dir(common::repo_root())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("int4"), "{}", stderr(&o));
    let o = Command::new(common::intentd_bin())
        .args(["eval", "--model"])
        .arg(common::default_model_dir())
        .env(KERNEL_ENV, "fast")
        .current_dir(common::repo_root())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("INTENTD_DENSE_KERNEL=fast") && err.contains("int8"),
        "{err}"
    );
}
