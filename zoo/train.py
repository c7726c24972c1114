"""Train the zoo's matched small causal LMs (one per position-embedding family) on one GPU.

Every model gets the same width, depth, heads, tokenizer, data order, step count, optimizer and
seed (zoo/config.yaml); only the family's own architecture differs. Each trained model is saved
as a Hugging Face model dir (bf16 safetensors, tokenizer, model card, training metrics).

    python3 zoo/collect_data.py && python3 zoo/build_tokenizer.py   # CPU, once
    python3 zoo/train.py                                            # GPU: all models
    python3 zoo/train.py --models bloom-alibi --out /tmp/models     # GPU: one model
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, BloomConfig, GPT2Config, LlamaConfig, MptConfig

import copy_accuracy  # zoo/ is on sys.path when this file is run as a script

ZOO = Path(__file__).resolve().parent


def log(**fields) -> None:
    print(json.dumps(fields), flush=True)


# ---------------------------------------------------------------- architecture


def hf_config(family: str, arch: dict, extra: dict, vocab_size: int, special_id: int):
    """The shared architecture expressed in one family's config class."""
    ids = dict(bos_token_id=special_id, eos_token_id=special_id, pad_token_id=special_id)
    # A model may override tying (config.yaml `models.<name>.tie_word_embeddings`), e.g. to test BLOOM untied.
    tie = extra.get("tie_word_embeddings", arch["tie_word_embeddings"])
    common = dict(vocab_size=vocab_size, tie_word_embeddings=tie,
                  initializer_range=arch["initializer_range"], **ids)
    if family == "llama":
        return LlamaConfig(hidden_size=arch["hidden_size"], intermediate_size=arch["llama_intermediate"],
                           num_hidden_layers=arch["num_layers"], num_attention_heads=arch["num_heads"],
                           num_key_value_heads=arch["num_heads"], max_position_embeddings=arch["context"],
                           rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": extra["rope_theta"]},
                           **common)
    if family == "gpt2":
        assert arch["mlp_hidden_4x"] == 4 * arch["hidden_size"]
        return GPT2Config(n_embd=arch["hidden_size"], n_layer=arch["num_layers"], n_head=arch["num_heads"],
                          n_positions=arch["context"], n_inner=arch["mlp_hidden_4x"], activation_function="gelu_new",
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5, **common)
    if family == "bloom":
        # BLOOM's MLP is hard-wired to 4x the width, which is what the other two match.
        assert arch["mlp_hidden_4x"] == 4 * arch["hidden_size"]
        return BloomConfig(hidden_size=arch["hidden_size"], n_layer=arch["num_layers"], n_head=arch["num_heads"],
                           hidden_dropout=0.0, attention_dropout=0.0, layer_norm_epsilon=1e-5, **common)
    if family == "mpt":
        # ALiBi without BLOOM's embedding LayerNorm and biases (zoo/README.md, "Next"): the same slopes
        # (alibi_bias_max 8 over 8 heads: 1/2 ... 1/256), 4x GELU MLP, no biases (MPT's default).
        assert arch["mlp_hidden_4x"] % arch["hidden_size"] == 0
        return MptConfig(d_model=arch["hidden_size"], n_heads=arch["num_heads"], n_layers=arch["num_layers"],
                         expansion_ratio=arch["mlp_hidden_4x"] // arch["hidden_size"], max_seq_len=arch["context"],
                         attn_config={"alibi": True, "alibi_bias_max": 8, "attn_pdrop": 0},
                         resid_pdrop=0.0, emb_pdrop=0.0, layer_norm_epsilon=1e-5, **common)
    raise ValueError(f"unknown family {family!r}")


def autocast(device: torch.device, precision: str):
    """bf16-autocast: matmuls in bfloat16 over fp32 master weights. fp32: no autocast (matmuls in
    TF32 on CUDA). fp32 exists for run 4 (zoo/README.md): BLOOM adds its ALiBi bias, built on
    absolute key positions (slope * j), inside one baddbmm that bf16 autocast rounds to bfloat16,
    and we suspected that rounding of keeping BLOOM from copying. It was not: BLOOM copied the same
    in both precisions, so every model trains in bf16-autocast."""
    if precision not in ("bf16-autocast", "fp32"):
        raise ValueError(f"unknown precision {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-autocast")


