//! A deterministic stand-in for the encoder, so the service layer is tested in-process without
//! a trained model: a text containing one of the configured phrases gets that phrase's intent
//! with a fixed confidence; anything else gets a flat distribution (the model "does not know").
//!
//! It goes through the real [`TextTokenizer`] and batching path: its tokenizer is a character
//! vocabulary built from the phrases, and `predict` reads the phrases back from the token ids.

use std::collections::HashMap;

use anyhow::{bail, Result};
use tokenizers::Tokenizer;

use super::classifier::{IntentBackend, Prediction};
use super::encoder::{TextTokenizer, Tokenized};

const SPECIALS: [&str; 4] = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"];

pub struct FakeBackend {
    labels: Vec<String>,
    /// (phrase, label index), first match wins.
    phrases: Vec<(String, usize)>,
    /// Token id -> character (specials and unknown map to a character no phrase contains).
    chars: Vec<char>,
    confidence: f32,
    tokenizer: TextTokenizer,
    version: String,
}

impl FakeBackend {
    /// `phrases`: (phrase, intent); every intent must be one of `labels`. A matching text gets
    /// `confidence` for its intent and the rest spread evenly over the other labels.
    pub fn new(labels: &[&str], phrases: &[(&str, &str)], confidence: f32) -> Result<Self> {
        if labels.len() < 2 {
            bail!("a fake model needs at least two labels");
        }
        let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        let mut vocab: HashMap<String, u32> = SPECIALS
            .iter()
            .enumerate()
            .map(|(i, s)| (s.to_string(), i as u32))
            .collect();
        let mut chars: Vec<char> = vec!['\u{0}'; SPECIALS.len()];
        let mut mapped = Vec::new();
        for (phrase, intent) in phrases {
            let Some(i) = labels.iter().position(|l| l == intent) else {
                bail!("phrase '{phrase}': intent '{intent}' is not a label");
            };
            for c in phrase.chars() {
                vocab.entry(c.to_string()).or_insert_with(|| {
                    chars.push(c);
                    (chars.len() - 1) as u32
                });
            }
            mapped.push((phrase.to_string(), i));
        }
        let spec = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [],
            // One token per character: CJK characters are spaced out, then split on spaces.
            "normalizer": {"type": "BertNormalizer", "clean_text": true,
                           "handle_chinese_chars": true, "strip_accents": false,
                           "lowercase": false},
            "pre_tokenizer": {"type": "WhitespaceSplit"},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}},
                           {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}},
                         {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
                "special_tokens": {
                    "[CLS]": {"id": "[CLS]", "ids": [1], "tokens": ["[CLS]"]},
                    "[SEP]": {"id": "[SEP]", "ids": [2], "tokens": ["[SEP]"]}
                }
            },
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
        });
        let inner: Tokenizer = spec
            .to_string()
            .parse()
            .map_err(|e| anyhow::anyhow!("fake tokenizer: {e}"))?;
        Ok(Self {
            labels,
            phrases: mapped,
            chars,
            confidence,
            tokenizer: TextTokenizer::from_tokenizer(inner, 128)?,
            version: "fake-1".into(),
        })
    }

    /// The same model under another version (a reload that changed it).
    pub fn with_version(mut self, version: &str) -> Self {
        self.version = version.to_string();
        self
    }

    fn text_of(&self, t: &Tokenized) -> String {
        t.ids
            .iter()
            .map(|&id| self.chars.get(id as usize).copied().unwrap_or('\u{0}'))
            .collect()
    }
}

impl IntentBackend for FakeBackend {
    fn labels(&self) -> &[String] {
        &self.labels
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn tokenize(&self, text: &str) -> Result<Tokenized> {
        self.tokenizer.tokenize(text)
    }

    fn predict(&self, batch: &[&Tokenized]) -> Result<Vec<Prediction>> {
        let n = self.labels.len();
        Ok(batch
            .iter()
            .map(|t| {
                let text = self.text_of(t);
                let hit = self.phrases.iter().find(|(p, _)| text.contains(p.as_str()));
                let probs = match hit {
                    Some(&(_, i)) => {
                        let rest = (1.0 - self.confidence) / (n - 1) as f32;
                        (0..n)
                            .map(|j| if j == i { self.confidence } else { rest })
                            .collect()
                    }
                    None => vec![1.0 / n as f32; n],
                };
                Prediction { probs }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phrase_in_the_text_picks_its_intent() {
        let m = FakeBackend::new(
            &["refund", "price", "other"],
            &[("退款", "refund"), ("多少钱", "price")],
            0.9,
        )
        .unwrap();
        let a = m.tokenize("我想退款可以吗").unwrap();
        let b = m.tokenize("这个多少钱").unwrap();
        let c = m.tokenize("hello").unwrap();
        let p = m.predict(&[&a, &b, &c]).unwrap();
        assert!((p[0].probs[0] - 0.9).abs() < 1e-6, "{:?}", p[0].probs);
        assert!((p[1].probs[1] - 0.9).abs() < 1e-6, "{:?}", p[1].probs);
        assert!(p[2].probs.iter().all(|&x| (x - 1.0 / 3.0).abs() < 1e-6));
        // [CLS] ... [SEP] around one token per character.
        assert_eq!(a.ids.len(), 7 + 2);
    }

    #[test]
    fn an_unknown_intent_is_refused() {
        let e = FakeBackend::new(&["a", "b"], &[("x", "c")], 0.9)
            .err()
            .unwrap();
        assert!(e.to_string().contains("'c' is not a label"), "{e}");
    }
}
