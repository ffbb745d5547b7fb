//! The lexical head: a logistic regression over character n-grams (TF-IDF), trained beside the
//! encoder and mixed into its probabilities as a product of experts:
//! `p ∝ p_encoder^(1-w) · p_lexical^w`.
//!
//! Why: the 4-layer encoder generalises over phrasing but blurs surface forms it has seen (a
//! product word, an exact phrase an operator added after a miss); character n-grams keep them.
//! The two err on different messages, so the mix beats either (benches/RESULTS.md, "lexical
//! head"). Features follow scikit-learn's `TfidfVectorizer(analyzer="char_wb",
//! ngram_range=(1, 3), sublinear_tf=True)` so the numbers can be checked against it.
//!
//! Files in a model folder (absent in models trained without it):
//!
//! ```text
//! lexical.json          settings and the n-gram vocabulary, in feature order
//! lexical.safetensors   idf [features], weight [features, labels], bias [labels]
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub const SETTINGS_FILE: &str = "lexical.json";
pub const WEIGHTS_FILE: &str = "lexical.safetensors";

/// Shortest and longest n-gram, in characters.
const MIN_N: usize = 1;
const MAX_N: usize = 3;
/// Full-batch Adam on a convex loss: enough steps to settle the argmax (checked against
/// scikit-learn's L-BFGS on the shipped data: same held-out accuracy within one text).
const FIT_STEPS: usize = 500;
const FIT_LEARNING_RATE: f64 = 0.1;

/// Sparse TF-IDF features of one text: (feature index, value), by index, L2-normalised.
pub type Features = Vec<(u32, f32)>;

/// The character n-gram vocabulary and its inverse document frequencies.
#[derive(Debug, Clone)]
pub struct CharNgrams {
    index: HashMap<String, u32>,
    idf: Vec<f32>,
}

impl CharNgrams {
    /// Vocabulary: every n-gram of the training texts; smoothed idf as scikit-learn computes it,
    /// `ln((1 + n) / (1 + df)) + 1`.
    pub fn fit(texts: &[&str]) -> Self {
        // Sorted by n-gram text, so features are numbered in that order and a refit on the same
        // data writes the same files.
        let mut df: BTreeMap<String, u32> = BTreeMap::new();
        for text in texts {
            let mut grams = ngrams(text);
            grams.sort_unstable();
            grams.dedup();
            for g in grams {
                *df.entry(g).or_default() += 1;
            }
        }
        let n = texts.len() as f64;
        let idf = df
            .values()
            .map(|&d| (((1.0 + n) / (1.0 + d as f64)).ln() + 1.0) as f32)
            .collect();
        let index = df.into_keys().zip(0u32..).collect();
        Self { index, idf }
    }

    pub fn len(&self) -> usize {
        self.idf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.idf.is_empty()
    }

    /// Sublinear term frequency (`1 + ln count`) times idf, L2-normalised; n-grams outside the
    /// vocabulary are ignored.
    pub fn features(&self, text: &str) -> Features {
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for g in ngrams(text) {
            if let Some(&id) = self.index.get(&g) {
                *counts.entry(id).or_default() += 1;
            }
        }
        let mut f: Features = counts
            .into_iter()
            .map(|(id, c)| (id, (1.0 + (c as f32).ln()) * self.idf[id as usize]))
            .collect();
        f.sort_unstable_by_key(|&(id, _)| id);
        let norm = f.iter().map(|&(_, v)| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            for (_, v) in &mut f {
                *v /= norm;
            }
        }
        f
    }

    /// The vocabulary in feature order.
    fn names(&self) -> Vec<String> {
        let mut names = vec![String::new(); self.idf.len()];
        for (g, &id) in &self.index {
            names[id as usize] = g.clone();
        }
        names
    }
}

/// scikit-learn's `char_wb`: lower-cased, each whitespace-separated word padded with one space
/// on both sides, then every n-gram inside the padded word (a word shorter than n counts once).
pub fn ngrams(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut out = Vec::new();
    for word in lower.split_whitespace() {
        let chars: Vec<char> = std::iter::once(' ')
            .chain(word.chars())
            .chain(std::iter::once(' '))
            .collect();
        for n in MIN_N..=MAX_N {
            if chars.len() <= n {
                out.push(chars.iter().collect());
                break;
            }
            for w in chars.windows(n) {
                out.push(w.iter().collect());
            }
        }
    }
    out
}

