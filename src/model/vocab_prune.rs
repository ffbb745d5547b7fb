//! Prunes a SentencePiece Unigram vocabulary (multilingual-e5-small's 250,002 XLM-R pieces) to
//! the scripts Chinese group chats are written in, together with the word-embedding rows.
//!
//! Why: the `tokenizers` Unigram model keeps every piece in a character trie, and for XLM-R's
//! vocabulary that alone took ~290 MB resident (measured), which would break the 400 MB serving
//! budget on its own. Most pieces are words of other scripts (Cyrillic, Arabic, Devanagari,
//! Thai, accented Latin, ...).
//!
//! Why it is exact for the kept scripts: Unigram segmentation only ever considers pieces that
//! are substrings of the (normalised) text, so for a text made only of kept characters every
//! candidate piece is made of kept characters and was kept: ids map back one to one to the
//! original ones (`source_ids.json` records the mapping; the parity test checks it). A text with
//! characters of other scripts gets `<unk>` for them.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Unicode ranges whose characters are kept (inclusive). ASCII (English words, digits, order
/// numbers and URLs are common in Chinese chats); Latin-1 punctuation and signs (not letters);
/// general punctuation, currency, letter-like symbols, arrows, maths, enclosed alphanumerics,
/// box drawing, shapes, dingbats; CJK punctuation, kana, bopomofo, enclosed CJK, CJK ideographs
/// (BMP, extension A, compatibility, supplementary planes); variation selectors; vertical and
/// full-width forms; emoji; and SentencePiece's word-boundary mark.
const KEPT: &[(u32, u32)] = &[
    (0x20, 0x7E),
    (0xA0, 0xBF),
    (0xD7, 0xD7),
    (0xF7, 0xF7),
    (0x2000, 0x206F),
    (0x20A0, 0x20CF),
    (0x2100, 0x23FF),
    (0x2460, 0x24FF),
    (0x2500, 0x27BF),
    (0x2581, 0x2581),
    (0x2B00, 0x2BFF),
    (0x3000, 0x303F),
    (0x3040, 0x30FF),
    (0x3100, 0x312F),
    (0x3200, 0x33FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0xFE00, 0xFE0F),
    (0xFE30, 0xFE4F),
    (0xFF00, 0xFFEF),
    (0x1F000, 0x1FAFF),
    (0x20000, 0x2FA1F),
];

pub fn is_kept(c: char) -> bool {
    let c = c as u32;
    KEPT.iter().any(|&(a, b)| (a..=b).contains(&c))
}

/// The pruned vocabulary: `source_ids[new id]` = the original id.
pub struct Pruned {
    pub tokenizer: Value,
    pub source_ids: Vec<u32>,
}

/// Prunes a `tokenizer.json` of a Unigram model: keeps the pieces made only of kept characters
/// plus every special / added token, renumbers them in their original order, and rewrites the
/// ids the file refers to (`unk_id`, added tokens, the post-processor's special tokens).
pub fn prune_tokenizer(mut t: Value) -> Result<Pruned> {
    let model = t.get("model").context("tokenizer.json has no model")?;
    if model.get("type").and_then(Value::as_str) != Some("Unigram") {
        bail!("only Unigram tokenizers are pruned (model.type is not \"Unigram\")");
    }
    let vocab = model
        .get("vocab")
        .and_then(Value::as_array)
        .context("model.vocab is not a list")?;
    let vocab = vocab.clone();
    let pieces: Vec<&str> = vocab
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.get(0)
                .and_then(Value::as_str)
                .with_context(|| format!("model.vocab[{i}] is not [piece, score]"))
        })
        .collect::<Result<_>>()?;
    let added: Vec<u32> = t
        .get("added_tokens")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.get("id").and_then(Value::as_u64))
                .map(|id| id as u32)
                .collect()
        })
        .unwrap_or_default();
    let unk = t["model"].get("unk_id").and_then(Value::as_u64);
    let source_ids: Vec<u32> = pieces
        .iter()
        .enumerate()
        .filter(|(i, p)| {
            added.contains(&(*i as u32)) || Some(*i as u64) == unk || p.chars().all(is_kept)
        })
        .map(|(i, _)| i as u32)
        .collect();
    let new_id = |old: u64| -> Result<u64> {
        source_ids
            .binary_search(&(old as u32))
            .map(|i| i as u64)
            .map_err(|_| anyhow::anyhow!("token id {old} is referred to but not in the vocabulary"))
    };
    let kept_vocab: Vec<Value> = source_ids
        .iter()
        .map(|&i| vocab[i as usize].clone())
        .collect();
    let model = t.get_mut("model").expect("checked above");
    model["vocab"] = Value::Array(kept_vocab);
    if let Some(u) = unk {
        model["unk_id"] = Value::from(new_id(u)?);
    }
    if let Some(a) = t.get_mut("added_tokens").and_then(Value::as_array_mut) {
        for x in a {
            if let Some(id) = x.get("id").and_then(Value::as_u64) {
                x["id"] = Value::from(new_id(id)?);
            }
        }
    }
    if let Some(special) = t
        .get_mut("post_processor")
        .and_then(|p| p.get_mut("special_tokens"))
        .and_then(Value::as_object_mut)
    {
        for (_, tok) in special.iter_mut() {
            if let Some(ids) = tok.get_mut("ids").and_then(Value::as_array_mut) {
                for id in ids.iter_mut() {
                    let old = id.as_u64().context("post_processor id is not a number")?;
                    *id = Value::from(new_id(old)?);
                }
            }
        }
    }
    Ok(Pruned {
        tokenizer: t,
        source_ids,
    })
}

