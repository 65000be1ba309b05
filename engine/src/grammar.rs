//! Structured output: grammars compiled by llguidance against a token trie built from the
//! model's own tokenizer vocabulary, and the per-sequence state that masks logits before sampling.
//!
//! Invariants:
//! - a [`Grammars`] is built once per model (the trie of every token's bytes) and shared;
//!   compiling a grammar against it never touches the model;
//! - a [`Constrained`] has consumed exactly the tokens its sequence output, so the mask it gives
//!   is the set of tokens the grammar allows next; once the grammar is complete it allows only
//!   EOS and the sequence finishes there;
//! - the mask is a pure function of the grammar and the tokens so far, never of the logits, so it
//!   can be computed while the batch's forward pass runs ([`Constrained::prepare`]) and one
//!   constrained sequence never makes the others wait longer than its own mask takes.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};
use serde_json::Value;

use crate::error::EngineError;
use crate::model::Model;

/// What a sequence's output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// A JSON value valid against the schema (`{"type": "object"}` for any object).
    JsonSchema(Value),
    /// Text matching the regular expression whole.
    Regex(String),
}

/// The model's vocabulary as llguidance sees it, ready to compile grammars against.
pub struct Grammars {
    factory: ParserFactory,
    vocab: usize,
}

impl Grammars {
    /// Builds the token trie from the tokenizer's vocabulary (byte-level BPE or byte fallback).
    pub fn new(model: &Model) -> Result<Grammars, EngineError> {
        let json = model.text.tokenizer_json()?;
        let words = llguidance::token_bytes_from_tokenizer_json(&json)
            .map_err(|e| EngineError::Tokenizer(format!("token bytes for structured output: {e}")))?;
        let eos = model.eos_token_ids();
        let first_eos = *eos.first().ok_or_else(|| EngineError::Tokenizer("no EOS token to end a grammar".into()))?;
        let trie = TokTrie::from(&TokRxInfo::new(words.len() as u32, first_eos), &words).with_eos_tokens(eos);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        // llguidance's default `ParserLimits` bound each mask's work (lexer fuel, Earley items):
        // a grammar that would exceed them fails its sequence rather than stall the engine.
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| EngineError::Tokenizer(format!("structured output: {e}")))?;
        factory.quiet();
        Ok(Grammars { factory, vocab: words.len() })
    }

    /// Tokens in the trie (the tokenizer's vocabulary; the model's logits may be longer).
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Compiles `spec`; an error names what the grammar compiler refused.
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Constrained, EngineError> {
        let grammar = match spec {
            GrammarSpec::JsonSchema(schema) => TopLevelGrammar::from_json_schema(with_layout(schema)),
            GrammarSpec::Regex(rx) => TopLevelGrammar::from_regex(rx),
        };
        let parser = self.factory.create_parser(grammar).map_err(|e| EngineError::Grammar(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(EngineError::Grammar(e));
        }
        // Some grammars fail only when asked for their first mask; that is a compile error too.
        let mut c = Constrained { matcher, mask: None };
        c.prepare()?;
        Ok(c)
    }
}

/// The schema with pdq's JSON layout, unless it sets llguidance's own (`x-guidance`): `, ` and
/// `: ` separators and no other whitespace, as `json.dumps` writes. Free whitespace would let a
/// sampled sequence spend its `max_tokens` on blanks.
fn with_layout(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if schema.get("x-guidance").is_none() && schema.is_object() {
        let layout = JsonCompileOptions {
            item_separator: ", ".into(),
            key_separator: ": ".into(),
            whitespace_flexible: false,
            ..JsonCompileOptions::default()
        };
        layout.apply_to(&mut schema);
    }
    schema
}

/// One sequence's grammar state. Cloning gives an independent copy (one per choice).
#[derive(Clone)]
pub struct Constrained {
    matcher: Matcher,
    /// The mask for the next token, once computed.
    mask: Option<SimpleVob>,
}

impl std::fmt::Debug for Constrained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constrained").field("stopped", &self.matcher.is_stopped()).finish()
    }
}

impl Constrained {
    /// Computes the next token's mask (idempotent until the next [`Constrained::commit`]).
    pub fn prepare(&mut self) -> Result<(), EngineError> {
        if self.mask.is_none() {
            let mask = self.matcher.compute_mask_or_eos().map_err(|e| EngineError::Grammar(e.to_string()))?;
            self.mask = Some(mask);
        }
        Ok(())
    }

    /// Sets every token the grammar forbids (and every id past the vocabulary) to -inf.
    pub fn apply(&mut self, logits: &mut [f32]) -> Result<(), EngineError> {
        self.prepare()?;
        let mask = self.mask.as_ref().expect("prepared");
        let known = mask.len().min(logits.len());
        for (t, x) in logits[..known].iter_mut().enumerate() {
            if !mask.is_allowed(t as u32) {
                *x = f32::NEG_INFINITY;
            }
        }
        logits[known..].fill(f32::NEG_INFINITY);
        Ok(())
    }

    /// Advances past `token`, which must be one the mask allowed.
    pub fn commit(&mut self, token: u32) -> Result<(), EngineError> {
        self.mask = None;
        if self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher.consume_token(token).map_err(|e| EngineError::Grammar(e.to_string()))
    }

    /// The grammar is complete: nothing but EOS may follow.
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped()
    }
}