/// How the head is trained and mixed; recorded in `lexical.json`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LexicalSettings {
    /// The head's exponent `w` in the mix (0 = encoder alone, 1 = lexical alone).
    pub weight: f64,
    /// Inverse L2 strength, as scikit-learn's `C`: the loss is the mean cross-entropy plus
    /// `|W|^2 / (2 C n)`.
    pub c: f64,
}

#[derive(Serialize, Deserialize)]
struct SettingsFile {
    format: u32,
    weight: f64,
    c: f64,
    ngram_range: [usize; 2],
    labels: usize,
    ngrams: Vec<String>,
}

/// A trained lexical head.
#[derive(Debug, Clone)]
pub struct LexicalHead {
    pub ngrams: std::sync::Arc<CharNgrams>,
    /// [features, labels], row-major: a feature's weights for every label are adjacent.
    weight: Vec<f32>,
    bias: Vec<f32>,
    labels: usize,
    pub settings: LexicalSettings,
}

impl LexicalHead {
    /// Fits the vocabulary and a multinomial logistic regression on `texts` labelled `gold`
    /// (indices below `labels`). Deterministic: no sampling, zero start.
    pub fn fit(
        texts: &[&str],
        gold: &[u32],
        labels: usize,
        settings: LexicalSettings,
    ) -> Result<Self> {
        if texts.len() != gold.len() {
            bail!("{} texts but {} labels", texts.len(), gold.len());
        }
        if texts.is_empty() || labels < 2 {
            bail!("the lexical head needs examples of at least 2 intents");
        }
        if let Some(&g) = gold.iter().find(|&&g| g as usize >= labels) {
            bail!("label index {g} out of range (labels: {labels})");
        }
        if !(settings.c > 0.0 && settings.c.is_finite()) {
            bail!("lexical C must be a positive number, got {}", settings.c);
        }
        let ngrams = CharNgrams::fit(texts);
        let rows: Vec<Features> = texts.iter().map(|t| ngrams.features(t)).collect();
        let (weight, bias) = fit_softmax_regression(&rows, gold, ngrams.len(), labels, settings.c);
        Ok(Self {
            ngrams: std::sync::Arc::new(ngrams),
            weight,
            bias,
            labels,
            settings,
        })
    }

    /// Log-probabilities of every label for one text's features.
    pub fn log_probs(&self, features: &[(u32, f32)]) -> Vec<f32> {
        let mut z = self.bias.clone();
        for &(id, v) in features {
            let row = &self.weight[id as usize * self.labels..(id as usize + 1) * self.labels];
            for (zk, wk) in z.iter_mut().zip(row) {
                *zk += v * wk;
            }
        }
        log_softmax(&mut z);
        z
    }

    /// The product-of-experts mix of the encoder's probabilities with this head's, renormalised.
    pub fn mix(&self, encoder_probs: &[f32], features: &[(u32, f32)]) -> Vec<f32> {
        let w = self.settings.weight as f32;
        let lexical = self.log_probs(features);
        let mut z: Vec<f32> = encoder_probs
            .iter()
            .zip(&lexical)
            .map(|(&p, &l)| (1.0 - w) * p.max(1e-30).ln() + w * l)
            .collect();
        log_softmax(&mut z);
        z.iter_mut().for_each(|v| *v = v.exp());
        z
    }

    pub fn labels(&self) -> usize {
        self.labels
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let settings = SettingsFile {
            format: 1,
            weight: self.settings.weight,
            c: self.settings.c,
            ngram_range: [MIN_N, MAX_N],
            labels: self.labels,
            ngrams: self.ngrams.names(),
        };
        std::fs::write(
            dir.join(SETTINGS_FILE),
            serde_json::to_string_pretty(&settings)?,
        )?;
        let v = self.ngrams.len();
        let tensors: HashMap<String, Tensor> = [
            (
                "idf",
                Tensor::from_slice(&self.ngrams.idf, v, &Device::Cpu)?,
            ),
            (
                "weight",
                Tensor::from_slice(&self.weight, (v, self.labels), &Device::Cpu)?,
            ),
            (
                "bias",
                Tensor::from_slice(&self.bias, self.labels, &Device::Cpu)?,
            ),
        ]
        .into_iter()
        .map(|(k, t)| (k.to_string(), t))
        .collect();
        candle_core::safetensors::save(&tensors, dir.join(WEIGHTS_FILE))?;
        Ok(())
    }

