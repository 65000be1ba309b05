//! Trains the tiny model's byte-level BPE on `assets/corpus.txt`.
//!
//! Determinism: the trainer starts from the full 256-symbol byte alphabet (ids sorted by char),
//! and merges are ordered by (count, pair ids), so the result does not depend on hash order or
//! thread count; `tests/tiny.rs` checks two runs are byte-identical.

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use super::{BOS, END_HEADER, EOT, EOT_TEXT, START_HEADER};
use crate::error::EngineError;

const CORPUS: &str = include_str!("../../assets/corpus.txt");
/// Total vocabulary including the special tokens.
const VOCAB: usize = 512;
const SPECIALS: [&str; 5] = [BOS, EOT_TEXT, START_HEADER, END_HEADER, EOT];

pub(crate) struct Trained {
    pub json: String,
    pub vocab_size: usize,
    tokenizer: Tokenizer,
}

impl Trained {
    pub fn special_id(&self, token: &str) -> u32 {
        self.tokenizer.token_to_id(token).expect("special tokens are added by build()")
    }
}

fn err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(format!("training the tiny tokenizer: {e}"))
}

pub(crate) fn build() -> Result<Trained, EngineError> {
    let mut tk = Tokenizer::new(BPE::default());
    tk.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tk.with_decoder(Some(ByteLevel::default()));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(VOCAB - SPECIALS.len())
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    tk.train(&mut trainer, CORPUS.lines().filter(|l| !l.is_empty())).map_err(err)?;
    // Specials after training so they take the top ids, as in Llama 3.
    let specials: Vec<AddedToken> = SPECIALS.iter().map(|s| AddedToken::from(*s, true)).collect();
    tk.add_special_tokens(&specials);
    let bos = tk.token_to_id(BOS).ok_or_else(|| err("BOS was not added"))?;
    let post = TemplateProcessing::builder()
        .try_single(format!("{BOS} $A"))
        .map_err(err)?
        .try_pair(format!("{BOS} $A {BOS} $B:1"))
        .map_err(err)?
        .special_tokens(vec![(BOS, bos)])
        .build()
        .map_err(err)?;
    tk.with_post_processor(Some(post));
    let json = tk.to_string(true).map_err(err)?;
    let vocab_size = tk.get_vocab_size(true);
    Ok(Trained { json, vocab_size, tokenizer: tk })
}
