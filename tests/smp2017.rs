//! Acceptance on the public SMP2017 intent dataset (31 intents), read from ../shared beside the
//! repository: the README's exact commands, default settings.

mod common;

use std::process::Command;
use std::time::Instant;

#[test]
fn smp2017_train_then_eval_reaches_the_target_accuracy() {
    let data =
        common::smp2017_dir().expect("../shared/datasets/smp2017 must exist beside the repository");
    common::base_model_dir();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    let started = Instant::now();
    let train = Command::new(common::intentd_bin())
        .current_dir(common::repo_root())
        .args(["train", "--quiet", "--data"])
        .arg(data.join("train.tsv"))
        .arg("--out")
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        train.status.success(),
        "{}",
        String::from_utf8_lossy(&train.stderr)
    );
    let train_secs = started.elapsed().as_secs_f64();
    let eval = Command::new(common::intentd_bin())
        .current_dir(common::repo_root())
        .args(["eval", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(data.join("test.tsv"))
        .output()
        .unwrap();
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let out = String::from_utf8_lossy(&eval.stdout);
    let last = out.lines().last().unwrap().to_string();
    println!("SMP2017 test: {last} (training took {train_secs:.0} s)");
    let acc: f64 = last
        .split(' ')
        .next()
        .unwrap()
        .strip_prefix("accuracy=")
        .unwrap()
        .parse()
        .unwrap();
    let n: usize = last.rsplit("n=").next().unwrap().parse().unwrap();
    assert_eq!(n, 667);
    assert!(
        acc >= SMP2017_TARGET,
        "accuracy {acc} below {SMP2017_TARGET}: {last}"
    );

    // The int8 serving path on the same model (issue 18): within 0.5 points of fp32.
    let Some(isa) = intentd::model::int8::detect() else {
        println!("SMP2017 int8: NOT measured: this CPU has no AVX-512 VNNI or AVX-VNNI");
        return;
    };
    let eval8 = Command::new(common::intentd_bin())
        .current_dir(common::repo_root())
        .args(["eval", "--precision", "int8", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(data.join("test.tsv"))
        .output()
        .unwrap();
    assert!(
        eval8.status.success(),
        "{}",
        String::from_utf8_lossy(&eval8.stderr)
    );
    let out8 = String::from_utf8_lossy(&eval8.stdout);
    let last8 = out8.lines().last().unwrap().to_string();
    println!("SMP2017 test, int8 ({}): {last8}", isa.name());
    let acc8: f64 = last8
        .split(' ')
        .next()
        .unwrap()
        .strip_prefix("accuracy=")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (acc - acc8).abs() <= 0.005,
        "int8 accuracy {acc8} is more than 0.5 points from fp32's {acc}"
    );
}

/// Issue 17's target. The default (the cascaded ensemble of both bases, seed 42) scored 0.9535
/// on 2026-12-03 (README, "SMP2017"); m3e-small alone 0.9400.
const SMP2017_TARGET: f64 = 0.95;
