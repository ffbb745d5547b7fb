//! The candle encoder must reproduce PyTorch: same token ids, mean-pooled embeddings within 1e-4.

mod common;

use intentd::model::bert::Mode;
use intentd::model::classifier::load_base_encoder;
use intentd::model::encoder::Tokenized;
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    sentences: Vec<Sentence>,
}

#[derive(Deserialize)]
struct Sentence {
    text: String,
    input_ids: Vec<u32>,
    mean_pooled: Vec<f32>,
}

fn reference() -> Reference {
    let path = common::shared_reference("m3e-small-embeddings.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("reference JSON")
}

#[test]
fn token_ids_and_embeddings_match_pytorch() {
    let dir = common::base_model_dir();
    let (tokenizer, encoder) = load_base_encoder(&dir, 512).expect("load encoder");
    let reference = reference();
    assert_eq!(reference.sentences.len(), 5);
    for s in &reference.sentences {
        let tok = tokenizer.tokenize(&s.text).unwrap();
        assert_eq!(tok.ids, s.input_ids, "token ids differ for {:?}", s.text);
        let batch = tokenizer.pad(&[&tok], &encoder.device).unwrap();
        let emb = encoder
            .embed(&batch, Mode::Infer)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(emb.len(), s.mean_pooled.len());
        let max_diff = emb
            .iter()
            .zip(&s.mean_pooled)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_diff < 1e-4, "{:?}: max |diff| = {max_diff}", s.text);
    }
}

/// The int8 serving path (issue 18): mean-pooled embeddings within cosine 0.995 of PyTorch's,
/// one text at a time and as one packed batch. Where the CPU has no VNNI, says so and checks
/// that int8 falls back to fp32 (so the 1e-4 parity above holds).
#[test]
fn int8_embeddings_stay_within_cosine_0995_of_pytorch() {
    use intentd::model::classifier::load_base_encoder_with;
    use intentd::model::dense::Precision;
    let dir = common::base_model_dir();
    let (tokenizer, encoder) =
        load_base_encoder_with(&dir, 512, Precision::Int8).expect("load encoder");
    let kernel = encoder.bert.dense_kernel().unwrap();
    let int8 = kernel.is_int8();
    if !int8 {
        eprintln!(
            "int8 path NOT available on this CPU: the encoder serves {} instead; checking that",
            kernel.describe()
        );
    } else {
        eprintln!("int8 path: {}", kernel.describe());
    }
    let reference = reference();
    let toks: Vec<Tokenized> = reference
        .sentences
        .iter()
        .map(|s| tokenizer.tokenize(&s.text).unwrap())
        .collect();
    let one_by_one: Vec<Vec<f32>> = toks
        .iter()
        .map(|t| {
            let batch = tokenizer.pad(&[t], &encoder.device).unwrap();
            let e = encoder.embed(&batch, Mode::Infer).unwrap();
            e.squeeze(0).unwrap().to_vec1::<f32>().unwrap()
        })
        .collect();
    let refs: Vec<&Tokenized> = toks.iter().collect();
    let batch = tokenizer.pad(&refs, &encoder.device).unwrap();
    let batched = encoder
        .embed(&batch, Mode::Infer)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let mut worst = 1f64;
    for (emb, s) in one_by_one
        .iter()
        .chain(&batched)
        .zip(reference.sentences.iter().cycle())
    {
        let c = common::cosine(emb, &s.mean_pooled);
        worst = worst.min(c);
        assert!(c >= 0.995, "{:?}: cosine {c:.5} with PyTorch", s.text);
        if !int8 {
            let max_diff = emb
                .iter()
                .zip(&s.mean_pooled)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                max_diff < 1e-4,
                "{:?}: fp32 fallback off by {max_diff}",
                s.text
            );
        }
    }
    eprintln!(
        "{}: worst cosine with PyTorch {worst:.5}",
        kernel.describe()
    );
}

#[test]
fn padding_does_not_change_embeddings() {
    // All five sentences in one padded batch must give the same vectors as one at a time: the
    // mask must hide padding from attention and from the mean.
    let dir = common::base_model_dir();
    let (tokenizer, encoder) = load_base_encoder(&dir, 512).unwrap();
    let reference = reference();
    let toks: Vec<Tokenized> = reference
        .sentences
        .iter()
        .map(|s| tokenizer.tokenize(&s.text).unwrap())
        .collect();
    let refs: Vec<&Tokenized> = toks.iter().collect();
    assert!(
        toks.iter().map(|t| t.ids.len()).min() != toks.iter().map(|t| t.ids.len()).max(),
        "need mixed lengths"
    );
    let batch = tokenizer.pad(&refs, &encoder.device).unwrap();
    // Infer on a serving build packs the texts without padding; TrainNoDropout runs the padded
    // batch with its attention mask and masked mean (the path training and dev evaluation use).
    let packed = encoder
        .embed(&batch, Mode::Infer)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let padded = encoder
        .embed(&batch, Mode::TrainNoDropout)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (emb, s) in packed
        .iter()
        .chain(&padded)
        .zip(reference.sentences.iter().cycle())
    {
        let max_diff = emb
            .iter()
            .zip(&s.mean_pooled)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            max_diff < 1e-4,
            "{:?} in a padded batch: max |diff| = {max_diff}",
            s.text
        );
    }
}

#[test]
fn training_mode_forward_matches_inference_without_dropout() {
    // The differentiable layer norm / softmax used for training compute the same function.
    let dir = common::base_model_dir();
    let (tokenizer, encoder) = load_base_encoder(&dir, 512).unwrap();
    let tok = tokenizer.tokenize("我想退货，怎么操作？").unwrap();
    let batch = tokenizer.pad(&[&tok], &encoder.device).unwrap();
    let a = encoder
        .embed(&batch, Mode::Infer)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let b = encoder
        .embed(&batch, Mode::TrainNoDropout)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let max_diff = a[0]
        .iter()
        .zip(&b[0])
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(max_diff < 1e-4, "max |diff| = {max_diff}");
}

#[test]
fn long_text_is_truncated_and_flagged() {
    let dir = common::base_model_dir();
    let (tokenizer, _) = load_base_encoder(&dir, 16).unwrap();
    let tok = tokenizer.tokenize(&"退款".repeat(50)).unwrap();
    assert!(tok.truncated);
    assert_eq!(tok.ids.len(), 16);
    assert_eq!(*tok.ids.last().unwrap(), 102, "ends with [SEP]");
    assert!(!tokenizer.tokenize("你好").unwrap().truncated);
}