/// Prunes `dir/tokenizer.json` in place and writes `dir/source_ids.json`; returns the mapping.
pub fn prune_in_place(dir: &Path) -> Result<Vec<u32>> {
    let path = dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let t: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let pruned = prune_tokenizer(t).with_context(|| path.display().to_string())?;
    std::fs::write(&path, serde_json::to_string(&pruned.tokenizer)?)?;
    std::fs::write(
        dir.join(SOURCE_IDS),
        serde_json::to_string(&pruned.source_ids)?,
    )?;
    Ok(pruned.source_ids)
}

/// Original token id of each pruned id (JSON list), beside the pruned tokenizer.
pub const SOURCE_IDS: &str = "source_ids.json";

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small Unigram tokenizer.json in XLM-R's shape.
    pub(crate) fn tiny_tokenizer() -> Value {
        serde_json::json!({
            "version": "1.0",
            "added_tokens": [
                {"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "<pad>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 3, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 9, "content": "<mask>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
            ],
            "normalizer": null,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always"},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                "special_tokens": {
                    "<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]},
                    "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}
                }
            },
            "decoder": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always"},
            "model": {
                "type": "Unigram",
                "unk_id": 3,
                "vocab": [
                    ["<s>", 0.0], ["<pad>", 0.0], ["</s>", 0.0], ["<unk>", 0.0],
                    ["\u{2581}", -2.0], ["退款", -3.0], ["привет", -3.0], ["退", -4.0],
                    ["款", -4.0], ["<mask>", 0.0], ["ok", -3.5], ["café", -5.0]
                ]
            }
        })
    }

    #[test]
    fn keeps_chinese_ascii_and_specials_and_renumbers_every_reference() {
        let p = prune_tokenizer(tiny_tokenizer()).unwrap();
        // привет (Cyrillic) and café (accented Latin) go; <mask> stays as an added token.
        assert_eq!(p.source_ids, vec![0, 1, 2, 3, 4, 5, 7, 8, 9, 10]);
        let t = &p.tokenizer;
        assert_eq!(t["model"]["vocab"].as_array().unwrap().len(), 10);
        assert_eq!(t["model"]["unk_id"], 3);
        assert_eq!(t["added_tokens"][4]["id"], 8, "<mask> renumbered");
        assert_eq!(t["post_processor"]["special_tokens"]["</s>"]["ids"][0], 2);
        // The pruned file loads and tokenizes Chinese with the same pieces.
        let tok = tokenizers::Tokenizer::from_bytes(serde_json::to_vec(t).unwrap()).unwrap();
        let enc = tok.encode("退款ok", true).unwrap();
        let original: Vec<u32> = enc
            .get_ids()
            .iter()
            .map(|&i| p.source_ids[i as usize])
            .collect();
        let full =
            tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&tiny_tokenizer()).unwrap())
                .unwrap();
        assert_eq!(original, full.encode("退款ok", true).unwrap().get_ids());
    }

    #[test]
    fn a_tokenizer_that_is_not_unigram_is_refused() {
        let mut t = tiny_tokenizer();
        t["model"]["type"] = Value::from("WordPiece");
        let err = prune_tokenizer(t).err().unwrap().to_string();
        assert!(err.contains("only Unigram"), "{err}");
    }
}
