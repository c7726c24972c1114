"""build -> patch -> from_pretrained for one tiny model of each newly covered family, saved WITHOUT tokenizer files.

Each case saves a tiny random model (tests/tiny_models.py) with `save_pretrained` only (config + safetensors, no
tokenizer: transformers 5 would fabricate a length-1 tokenizer for such a folder, issue #11 item 5), runs
`pearzoo build` with cheap settings and `k: 3%`, `pearzoo patch` with that manifest, then loads the patched
folder with the checkpoint's own class (`config.architectures[0]`, so Gemma 3 loads as
Gemma3ForConditionalGeneration) and checks its logits equal the base model's with the manifest applied as hooks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cli_run import FAST_BUILD, run_cli
from pearzoo.heads import HeadId, geometry_from_config
from pearzoo.hooks import scale_heads
from pearzoo.recipe.catalog import recipe_for_config
from tiny_models import tiny_model

# One model_type per newly covered family (and three of the tokenizer-less folders the issue saw fail).
FAMILIES = [
    "qwen3_moe", "qwen2_moe", "mixtral", "olmo2", "granitemoe", "cohere2", "smollm3", "gpt_oss", "deepseek_v3",
    "gemma3", "phi", "gptj", "gpt_bigcode", "glm4", "ministral", "exaone4", "hunyuan_v1_moe", "ernie4_5",
    "stablelm", "minicpm3", "nemotron", "biogpt", "codegen", "qwen2", "gpt2", "opt",
]  # fmt: skip

LOGIT_ATOL = 1e-4


def _without(args: list[str], key: str) -> list[str]:
    out: list[str] = []
    for i, a in enumerate(args):
        if a == "--set" and args[i + 1].startswith(key):
            continue
        if i and args[i - 1] == "--set" and a.startswith(key):
            continue
        out.append(a)
    return out


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_build_patch_load(model_type: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import transformers

    model, _ = tiny_model(model_type)
    base_dir = tmp_path / model_type
    model.save_pretrained(base_dir)
    assert sorted(p.name for p in base_dir.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"] or \
        sorted(p.name for p in base_dir.iterdir()) == ["config.json", "model.safetensors"]  # fmt: skip

    manifest = tmp_path / "m.json"
    # K as a percentage (issue #11 item 4): 3% of a tiny model's 12 heads rounds to 0, so 1.
    settings = _without(FAST_BUILD, "locate.k") + ["--set", "locate.k=3%"]
    code, _, err = run_cli(["build", "--model", str(base_dir), "--out", str(manifest), "--quiet", *settings], capsys)
    assert code == 0, err
    doc = json.loads(manifest.read_text())
    recipe, _ = recipe_for_config(model.config)
    geometry = geometry_from_config(recipe.heads, model.config)
    assert doc["recipe"]["id"] == recipe.id
    assert doc["recipe"]["settings"]["locate"]["k"] == "3%"
    assert doc["locate"]["k"] == max(1, round(0.03 * geometry.total_heads)) == len(doc["heads"])

    out = tmp_path / "patched"
    code, _, err = run_cli(["patch", str(base_dir), "--manifest", str(manifest), "--out", str(out), "--quiet"], capsys)
    assert code == 0, err

    cls = getattr(transformers, model.config.architectures[0])
    patched = cls.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(0, model.config.get_text_config(decoder=True).vocab_size, (2, 9), generator=torch.Generator().manual_seed(5))
    coefficients = {HeadId(h["layer"], h["head"]): h["coefficient"] for h in doc["heads"]}
    with torch.no_grad():
        base = model(input_ids=ids, use_cache=False).logits
        with scale_heads(model, geometry, coefficients):
            hooked = model(input_ids=ids, use_cache=False).logits
        got = patched(input_ids=ids, use_cache=False).logits
    assert (got - hooked).abs().max().item() <= LOGIT_ATOL
    if any(abs(tau - 1) > 1e-3 for tau in coefficients.values()):
        assert (got - base).abs().max().item() > LOGIT_ATOL


def test_tokenizer_larger_than_the_embedding_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    model, _ = tiny_model("gpt2")  # a 128-row embedding
    model.save_pretrained(tmp_path / "m")
    vocab = {f"w{i}": i for i in range(300)}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="w0"))).save_pretrained(tmp_path / "m")
    capsys.readouterr()  # save_pretrained's progress bar
    code, _, err = run_cli(["build", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "x.json"), *FAST_BUILD], capsys)
    assert code == 3
    assert err.strip().splitlines() == [
        f"error: {tmp_path / 'm'}: the tokenizer has 300 tokens but the model's embedding only 128 "
        "(tokenizer files of another model?)"
    ]
    assert not (tmp_path / "x.json").exists()