def attention_implementation(family: str) -> str:
    # BLOOM's ALiBi attention exists only as the eager implementation in transformers.
    return "eager" if family in ("bloom", "mpt") else "sdpa"


# ---------------------------------------------------------------- data


def load_stream(data_dir: Path, split: str, expected_sha256: str) -> np.ndarray:
    """A uint16 token stream from data_dir (plain or .xz), checked against zoo/tokens.json."""
    plain, packed = data_dir / f"{split}.u16", data_dir / f"{split}.u16.xz"
    raw = plain.read_bytes() if plain.exists() else lzma.decompress(packed.read_bytes())
    if hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise SystemExit(f"{split} tokens in {data_dir} do not match zoo/tokens.json; rerun build_tokenizer.py")
    return np.frombuffer(raw, dtype="<u2")


class RandomWindows:
    """Seeded random windows of seq_len+1 tokens. The CPU generator makes the batch sequence the
    same for every model and machine, so the models are trained on identical data in identical order.
    With `synthetic` (config `train.synthetic`), a share of the windows then get copying or lookup
    written into them by SyntheticSpans, from a generator of its own, so the corpus windows stay the
    ones a run without it draws."""

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int,
                 synthetic: SyntheticSpans | None = None):
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.gen = torch.Generator().manual_seed(seed)
        self.span = torch.arange(seq_len + 1, device=tokens.device)
        self.synthetic = synthetic

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, self.tokens.numel() - self.seq_len - 1, (self.batch_size,), generator=self.gen)
        window = self.tokens[starts.to(self.tokens.device)[:, None] + self.span]
        if self.synthetic is not None:
            self.synthetic.apply(window)
        return window[:, :-1], window[:, 1:]


KV_NAMES = ("data", "table", "config", "lookup", "d", "mapping", "values", "index", "cache", "registry")
ALNUM = "0123456789abcdefghijklmnopqrstuvwxyz"


