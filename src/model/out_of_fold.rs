//! Out-of-fold probabilities: every example is scored by a head trained on the other folds
//! (head mode: the frozen encoder's vectors are computed once by the caller and reused by every
//! fold), so a wrong label cannot be memorised by the model that judges it.

use std::path::Path;

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::base_models::BaseModel;
use super::train::{embed_frozen, fit_head_and_predict, HyperParameters, TrainMode};

/// What `intentd data check` and `intentd train --drop-suspect` both run: embeds `texts` once
/// with the frozen base encoder, deals them into `k` stratified folds (seeded) and scores each
/// with a head-mode model trained on the other folds. Returns the vectors (n, hidden) and the
/// out-of-fold probability rows.
pub fn score_out_of_fold(
    base: &BaseModel,
    base_dir: &Path,
    texts: &[&str],
    given: &[u32],
    n_labels: usize,
    k: usize,
    seed: u64,
) -> Result<(Tensor, Vec<Vec<f32>>)> {
    let mut hp = HyperParameters::defaults_for(TrainMode::Head);
    hp.seed = seed;
    let vectors = embed_frozen(base, base_dir, texts, hp.max_tokens)?;
    let folds = crate::data::label_check::stratified_folds(given, k, seed);
    let probs = out_of_fold_probs(&vectors, given, n_labels, &folds, k, &hp)?;
    Ok((vectors, probs))
}

/// `vectors` (n, hidden) are the examples' sentence vectors, `given[i]` example i's label index
/// (below `n_labels`) and `folds[i]` its fold (below `k`). Fold f's head is seeded with
/// `hp.seed + f`. Returns one probability row per example, in example order.
pub fn out_of_fold_probs(
    vectors: &Tensor,
    given: &[u32],
    n_labels: usize,
    folds: &[usize],
    k: usize,
    hp: &HyperParameters,
) -> Result<Vec<Vec<f32>>> {
    let n = given.len();
    if folds.len() != n || vectors.dims2()?.0 != n {
        bail!(
            "{n} labels, {} folds and {:?} vectors do not match",
            folds.len(),
            vectors.dims()
        );
    }
    let mut probs: Vec<Vec<f32>> = vec![Vec::new(); n];
    for f in 0..k {
        let (held, kept): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| folds[i] == f);
        if held.is_empty() {
            continue;
        }
        if kept.is_empty() {
            bail!("fold {f} holds every example: nothing left to train on");
        }
        let rows = |idx: &[usize]| -> Result<Tensor> {
            let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
            let ids = Tensor::from_vec(ids, idx.len(), vectors.device())?;
            Ok(vectors.index_select(&ids, 0)?)
        };
        let train_y: Vec<u32> = kept.iter().map(|&i| given[i]).collect();
        let mut fold_hp = hp.clone();
        fold_hp.seed = hp.seed.wrapping_add(f as u64);
        let p = fit_head_and_predict(&rows(&kept)?, &train_y, n_labels, &rows(&held)?, &fold_hp)?;
        for (i, row) in held.into_iter().zip(p) {
            probs[i] = row;
        }
    }
    if probs.iter().any(Vec::is_empty) {
        bail!("some examples are in no fold below {k}");
    }
    Ok(probs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::train::TrainMode;
    use candle_core::Device;

    /// Two well separated clusters, one example of cluster 0 labelled 1: out of fold, the model
    /// trained without it still calls it 0.
    #[test]
    fn a_flipped_example_is_not_memorised() {
        let mut rows = Vec::new();
        let mut given = Vec::new();
        for i in 0..40 {
            let c = i % 2;
            let jitter = (i as f32 * 0.37).sin() * 0.1;
            rows.extend([if c == 0 { 1.0 } else { -1.0 } + jitter, jitter, 0.5]);
            given.push(c as u32);
        }
        given[0] = 1; // example 0 sits in cluster 0
        let x = Tensor::from_vec(rows, (40, 3), &Device::Cpu).unwrap();
        let folds = crate::data::label_check::stratified_folds(&given, 4, 3);
        let mut hp = HyperParameters::defaults_for(TrainMode::Head);
        hp.epochs = 30;
        hp.dropout = 0.0;
        let probs = out_of_fold_probs(&x, &given, 2, &folds, 4, &hp).unwrap();
        assert!(probs[0][0] > 0.5, "{:?}", probs[0]);
        let right = (1..40)
            .filter(|&i| probs[i][given[i] as usize] > 0.5)
            .count();
        assert!(right >= 37, "{right} of 39 right");
        let err = out_of_fold_probs(&x, &given, 2, &folds[..10], 4, &hp).unwrap_err();
        assert!(err.to_string().contains("do not match"), "{err}");
    }
}
