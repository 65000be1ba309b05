#!/usr/bin/env python3
"""Reference outputs from HF transformers for engine/tests/fidelity.rs.

Writes small random checkpoints with `save_pretrained` (one per layout the engine must load),
runs each in float32 with eager attention, and records for a fixed set of token-id prompts:
the last-position logits of the prompt, 8 greedy tokens (full recomputation each step, no KV
cache), and the logits that chose the last greedy token. The tiny model is written by the Rust
code (`tiny::write`) into a temporary directory and is not committed; the test regenerates it.

Needs: pip install torch transformers safetensors. Run from anywhere:
    python3 scripts/golden.py
Outputs (committed): engine/tests/fixtures/golden/{NAME}/ checkpoints and {NAME}.json.
"""

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "engine" / "tests" / "fixtures" / "golden"
NEW_TOKENS = 8
SEED = 1234


def write_tiny(dir: Path) -> None:
    subprocess.run(
        ["cargo", "run", "-q", "-p", "pdq-engine", "--example", "write_model", "--", "tiny", str(dir)],
        cwd=ROOT,
        check=True,
    )


def prompts(vocab: int) -> list[list[int]]:
    """Token-id prompts: a single token, short, and long enough that RoPE scaling matters."""
    g = torch.Generator().manual_seed(SEED)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (1, 5, 17, 40)]


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights larger than HF's init (std 0.02), so logits are spread and greedy ties are far;
    norm weights near but not at 1, so a missing norm multiply would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def copy_text_files(src: Path, dst: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(src / name, dst / name)


def load_f32(dir: Path) -> torch.nn.Module:
    m = AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32, attn_implementation="eager")
    return m.eval()


@torch.no_grad()
def last_logits(model, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0, -1].float()


def floats(t: torch.Tensor) -> list[float]:
    # 9 significant digits round-trip an f32 exactly.
    return [float(f"{x:.9g}") for x in t.tolist()]


def reference(model, name: str, dir: str | None, vocab: int) -> dict:
    cases = []
    for ids in prompts(vocab):
        prompt_logits = last_logits(model, ids)
        seq, gaps, logits = list(ids), [], prompt_logits
        for step in range(NEW_TOKENS):
            if step > 0:
                logits = last_logits(model, seq)
            top2 = torch.topk(logits, 2).values
            gaps.append(float(top2[0] - top2[1]) / float(logits.abs().max()))
            seq.append(int(torch.argmax(logits)))
        min_gap = min(gaps)
        # Twice the Rust test's logit tolerance: below that, argmax could flip between implementations.
        if min_gap < 2e-4:
            print(f"warning: {name}: near tie in greedy decoding (relative gap {min_gap:.2e})", file=sys.stderr)
        cases.append(
            {
                "prompt": ids,
                "greedy": seq[len(ids) :],
                "min_relative_top2_gap": min_gap,
                "prompt_logits": floats(prompt_logits),
                "final_logits": floats(logits),
            }
        )
    inv_freq = model.model.rotary_emb.inv_freq.float()
    return {
        "name": name,
        "dir": dir,
        "generator": f"scripts/golden.py, transformers {transformers.__version__}, torch {torch.__version__}",
        "rope_inv_freq": floats(inv_freq),
        "cases": cases,
    }


def text_reference(dir: Path) -> dict:
    tok = AutoTokenizer.from_pretrained(dir)
    texts = ["Hello! How are you today?", "The river bends twice.\nNumbers: 7, 12, 100.", "naïve café ✓"]
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "And three plus three?"},
    ]
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return {
        "encode": [{"text": t, "ids": tok(t)["input_ids"]} for t in texts],
        "chat": {
            "messages": messages,
            "rendered": rendered,
            "ids": tok(rendered, add_special_tokens=False)["input_ids"],
        },
    }


def save_json(name: str, data: dict) -> None:
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size // 1024} KiB)")


def to_v4_config(dir: Path) -> None:
    """Rewrites a transformers 5 config.json in the 4.x layout (`rope_theta` + `rope_scaling`)."""
    path = dir / "config.json"
    c = json.loads(path.read_text())
    params = c.pop("rope_parameters")
    c["rope_theta"] = params.pop("rope_theta")
    c["rope_scaling"] = params
    c["torch_dtype"] = c.pop("dtype", "float32")
    path.write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")


def main() -> None:
    torch.manual_seed(SEED)
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp) / "tiny"
        write_tiny(tiny)
        tiny_cfg = json.loads((tiny / "config.json").read_text())
        vocab, bos, eos = tiny_cfg["vocab_size"], tiny_cfg["bos_token_id"], tiny_cfg["eos_token_id"]

        # The tiny model itself (untied, GQA 4:2, plain RoPE), with its tokenizer and chat template.
        data = reference(load_f32(tiny), "tiny", None, vocab)
        data["text"] = text_reference(tiny)
        save_json("tiny", data)

        ids = dict(vocab_size=vocab, bos_token_id=bos, eos_token_id=eos)
        configs = {
            # Qwen2 layout: q/k/v biases, no o bias, GQA 6:2, untied; transformers 5 config.
            "qwen2-gqa-bias": transformers.Qwen2Config(
                hidden_size=96, intermediate_size=160, num_hidden_layers=2, num_attention_heads=6,
                num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                tie_word_embeddings=False, use_sliding_window=False, **ids,
            ),
            # Llama 3: tied embeddings, llama3 RoPE scaling with a short original context so the
            # scaled, interpolated and kept bands all occur; config rewritten in the 4.x layout.
            "llama3-tied-rope": transformers.LlamaConfig(
                hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=32, max_position_embeddings=256, rms_norm_eps=1e-5,
                rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0,
                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 32},
                tie_word_embeddings=True, **ids,
            ),
            # Mistral with a window shorter than max_position_embeddings; saved in shards.
            "mistral-window": transformers.MistralConfig(
                hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=1, max_position_embeddings=128, sliding_window=64,
                rms_norm_eps=1e-5, tie_word_embeddings=False, **ids,
            ),
        }
        for i, (name, config) in enumerate(configs.items()):
            dir = OUT / name
            shutil.rmtree(dir, ignore_errors=True)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            randomize(model, SEED + i)
            shard = {"max_shard_size": "200KB"} if name == "mistral-window" else {}
            model.save_pretrained(dir, **shard)
            copy_text_files(tiny, dir)
            if name == "llama3-tied-rope":
                to_v4_config(dir)
            save_json(name, reference(load_f32(dir), name, name, vocab))

        # bf16 weights: the reference widens them to f32 exactly as the engine must.
        name = "qwen2-gqa-bias-bf16"
        dir = OUT / name
        shutil.rmtree(dir, ignore_errors=True)
        load_f32(OUT / "qwen2-gqa-bias").to(torch.bfloat16).save_pretrained(dir)
        copy_text_files(tiny, dir)
        save_json(name, reference(load_f32(dir), name, name, vocab))


if __name__ == "__main__":
    main()
