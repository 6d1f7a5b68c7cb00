//! CLIP text side of Stable-Diffusion-compatible models.
//!
//! - [`tokenizer`]: the byte-level BPE tokenizer ([`ClipTokenizer`]).
//! - [`text_model`]: the CLIP text transformer ([`ClipTextModel`], [`ClipTextConfig`]) and the key maps of
//!   original single-file checkpoints.
pub mod text_model;
pub mod tokenizer;

pub use text_model::{ClipTextConfig, ClipTextModel};
pub use tokenizer::ClipTokenizer;

/// The file name of OpenAI's BPE merges file.
pub const VOCAB_FILE: &str = "bpe_simple_vocab_16e6.txt.gz";

/// Where `cargo xtask download clip-vocab` puts [`VOCAB_FILE`]:
/// `$GENLAB_DATA_DIR/clip/`, else `~/.cache/genlab/clip/`.
pub fn default_vocab_path() -> Option<std::path::PathBuf> {
    genlab_data::builtin::data_dir().map(|d| d.join("clip").join(VOCAB_FILE))
}
