//! Text side of a model: tokenizer, special tokens and the chat template (from
//! `chat_template.jinja` when present, else `tokenizer_config.json`, as transformers does; or from
//! GGUF metadata).
//!
//! BOS rule: a sequence the engine encodes starts with at most one BOS. `encode` lets the
//! tokenizer's post-processor add BOS and drops a second one when the text itself began with
//! the BOS string (a rendered chat template usually does); `encode_chat` encodes the rendered
//! chat without special tokens and prepends BOS only if the template did not.

use std::path::Path;

use serde_json::Value as Json;
use tokenizers::Tokenizer;

use crate::config::{ModelConfig, OneOrMany};
use crate::error::{read_json_opt, EngineError};
use crate::template;

pub(crate) struct TextCodec {
    tokenizer: Tokenizer,
    bos_id: Option<u32>,
    bos_token: String,
    eos_token: String,
    /// Whether the tokenizer's post-processor adds BOS (decided by encoding "" once at load).
    adds_bos: bool,
    chat: Option<minijinja::Environment<'static>>,
    /// Union of the EOS ids from config.json, generation_config.json and tokenizer_config.json.
    pub eos_ids: Vec<u32>,
}

/// What a model's metadata says about its text, whatever file it came from.
pub(crate) struct TextSpec {
    pub bos_id: Option<u32>,
    pub bos_token: String,
    pub eos_token: String,
    pub eos_ids: Vec<u32>,
    /// The chat template's source and the file it came from (named in parse errors).
    pub chat: Option<(String, &'static str)>,
}

/// `chat_template.jinja`, which transformers 5 writes and prefers over tokenizer_config.json.
fn read_chat_template(dir: &Path) -> Result<Option<(String, &'static str)>, EngineError> {
    let path = dir.join("chat_template.jinja");
    match std::fs::read_to_string(&path) {
        Ok(src) => Ok(Some((src, "chat_template.jinja"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EngineError::io(path, e)),
    }
}

/// `bos_token` / `eos_token` in tokenizer_config.json: a string or `{"content": ...}`.
fn token_string(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// `chat_template`: a string, or a list of `{name, template}` from which "default" is used.
fn chat_template(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
}

impl TextCodec {
    pub fn load(dir: &Path, config: &ModelConfig) -> Result<TextCodec, EngineError> {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(EngineError::MissingFile { path: tok_path });
        }
        let tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| EngineError::Tokenizer(format!("`{}`: {e}", tok_path.display())))?;
        let tc = read_json_opt(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
        let gen_path = dir.join("generation_config.json");
        let gc = read_json_opt(&gen_path)?.unwrap_or(Json::Null);

        let bos_token = token_string(tc.get("bos_token"))
            .or_else(|| config.bos_token_id.and_then(|id| tokenizer.id_to_token(id)))
            .unwrap_or_default();
        let bos_id = config.bos_token_id.or_else(|| tokenizer.token_to_id(&bos_token));
        let eos_token_tc = token_string(tc.get("eos_token"));

        let mut eos_ids = config.eos_token_id.clone();
        if let Some(v) = gc.get("eos_token_id").filter(|v| !v.is_null()) {
            let ids: OneOrMany = serde_json::from_value(v.clone())
                .map_err(|e| EngineError::Config { path: gen_path.clone(), message: format!("`eos_token_id`: {e}") })?;
            eos_ids.extend(ids.into_vec());
        }
        if let Some(id) = eos_token_tc.as_deref().and_then(|t| tokenizer.token_to_id(t)) {
            eos_ids.push(id);
        }
        let mut seen = std::collections::HashSet::new();
        eos_ids.retain(|id| seen.insert(*id));
        let eos_token =
            eos_token_tc.or_else(|| eos_ids.first().and_then(|id| tokenizer.id_to_token(*id))).unwrap_or_default();

        let chat = match read_chat_template(dir)? {
            Some(t) => Some(t),
            None => chat_template(tc.get("chat_template")).map(|src| (src, "tokenizer_config.json")),
        };
        TextCodec::new(tokenizer, TextSpec { bos_id, bos_token, eos_token, eos_ids, chat })
    }

    /// A codec from a built tokenizer and its special tokens (how GGUF metadata arrives).
    pub fn new(tokenizer: Tokenizer, spec: TextSpec) -> Result<TextCodec, EngineError> {
        let TextSpec { bos_id, bos_token, eos_token, eos_ids, chat } = spec;
        let adds_bos = match bos_id {
            Some(b) => {
                let e = tokenizer.encode("", true).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
                e.get_ids().first() == Some(&b)
            }
            None => false,
        };
        let chat = match chat {
            Some((src, origin)) => Some(template::environment(src, origin)?),
            None => None,
        };
        Ok(TextCodec { tokenizer, bos_id, bos_token, eos_token, adds_bos, chat, eos_ids })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The tokenizer as `tokenizer.json` holds it: what structured output reads token bytes from.
    pub fn tokenizer_json(&self) -> Result<Json, EngineError> {
        let text = self.tokenizer.to_string(false).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if let Some(b) = self.bos_id {
            if self.adds_bos && ids.len() >= 2 && ids[0] == b && ids[1] == b && text.starts_with(&self.bos_token) {
                ids.remove(0);
            }
        }
        Ok(ids)
    }

    pub fn encode_chat(&self, messages: &Json) -> Result<Vec<u32>, EngineError> {
        let text = self.render_chat(messages)?;
        let enc = self.tokenizer.encode(text, false).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if let Some(b) = self.bos_id {
            if self.adds_bos && ids.first() != Some(&b) {
                ids.insert(0, b);
            }
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        self.tokenizer.decode(ids, true).map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    pub fn render_chat(&self, messages: &Json) -> Result<String, EngineError> {
        let env =
            self.chat.as_ref().ok_or_else(|| EngineError::ChatTemplate("the model has no chat template".into()))?;
        template::render(env, messages, &self.bos_token, &self.eos_token)
    }
}