    /// Loads the head of a model folder: `Ok(None)` when the folder has none (a model trained
    /// without it); any inconsistency is an error naming the file.
    pub fn load(dir: &Path, labels: usize) -> Result<Option<Self>> {
        let settings_path = dir.join(SETTINGS_FILE);
        let weights_path = dir.join(WEIGHTS_FILE);
        if !settings_path.exists() {
            return Ok(None);
        }
        // Read here, not with `classifier::read_json`: the classifier imports this module.
        let text = std::fs::read_to_string(&settings_path)
            .with_context(|| format!("cannot read {}", settings_path.display()))?;
        let s: SettingsFile = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", settings_path.display()))?;
        let at = settings_path.display();
        if s.format != 1 {
            bail!(
                "{at}: format {} is not supported (this build reads 1)",
                s.format
            );
        }
        if s.ngram_range != [MIN_N, MAX_N] {
            bail!(
                "{at}: ngram_range {:?} is not supported (this build uses [{MIN_N}, {MAX_N}])",
                s.ngram_range
            );
        }
        if s.labels != labels {
            bail!("{at}: {} labels, but labels.json has {labels}", s.labels);
        }
        if !(0.0..=1.0).contains(&s.weight) {
            bail!("{at}: weight {} is outside 0..=1", s.weight);
        }
        let mut t = candle_core::safetensors::load(&weights_path, &Device::Cpu)
            .with_context(|| format!("{}: cannot read", weights_path.display()))?;
        let mut take = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let x = t
                .remove(name)
                .with_context(|| format!("{}: missing tensor {name}", weights_path.display()))?;
            if x.dims() != shape {
                bail!(
                    "{}: tensor {name} has shape {:?}, expected {shape:?} (from {at})",
                    weights_path.display(),
                    x.dims()
                );
            }
            let v = x.flatten_all()?.to_vec1::<f32>()?;
            if v.iter().any(|x| !x.is_finite()) {
                bail!("{}: tensor {name} is not finite", weights_path.display());
            }
            Ok(v)
        };
        let v = s.ngrams.len();
        let idf = take("idf", &[v])?;
        let weight = take("weight", &[v, labels])?;
        let bias = take("bias", &[labels])?;
        let mut index = HashMap::with_capacity(v);
        for (i, g) in s.ngrams.into_iter().enumerate() {
            if index.insert(g, i as u32).is_some() {
                bail!("{at}: n-gram #{} appears twice", i + 1);
            }
        }
        Ok(Some(Self {
            ngrams: std::sync::Arc::new(CharNgrams { index, idf }),
            weight,
            bias,
            labels,
            settings: LexicalSettings {
                weight: s.weight,
                c: s.c,
            },
        }))
    }
}

fn log_softmax(z: &mut [f32]) {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
    z.iter_mut().for_each(|v| *v -= lse);
}