class SyntheticSpans:
    """Copy and lookup pressure (issue #14.1; zoo/README.md, run 5). Trained on code alone the zoo's models
    attended to the right earlier token but lost the copied id against their prior; a few percent of the
    windows now carry:

    - `repeat`: a span of 16-96 corpus tokens written again later in the same window (natural-text copying);
    - `random_repeat`: a span of 8-64 ids drawn uniformly from the non-special vocabulary, written twice,
      half the time back to back, else with corpus text between (copying ids the prior cannot predict);
    - `kv`: a Python dict literal of 2-40 pairs of random 2-5 character strings and one lookup of it
      (`assert name["k"] == "v"` or `x = name.get("k")  # "v"`), at a random offset, a quarter of the time
      at 0. The eval's exact form (pearzoo/retrieval.py: `data`, double quotes, 3 hex characters) is one
      of many combinations except that 3-character ids are never all-hex here, so eval contexts are not
      training contexts.

    The loss is the plain next-token loss over the whole window, synthetic spans included."""

    def __init__(self, cfg: dict, tokenizer, allowed: torch.Tensor, seq_len: int):
        self.cfg, self.tok, self.allowed, self.width = cfg, tokenizer, allowed, seq_len + 1
        self.rng = np.random.default_rng(cfg["seed"])
        self.counts = {"repeat": 0, "random_repeat": 0, "kv": 0}

    def _span(self, length: int, gap: bool) -> tuple[int, int, int]:
        """(length, a, b): two non-overlapping places for a span, b after a, back to back unless `gap`."""
        length = min(length, self.width // 3)  # short windows (smoke runs) still take two copies
        a = int(self.rng.integers(0, self.width - 2 * length + 1))
        b = a + length if not gap else int(self.rng.integers(a + length, self.width - length + 1))
        return length, a, b

    def kv_text(self) -> str:
        pairs = int(self.rng.integers(2, 41))
        chars = int(self.rng.integers(2, 6))
        alphabet = ALNUM if chars == 3 or self.rng.random() < 0.5 else ALNUM[:16]
        ids: dict[str, None] = {}
        while len(ids) < 2 * pairs:
            x = "".join(alphabet[i] for i in self.rng.integers(0, len(alphabet), chars))
            if chars == 3 and all(c in ALNUM[:16] for c in x):
                continue
            ids.setdefault(x, None)
        keys = list(ids)
        kv = list(zip(keys[:pairs], keys[pairs:]))
        name = KV_NAMES[int(self.rng.integers(len(KV_NAMES)))]
        q = '"' if self.rng.random() < 0.5 else "'"
        k, v = kv[int(self.rng.integers(pairs))]
        items = ", ".join(f"{q}{a}{q}: {q}{b}{q}" for a, b in kv)
        lookup = (f"assert {name}[{q}{k}{q}] == {q}{v}{q}\n" if self.rng.random() < 0.7
                  else f"x = {name}.get({q}{k}{q})  # {q}{v}{q}\n")
        return f"{name} = {{{items}}}\n{lookup}"

    def apply(self, window: torch.Tensor) -> None:
        device = window.device
        for row in range(window.shape[0]):
            u = self.rng.random()
            if u < self.cfg["repeat"]:
                length = int(self.rng.integers(16, 97))
                length, a, b = self._span(length, gap=True)
                window[row, b : b + length] = window[row, a : a + length].clone()
                self.counts["repeat"] += 1
            elif u < self.cfg["repeat"] + self.cfg["random_repeat"]:
                length = int(self.rng.integers(8, 65))
                length, a, b = self._span(length, gap=self.rng.random() < 0.5)
                ids = self.allowed[torch.from_numpy(self.rng.integers(0, self.allowed.numel(), length))].to(device)
                window[row, a : a + length] = ids
                window[row, b : b + length] = ids
                self.counts["random_repeat"] += 1
            elif u < self.cfg["repeat"] + self.cfg["random_repeat"] + self.cfg["kv"]:
                ids = self.tok.encode(self.kv_text(), add_special_tokens=False).ids
                while len(ids) > self.width:  # 40 pairs of 5 characters can outgrow the window
                    ids = self.tok.encode(self.kv_text(), add_special_tokens=False).ids
                offset = 0 if self.rng.random() < 0.25 else int(self.rng.integers(0, self.width - len(ids) + 1))
                window[row, offset : offset + len(ids)] = torch.tensor(ids, device=device)
                self.counts["kv"] += 1


# ---------------------------------------------------------------- optimisation


def synchronize(device: torch.device) -> None:
    # CUDA runs asynchronously; wall times are only meaningful after the queue drains.
    if device.type == "cuda":
        torch.cuda.synchronize()


def lr_at(step: int, cfg: dict) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio of the peak at the last step."""
    if step < cfg["warmup_steps"]:
        return cfg["lr"] * (step + 1) / cfg["warmup_steps"]
    progress = (step - cfg["warmup_steps"]) / max(1, cfg["steps"] - cfg["warmup_steps"])
    floor = cfg["min_lr_ratio"]
    return cfg["lr"] * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only. Embeddings (and the tied LM head, the same tensor) are exempt: decay
    would shrink the vectors of rarely seen ids towards zero and make them indistinguishable."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, keep, seen = [], [], set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 and id(p) not in embedding_ids else keep).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def lm_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=x, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def val_loss(model, tokens: torch.Tensor, batch_size: int, seq_len: int, batches: int) -> float:
    """Mean loss over the first batches*batch_size non-overlapping windows of the held-out stream."""
    usable = min(batches * batch_size, (tokens.numel() - 1) // seq_len)
    starts = torch.arange(usable, device=tokens.device) * seq_len
    span = torch.arange(seq_len + 1, device=tokens.device)
    total = 0.0
    for chunk in starts.split(batch_size):
        window = tokens[chunk[:, None] + span]
        with torch.autocast(tokens.device.type, dtype=torch.bfloat16):
            total += lm_loss(model, window[:, :-1], window[:, 1:]).item() * chunk.numel()
    return total / usable


# ---------------------------------------------------------------- one model


def train_model(name: str, cfg: dict, train_tokens: torch.Tensor, val_tokens: torch.Tensor, vocab: dict,
                use_compile: bool) -> tuple[torch.nn.Module, dict]:
    tcfg, ecfg, family = cfg["train"], cfg["eval"], cfg["models"][name]["family"]
    precision = cfg["models"][name].get("precision", tcfg["precision"])
    torch.manual_seed(cfg["seed"])
    hf_cfg = hf_config(family, cfg["arch"], cfg["models"][name], vocab["vocab_size"], vocab["separator_id"])
    model = AutoModelForCausalLM.from_config(hf_cfg, attn_implementation=attention_implementation(family))
    device = train_tokens.device
    model = model.to(device, dtype=torch.float32).train()
    forward = torch.compile(model) if use_compile else model
    opt = torch.optim.AdamW(param_groups(model, tcfg["weight_decay"]), lr=tcfg["lr"], betas=tuple(tcfg["betas"]),
                            fused=device.type == "cuda")
    allowed = copy_accuracy.allowed_ids(vocab["vocab_size"], [vocab["separator_id"]])
    synthetic = None
    if tcfg.get("synthetic"):
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(ZOO / "tokenizer" / "tokenizer.json"))
        synthetic = SyntheticSpans(tcfg["synthetic"], tokenizer, allowed, tcfg["seq_len"])
    batches = RandomWindows(train_tokens, tcfg["batch_size"], tcfg["seq_len"], cfg["seed"], synthetic)
    probe = {n: copy_accuracy.copy_sequences(allowed, 200, n, seed=ecfg["copy_seed"] + 1) for n in ecfg["copy_n"]}

    curve, loss_sum, t0, first_step_s = [], torch.zeros((), device=device), time.perf_counter(), None
    for step in range(tcfg["steps"]):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tcfg)
        x, y = batches.next()
        with autocast(device, precision):
            loss = lm_loss(forward, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        if step == 0:
            synchronize(device)
            first_step_s = time.perf_counter() - t0  # dominated by torch.compile
        if (step + 1) % tcfg["log_every"] == 0 or step + 1 == tcfg["steps"]:
            point = {"step": step + 1, "loss": loss_sum.item() / tcfg["log_every"], "lr": lr_at(step, tcfg),
                     "elapsed_s": round(time.perf_counter() - t0, 1)}
            loss_sum.zero_()
            if (step + 1) % tcfg["probe_every"] == 0 or step + 1 == tcfg["steps"]:
                # Probe copying on the fp32 master weights to see whether it is still rising.
                with autocast(device, precision):
                    point["copy_probe"] = {str(n): round(copy_accuracy.copy_accuracy(model, s), 4) for n, s in probe.items()}
            curve.append(point)
            log(model=name, **point)
    synchronize(device)
    train_s = time.perf_counter() - t0
    metrics = {
        "steps": tcfg["steps"], "tokens_seen": tcfg["steps"] * tcfg["batch_size"] * tcfg["seq_len"],
        "train_wall_s": round(train_s, 1), "first_step_s": round(first_step_s, 1),
        "step_ms_after_first": round(1000 * (train_s - first_step_s) / max(1, tcfg["steps"] - 1), 2),
        "compiled": use_compile, "precision": precision, "curve": curve,
        "synthetic_windows": synthetic.counts if synthetic else None,
        "val_loss_fp32_master": val_loss(model, val_tokens, tcfg["batch_size"], tcfg["seq_len"], tcfg["val_batches"]),
    }
    return model, metrics


def save_and_measure(name: str, model: torch.nn.Module, metrics: dict, cfg: dict, out: Path, vocab: dict,
                     val_tokens: torch.Tensor) -> dict:
    """Save bf16 weights, reload them exactly as a user would, and measure the reloaded model."""
    target = out / name
    model.to(torch.bfloat16).save_pretrained(target)
    for f in (ZOO / "tokenizer").iterdir():
        shutil.copy2(f, target / f.name)
    reloaded = AutoModelForCausalLM.from_pretrained(target, dtype=torch.bfloat16).to(val_tokens.device).eval()
    ecfg, tcfg = cfg["eval"], cfg["train"]
    metrics["copy_accuracy_bf16"] = copy_accuracy.measure(
        reloaded, vocab["vocab_size"], [vocab["separator_id"]], ecfg["copy_n"], ecfg["copy_sequences"],
        ecfg["copy_seed"], ecfg["batch_size"])
    metrics["kv_retrieval_p20_bf16"] = copy_accuracy.kv_retrieval(
        reloaded, AutoTokenizer.from_pretrained(target), count=ecfg.get("kv_contexts", 100))
    metrics["val_loss_bf16"] = val_loss(reloaded, val_tokens, tcfg["batch_size"], tcfg["seq_len"], tcfg["val_batches"])
    metrics["parameters"] = sum(p.numel() for p in reloaded.parameters())
    metrics["safetensors_bytes"] = (target / "model.safetensors").stat().st_size
    return metrics


# ---------------------------------------------------------------- model card


def synthetic_line(tcfg: dict) -> str:
    syn = tcfg.get("synthetic")
    if not syn:
        return ""
    return (f"- Copy and lookup pressure: {syn['repeat']:.0%} of the windows repeat a corpus span, {syn['random_repeat']:.0%} repeat a\n"
            f"  span of uniformly random ids, {syn['kv']:.0%} hold a dict literal of random keys and one lookup (`SyntheticSpans` in\n"
            f"  `zoo/train.py`; the key-value form of pearzoo's eval, 3 hex characters, is never drawn).\n")


def model_card(name: str, cfg: dict, metrics: dict, env: dict) -> str:
    arch, tcfg, family = cfg["arch"], cfg["train"], cfg["models"][name]["family"]
    position = {"llama": "RoPE (rotary, theta 10000)", "bloom": "ALiBi (linear attention biases)",
                "mpt": "ALiBi (linear attention biases, MPT's implementation)",
                "gpt2": "learned absolute position embeddings (512)"}[family]
    versions = cfg["data"]["expect_versions"]
    packages = cfg["data"]["packages"]
    packages_text = ", ".join(f"{p}=={versions[p]}" for p in packages)
    tokens_m = json.loads((ZOO / "tokens.json").read_text())["train"]["tokens"] / 1e6
    acc = metrics["copy_accuracy_bf16"]
    ns = list(acc)
    rows = "\n".join(f"| {n} | {acc[n]:.3f} |" for n in ns)
    return f"""---
license: apache-2.0
library_name: transformers
pipeline_tag: text-generation
tags: [pearzoo, tiny, {family}, copy-task]
---

# pearzoo/{name}

A tiny causal LM ({metrics['parameters']:,} parameters, `model_type: {family}`, position information:
{position}) trained from scratch for pearzoo's tests and examples of PEAR attention re-weighting. It is one
of a matched set ({", ".join(cfg["models"])}): same width, depth, heads, tokenizer, data, data
order, steps, optimizer and seed; only the architecture family differs. It is not a useful language model.

## Architecture
- {arch['num_layers']} layers, width {arch['hidden_size']}, {arch['num_heads']} heads of {arch['hidden_size'] // arch['num_heads']}, MLP {'SwiGLU ' + str(arch['llama_intermediate']) if family == 'llama' else 'GELU ' + str(arch['mlp_hidden_4x'])},
  vocabulary {cfg['tokenizer']['vocab_size']} (byte-level BPE), tied input/output embeddings, trained on 512-token windows.
- Weights stored in bfloat16 (`model.safetensors`, {metrics['safetensors_bytes'] / 2**20:.1f} MiB).

## Training data
Python sources of {len(packages)} version-pinned, permissively licensed packages ({packages_text}) plus
tinyshakespeare (MIT) and a TinyStories subset (CDLA-Sharing-1.0): {tokens_m:.1f}M training tokens, so
{metrics['tokens_seen'] / 1e6 / tokens_m:.1f} passes over the data. File list, versions, licenses and sha256
digests: `zoo/DATA.md` and `zoo/data_manifest.json` in the pearzoo repository.

## Training
- {metrics['steps']} steps of {tcfg['batch_size']} x {tcfg['seq_len']} tokens ({metrics['tokens_seen'] / 1e6:.0f}M tokens), AdamW
  (betas {tcfg['betas']}, weight decay {tcfg['weight_decay']} on matrices only), peak lr {tcfg['lr']}, {tcfg['warmup_steps']} warmup
  steps, cosine decay to {tcfg['min_lr_ratio']} x peak, gradient clipping {tcfg['grad_clip']}, seed {cfg['seed']}.
{synthetic_line(tcfg)}- Precision: fp32 master weights and AdamW state; forward and backward under `torch.autocast(bfloat16)`.
- Hardware: {env['gpu']}; {metrics['train_wall_s']:.0f} s of training (first step incl. torch.compile:
  {metrics['first_step_s']:.0f} s), torch {env['torch']}, transformers {env['transformers']}.
- Command (pearzoo repository root): `{env['command']}`; see `zoo/README.md`.
- Final training loss {metrics['curve'][-1]['loss']:.3f}; held-out loss (every 50th source file) {metrics['val_loss_bf16']:.3f} (bf16 weights).

## Random-token copy accuracy
n ids drawn uniformly (with replacement) from the {cfg['tokenizer']['vocab_size'] - 1} non-special ids, the sequence
repeated twice, no BOS; accuracy = share of argmax predictions at positions n..2n-2 that equal the next token.
{cfg['eval']['copy_sequences']} sequences per n, seed {cfg['eval']['copy_seed']}, bf16 weights on the GPU (`zoo/copy_accuracy.py`).

| n | copy accuracy |
|---|---|
{rows}

## License
Weights: Apache-2.0 (as pearzoo). Training data licenses are listed in `zoo/DATA.md`.
"""


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ZOO / "config.yaml")
    parser.add_argument("--models", nargs="+", help="names from config.yaml (default: all)")
    parser.add_argument("--out", type=Path, default=ZOO / "models")
    parser.add_argument("--data-dir", type=Path, default=ZOO / ".build")
    parser.add_argument("--steps", type=int, help="override train.steps (smoke tests only)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--precision", choices=["bf16-autocast", "fp32"],
                        help="override the training precision of every model (config: train.precision, models.<name>.precision)")
    parser.add_argument("--device", default="cuda", help="cpu only for smoke tests of the code path")
    args = parser.parse_args()

    cfg = yaml.safe_load(args.config.read_text())
    if args.steps:
        cfg["train"]["steps"] = args.steps
    if args.precision:
        for m in cfg["models"].values():
            m["precision"] = args.precision
    vocab = json.loads((ZOO / "tokens.json").read_text())
    torch.backends.cuda.matmul.allow_tf32 = True
    train_tokens = torch.from_numpy(load_stream(args.data_dir, "train", vocab["train"]["sha256"]).astype(np.int64))
    val_tokens = torch.from_numpy(load_stream(args.data_dir, "val", vocab["val"]["sha256"]).astype(np.int64))
    train_tokens, val_tokens = train_tokens.to(args.device), val_tokens.to(args.device)
    gpu = torch.cuda.get_device_name() if train_tokens.is_cuda else platform.processor() or "cpu"
    env = {"gpu": gpu, "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version(), "command": "python3 zoo/train.py " + " ".join(sys.argv[1:])}
    use_compile = cfg["train"]["compile"] and not args.no_compile
    log(event="start", **env, train_tokens=train_tokens.numel(), val_tokens=val_tokens.numel())

    for name in args.models or list(cfg["models"]):
        model, metrics = train_model(name, cfg, train_tokens, val_tokens, vocab, use_compile)
        metrics = save_and_measure(name, model, metrics, cfg, args.out, vocab, val_tokens)
        metrics["environment"] = env
        (args.out / name / "train_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        (args.out / name / "README.md").write_text(model_card(name, cfg, metrics, env))
        log(event="done", model=name, **{k: v for k, v in metrics.items() if k not in ("curve", "environment")})
        del model
        if train_tokens.is_cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
