//! Rendering HF chat templates with minijinja.
//!
//! Matches `transformers.apply_chat_template`: `trim_blocks` and `lstrip_blocks` on,
//! `add_generation_prompt = true`, `bos_token`/`eos_token` variables and a `raise_exception`
//! function. OpenAI content-part arrays are flattened to their text, since Llama templates
//! expect a string. A few Python string/dict methods templates call are provided.

use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};
use serde_json::Value as Json;

use crate::error::EngineError;

const NAME: &str = "chat";

/// `origin` names the file the template came from, for the parse error.
pub(crate) fn environment(source: String, origin: &str) -> Result<Environment<'static>, EngineError> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.set_unknown_method_callback(py_method);
    env.add_template_owned(NAME, source)
        .map_err(|e| EngineError::ChatTemplate(format!("the chat template in {origin} does not parse: {e}")))?;
    Ok(env)
}

pub(crate) fn render(env: &Environment<'static>, messages: &Json, bos: &str, eos: &str) -> Result<String, EngineError> {
    let list = messages.as_array().ok_or_else(|| EngineError::InvalidInput("`messages` must be an array".into()))?;
    let mut flat = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let mut m = m
            .as_object()
            .ok_or_else(|| EngineError::InvalidInput(format!("`messages[{i}]` must be an object")))?
            .clone();
        if let Some(Json::Array(parts)) = m.get("content") {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.get("type").and_then(Json::as_str), p.get("text").and_then(Json::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => {
                        return Err(EngineError::InvalidInput(format!(
                            "`messages[{i}].content[{j}]` must be a text part"
                        )))
                    }
                }
            }
            m.insert("content".into(), Json::String(text));
        }
        flat.push(Json::Object(m));
    }
    let tmpl = env.get_template(NAME).map_err(|e| EngineError::ChatTemplate(e.to_string()))?;
    tmpl.render(minijinja::context! {
        messages => Value::from_serialize(&flat),
        add_generation_prompt => true,
        bos_token => bos,
        eos_token => eos,
    })
    .map_err(|e| EngineError::ChatTemplate(e.to_string()))
}

/// Python methods on strings and dicts that HF templates use (`.strip()`, `.items()`, ...).
fn py_method(_state: &State, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    let arg = |i: usize| args.get(i).and_then(|a| a.as_str());
    if let Some(s) = value.as_str() {
        let chars: Option<Vec<char>> = arg(0).map(|c| c.chars().collect());
        let trim = |c: char| match &chars {
            Some(set) => set.contains(&c),
            None => c.is_whitespace(),
        };
        return Ok(match method {
            "strip" => Value::from(s.trim_matches(trim)),
            "lstrip" => Value::from(s.trim_start_matches(trim)),
            "rstrip" => Value::from(s.trim_end_matches(trim)),
            "upper" => Value::from(s.to_uppercase()),
            "lower" => Value::from(s.to_lowercase()),
            "startswith" => Value::from(arg(0).is_some_and(|p| s.starts_with(p))),
            "endswith" => Value::from(arg(0).is_some_and(|p| s.ends_with(p))),
            "replace" => match (arg(0), arg(1)) {
                (Some(a), Some(b)) => Value::from(s.replace(a, b)),
                _ => return Err(Error::new(ErrorKind::MissingArgument, "replace(old, new)")),
            },
            "split" => match arg(0) {
                Some(sep) => Value::from(s.split(sep).map(Value::from).collect::<Vec<_>>()),
                None => Value::from(s.split_whitespace().map(Value::from).collect::<Vec<_>>()),
            },
            _ => return Err(Error::from(ErrorKind::UnknownMethod)),
        });
    }
    if value.kind() == ValueKind::Map {
        return match method {
            "items" => {
                let mut out = Vec::new();
                for k in value.try_iter()? {
                    let v = value.get_item(&k)?;
                    out.push(Value::from(vec![k, v]));
                }
                Ok(Value::from(out))
            }
            "keys" => Ok(Value::from(value.try_iter()?.collect::<Vec<_>>())),
            "values" => {
                let keys: Vec<Value> = value.try_iter()?.collect();
                keys.iter().map(|k| value.get_item(k)).collect::<Result<Vec<_>, _>>().map(Value::from)
            }
            "get" => {
                let key = args.first().cloned().unwrap_or(Value::UNDEFINED);
                let v = value.get_item(&key)?;
                Ok(if v.is_undefined() { args.get(1).cloned().unwrap_or(Value::from(())) } else { v })
            }
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        };
    }
    Err(Error::from(ErrorKind::UnknownMethod))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render_src(src: &str, messages: Json) -> Result<String, EngineError> {
        render(&environment(src.to_string(), "test")?, &messages, "<s>", "</s>")
    }

    #[test]
    fn python_methods_and_variables_are_available() {
        let src = "{{ bos_token }}{% for m in messages %}{{ m['content'].strip() }}\
                   {% for k, v in m.items() %}[{{ k }}]{% endfor %}{% endfor %}\
                   {% if add_generation_prompt %}{{ eos_token }}{% endif %}";
        let out = render_src(src, json!([{"role": "user", "content": "  hi  "}])).unwrap();
        // serde_json without `preserve_order` sorts keys, so `items()` is alphabetical.
        assert_eq!(out, "<s>hi[content][role]</s>");
    }

    #[test]
    fn raise_exception_becomes_a_template_error() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}";
        let err = render_src(src, json!([{"role": "assistant", "content": "x"}])).unwrap_err();
        assert_eq!(err.error_type(), "chat_template");
        assert!(err.to_string().contains("first must be user"), "{err}");
    }

    #[test]
    fn broken_template_is_reported_at_load() {
        let err = environment("{% for %}".to_string(), "tokenizer_config.json").unwrap_err();
        assert!(err.to_string().contains("in tokenizer_config.json does not parse"), "{err}");
    }
}
