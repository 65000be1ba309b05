//! Embeddings: a prompt's final hidden states (after the model's last norm, the rows the
//! lm_head would read) pooled into one vector and L2-normalized, as embedding-tuned Llama and
//! Qwen2 checkpoints expect and as OpenAI's embeddings are (unit length).
//!
//! How to pool is the checkpoint's to say: a GGUF's `{arch}.pooling_type` (llama.cpp's enum) or
//! an HF directory's sentence-transformers `modules.json` and its Pooling module's config. A
//! model that says nothing is pooled by its last token, as vLLM does for a decoder-only model:
//! under causal attention only the last row has seen the whole input.

use std::path::Path;

use crate::error::{read_json_opt, EngineError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// The last token's row.
    #[default]
    Last,
    /// The mean of every row.
    Mean,
    /// The first token's row (BERT's `[CLS]`; for a decoder, the BOS token).
    Cls,
}

impl Pooling {
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Last => "last",
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        }
    }

    /// llama.cpp's `enum llama_pooling_type`: 0 none (per token), 1 mean, 2 cls, 3 last, 4 rank.
    /// None and rank give no single vector of an input: the default applies.
    pub(crate) fn from_gguf(value: Option<u64>) -> Option<Pooling> {
        match value? {
            1 => Some(Pooling::Mean),
            2 => Some(Pooling::Cls),
            3 => Some(Pooling::Last),
            other => {
                if other != 0 {
                    tracing::warn!(pooling_type = other, "GGUF pooling type not known: embeddings pool the last token");
                }
                None
            }
        }
    }

    /// A sentence-transformers directory: `modules.json` names the Pooling module's folder,
    /// whose `config.json` turns one mode on. `Ok(None)` when the directory has none.
    pub(crate) fn from_hf_dir(dir: &Path) -> Result<Option<Pooling>, EngineError> {
        let Some(modules) = read_json_opt(&dir.join("modules.json"))? else { return Ok(None) };
        let folder = modules.as_array().into_iter().flatten().find_map(|m| {
            let kind = m.get("type")?.as_str()?;
            kind.ends_with("models.Pooling").then(|| m.get("path")?.as_str().map(str::to_string)).flatten()
        });
        let Some(folder) = folder else { return Ok(None) };
        let path = dir.join(folder).join("config.json");
        let Some(config) = read_json_opt(&path)? else { return Ok(None) };
        let on = |key: &str| config.get(key).and_then(serde_json::Value::as_bool) == Some(true);
        let modes = [
            ("pooling_mode_lasttoken", Pooling::Last),
            ("pooling_mode_mean_tokens", Pooling::Mean),
            ("pooling_mode_cls_token", Pooling::Cls),
        ];
        match modes.iter().filter(|(key, _)| on(key)).collect::<Vec<_>>()[..] {
            [] => Ok(None),
            [(_, pooling)] => Ok(Some(*pooling)),
            _ => Err(EngineError::Config { path, message: "more than one pooling mode is on".into() }),
        }
    }

    /// Pools `rows` (row-major, `h` wide, positions `0..` of the input unless `Last`) and
    /// normalizes the result to unit length. Sums run in f64, in row order.
    pub(crate) fn pool(self, rows: &[f32], h: usize) -> Vec<f32> {
        let n = rows.len() / h;
        debug_assert!(n > 0 && rows.len() == n * h);
        let pooled: Vec<f64> = match self {
            Pooling::Last => rows[(n - 1) * h..].iter().map(|&x| x as f64).collect(),
            Pooling::Cls => rows[..h].iter().map(|&x| x as f64).collect(),
            Pooling::Mean => {
                let mut sum = vec![0f64; h];
                for row in rows.chunks_exact(h) {
                    sum.iter_mut().zip(row).for_each(|(s, &x)| *s += x as f64);
                }
                sum.iter().map(|s| s / n as f64).collect()
            }
        };
        let norm = pooled.iter().map(|x| x * x).sum::<f64>().sqrt();
        // A zero vector stays zero rather than becoming NaN.
        let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        pooled.iter().map(|x| (x * scale) as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_and_normalizes() {
        let rows = [3.0, 0.0, 0.0, 4.0, 1.0, 1.0];
        assert_eq!(Pooling::Last.pool(&rows, 2), vec![std::f32::consts::FRAC_1_SQRT_2; 2]);
        assert_eq!(Pooling::Cls.pool(&rows, 2), vec![1.0, 0.0]);
        // mean (4/3, 5/3), normalized
        let mean = Pooling::Mean.pool(&rows, 2);
        assert!((mean[0] - 4.0 / 41f32.sqrt()).abs() < 1e-6 && (mean[1] - 5.0 / 41f32.sqrt()).abs() < 1e-6);
        assert_eq!(Pooling::Last.pool(&[0.0, 0.0], 2), vec![0.0, 0.0]);
    }

    #[test]
    fn gguf_pooling_types() {
        assert_eq!(Pooling::from_gguf(Some(1)), Some(Pooling::Mean));
        assert_eq!(Pooling::from_gguf(Some(3)), Some(Pooling::Last));
        assert_eq!(Pooling::from_gguf(Some(0)), None);
        assert_eq!(Pooling::from_gguf(None), None);
    }

    #[test]
    fn a_gguf_says_how_it_pools_under_its_architecture() {
        use crate::gguf::file::{GgufFile, Value};
        use crate::gguf::write::GgufWriter;
        let path = std::env::temp_dir().join(format!("pdq-pooling-{}.gguf", std::process::id()));
        let mut w = GgufWriter::new();
        w.meta("general.architecture", Value::String("qwen2".into())).meta("qwen2.pooling_type", Value::U32(1));
        w.write(&path).unwrap();
        let f = GgufFile::open(&path).unwrap();
        let pooling = Pooling::from_gguf(crate::gguf::model::pooling_type(&f));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(pooling, Some(Pooling::Mean));
    }

    #[test]
    fn sentence_transformers_directories() {
        let dir = std::env::temp_dir().join(format!("pdq-pooling-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
        assert_eq!(Pooling::from_hf_dir(&dir).unwrap(), None);
        let modules = r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#;
        std::fs::write(dir.join("modules.json"), modules).unwrap();
        let config = r#"{"word_embedding_dimension": 8, "pooling_mode_mean_tokens": true}"#;
        std::fs::write(dir.join("1_Pooling/config.json"), config).unwrap();
        assert_eq!(Pooling::from_hf_dir(&dir).unwrap(), Some(Pooling::Mean));
        let both = r#"{"pooling_mode_mean_tokens": true, "pooling_mode_lasttoken": true}"#;
        std::fs::write(dir.join("1_Pooling/config.json"), both).unwrap();
        assert!(Pooling::from_hf_dir(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