/// Mean cross-entropy plus `|W|^2 / (2 c n)` (bias unpenalised), minimised by full-batch Adam.
/// Returns (weight [features, labels], bias [labels]).
fn fit_softmax_regression(
    rows: &[Features],
    gold: &[u32],
    features: usize,
    labels: usize,
    c: f64,
) -> (Vec<f32>, Vec<f32>) {
    let n = rows.len();
    let lambda = 1.0 / (c * n as f64);
    let mut w = vec![0f64; features * labels];
    let mut b = vec![0f64; labels];
    let (mut mw, mut vw) = (vec![0f64; w.len()], vec![0f64; w.len()]);
    let (mut mb, mut vb) = (vec![0f64; labels], vec![0f64; labels]);
    let mut gw = vec![0f64; w.len()];
    let mut gb = vec![0f64; labels];
    let mut z = vec![0f64; labels];
    let (beta1, beta2, eps) = (0.9f64, 0.999f64, 1e-8);
    for step in 1..=FIT_STEPS {
        for (g, &wi) in gw.iter_mut().zip(&w) {
            *g = lambda * wi;
        }
        gb.iter_mut().for_each(|g| *g = 0.0);
        for (row, &y) in rows.iter().zip(gold) {
            z.copy_from_slice(&b);
            for &(id, v) in row {
                let wr = &w[id as usize * labels..(id as usize + 1) * labels];
                for (zk, wk) in z.iter_mut().zip(wr) {
                    *zk += v as f64 * wk;
                }
            }
            let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
            // z becomes the gradient of this example's loss w.r.t. its logits: (p - onehot) / n.
            for (k, zk) in z.iter_mut().enumerate() {
                let p = (*zk - max).exp() / sum;
                *zk = (p - if k == y as usize { 1.0 } else { 0.0 }) / n as f64;
            }
            for (gk, zk) in gb.iter_mut().zip(&z) {
                *gk += zk;
            }
            for &(id, v) in row {
                let gr = &mut gw[id as usize * labels..(id as usize + 1) * labels];
                for (gk, zk) in gr.iter_mut().zip(&z) {
                    *gk += v as f64 * zk;
                }
            }
        }
        let c1 = 1.0 - beta1.powi(step as i32);
        let c2 = 1.0 - beta2.powi(step as i32);
        let adam = |p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64]| {
            for i in 0..p.len() {
                m[i] = beta1 * m[i] + (1.0 - beta1) * g[i];
                v[i] = beta2 * v[i] + (1.0 - beta2) * g[i] * g[i];
                p[i] -= FIT_LEARNING_RATE * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
            }
        };
        adam(&mut w, &gw, &mut mw, &mut vw);
        adam(&mut b, &gb, &mut mb, &mut vb);
    }
    (
        w.into_iter().map(|x| x as f32).collect(),
        b.into_iter().map(|x| x as f32).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngrams_match_scikit_learn_char_wb() {
        // sklearn: TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3)).build_analyzer()
        assert_eq!(
            ngrams("Hi 退款"),
            [
                " ", "h", "i", " ", " h", "hi", "i ", " hi", "hi ", " ", "退", "款", " ", " 退",
                "退款", "款 ", " 退款", "退款 "
            ]
        );
        // A one-character word is shorter than 3 padded characters only for n = 3.
        assert_eq!(ngrams("a"), [" ", "a", " ", " a", "a ", " a "]);
        assert!(ngrams("   ").is_empty());
    }

    #[test]
    fn tf_idf_matches_scikit_learn() {
        // sklearn TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True)
        // fitted on these three texts; the second text's non-zero values.
        let docs = ["我要退款", "退款退款 可以吗", "发货了吗"];
        let v = CharNgrams::fit(&docs);
        let names = v.names();
        let got: HashMap<String, f32> = v
            .features(docs[1])
            .into_iter()
            .map(|(id, x)| (names[id as usize].clone(), x))
            .collect();
        let want = [
            (" ", 0.298626),
            (" 可以", 0.211884),
            ("吗", 0.161143),
            ("款", 0.272839),
            ("款退款", 0.211884),
            ("退款", 0.272839),
            ("退款 ", 0.161143),
        ];
        for (g, x) in want {
            assert!((got[g] - x).abs() < 1e-5, "{g:?}: {} vs {x}", got[g]);
        }
        assert_eq!(got.len(), 21);
        assert!((v.idf[v.index["吗"] as usize] - 1.287682).abs() < 1e-5);
        // Unknown n-grams are ignored: of "xyz" only the padding space is known.
        assert_eq!(v.features("xyz"), [(v.index[" "], 1.0)]);
        assert!(v.features("").is_empty());
    }

    fn toy() -> (Vec<&'static str>, Vec<u32>) {
        let texts = vec![
            "我要退款",
            "怎么退款",
            "退款多久到账",
            "申请退款",
            "能退钱吗",
            "什么时候发货",
            "发货了吗",
            "几号发货",
            "还没发货",
            "快递发了吗",
            "你好",
            "在吗",
            "哈喽",
            "大家好",
            "早上好",
        ];
        let gold = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2].to_vec();
        (texts, gold)
    }

    fn settings(weight: f64) -> LexicalSettings {
        LexicalSettings { weight, c: 30.0 }
    }

    #[test]
    fn fit_learns_the_training_texts_and_generalises_by_ngram() {
        let (texts, gold) = toy();
        let h = LexicalHead::fit(&texts, &gold, 3, settings(0.5)).unwrap();
        for (t, &y) in texts.iter().zip(&gold) {
            let lp = h.log_probs(&h.ngrams.features(t));
            let best = (0..3).max_by(|&a, &b| lp[a].total_cmp(&lp[b])).unwrap();
            assert_eq!(best as u32, y, "{t}");
            let total: f32 = lp.iter().map(|v| v.exp()).sum();
            assert!((total - 1.0).abs() < 1e-5);
        }
        // Unseen texts sharing n-grams with one intent.
        for (t, y) in [("退款要多久", 0), ("今天能发货吗", 1)] {
            let lp = h.log_probs(&h.ngrams.features(t));
            let best = (0..3).max_by(|&a, &b| lp[a].total_cmp(&lp[b])).unwrap();
            assert_eq!(best, y, "{t}");
        }
    }

    #[test]
    fn mix_is_a_normalised_product_of_experts() {
        let (texts, gold) = toy();
        let enc = [0.2f32, 0.7, 0.1];
        let f = {
            let h = LexicalHead::fit(&texts, &gold, 3, settings(0.0)).unwrap();
            h.ngrams.features("怎么退款")
        };
        let at = |w: f64| {
            let h = LexicalHead::fit(&texts, &gold, 3, settings(w)).unwrap();
            (h.mix(&enc, &f), h.log_probs(&f))
        };
        let (p0, _) = at(0.0);
        for (a, b) in p0.iter().zip(enc) {
            assert!((a - b).abs() < 1e-6);
        }
        let (p1, lex) = at(1.0);
        for (a, b) in p1.iter().zip(&lex) {
            assert!((a - b.exp()).abs() < 1e-5);
        }
        let (half, lex) = at(0.5);
        assert!((half.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let raw: Vec<f32> = enc
            .iter()
            .zip(&lex)
            .map(|(p, l)| (p.ln() + l) * 0.5)
            .collect();
        let norm: f32 = raw.iter().map(|v| v.exp()).sum();
        for (a, r) in half.iter().zip(&raw) {
            assert!((a - r.exp() / norm).abs() < 1e-5);
        }
        // An encoder probability of exactly 0 stays finite.
        assert!(at(0.5).0.iter().all(|v| v.is_finite()));
        let h = LexicalHead::fit(&texts, &gold, 3, settings(0.5)).unwrap();
        assert!(h.mix(&[0.0, 1.0, 0.0], &f).iter().all(|v| v.is_finite()));
    }

    #[test]
    fn bad_fit_input_is_an_error() {
        let (texts, gold) = toy();
        let e = LexicalHead::fit(&texts, &gold[1..], 3, settings(0.5)).unwrap_err();
        assert!(e.to_string().contains("15 texts but 14 labels"), "{e}");
        let e = LexicalHead::fit(&texts, &gold, 2, settings(0.5)).unwrap_err();
        assert!(e.to_string().contains("label index 2 out of range"), "{e}");
        let e = LexicalHead::fit(
            &texts,
            &gold,
            3,
            LexicalSettings {
                weight: 0.5,
                c: 0.0,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("positive"), "{e}");
    }

    #[test]
    fn save_load_round_trip_and_damaged_files() {
        let (texts, gold) = toy();
        let h = LexicalHead::fit(&texts, &gold, 3, settings(0.4)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert!(LexicalHead::load(dir.path(), 3).unwrap().is_none());
        h.save(dir.path()).unwrap();
        let back = LexicalHead::load(dir.path(), 3).unwrap().unwrap();
        assert_eq!(back.settings, h.settings);
        for t in ["怎么退款", "发货", "你好呀", "完全无关"] {
            let (a, b) = (h.ngrams.features(t), back.ngrams.features(t));
            assert_eq!(a, b);
            assert_eq!(h.mix(&[0.3, 0.3, 0.4], &a), back.mix(&[0.3, 0.3, 0.4], &b));
        }
        let e = LexicalHead::load(dir.path(), 4).unwrap_err().to_string();
        assert!(
            e.contains("lexical.json: 3 labels, but labels.json has 4"),
            "{e}"
        );

        let json = dir.path().join(SETTINGS_FILE);
        let good = std::fs::read_to_string(&json).unwrap();
        std::fs::write(&json, good.replace("\"weight\": 0.4", "\"weight\": 1.5")).unwrap();
        let e = LexicalHead::load(dir.path(), 3).unwrap_err().to_string();
        assert!(e.contains("weight 1.5 is outside 0..=1"), "{e}");
        // One n-gram fewer in the vocabulary than rows in the weights.
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        v["ngrams"].as_array_mut().unwrap().pop();
        std::fs::write(&json, v.to_string()).unwrap();
        let e = format!("{:#}", LexicalHead::load(dir.path(), 3).unwrap_err());
        assert!(
            e.contains("lexical.safetensors: tensor idf has shape"),
            "{e}"
        );
        std::fs::write(&json, &good).unwrap();
        std::fs::write(dir.path().join(WEIGHTS_FILE), b"not safetensors").unwrap();
        let e = format!("{:#}", LexicalHead::load(dir.path(), 3).unwrap_err());
        assert!(e.contains("lexical.safetensors: cannot read"), "{e}");
    }
}
