"""Bring your own checkpoint: a random HF Llama through ``pivotrl import``'s model file, every
stage, and ``pivotrl export run_dir=R`` with nothing else; the one vocabulary check; the run's
saved configuration as the base of later commands."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from pivotrl_nemo.cli import main
from pivotrl_nemo.config import ConfigError, load_config
from pivotrl_nemo.config.schema import ModelConfig
from pivotrl_nemo.data.tokenizer import load_tokenizer
from pivotrl_nemo.models.megatron.hf.sources import SMOLLM2, save_hf_folder
from pivotrl_nemo.pipeline.runtime import VocabularyError, padded_vocab_size, vocabulary_rows

VOCAB = 1024
"""The embedding rows of the imported model: experiment=tiny's BPE (1,024 tokens)."""

DATA = [
    "experiment=tiny",
    "data.max_trajectories=4",
    "data.split_fractions={sft: 0.5, rl: 0.25, val: 0.0, test: 0.25}",
    "data.max_prompt_tokens=768",
    "data.max_history_items=1",
]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A random tiny HF Llama with its own small tokenizer (a 1,024-token BPE that ``build``
    trains: a 49K vocabulary would make this test slow), imported by the CLI."""
    from transformers import LlamaConfig, LlamaForCausalLM

    work = tmp_path_factory.mktemp("byo")
    assert main(["build", *DATA, f"run_dir={work / 'bpe'}"]) == 0  # experiment=tiny trains a domain BPE
    tokenizer = load_tokenizer(str(work / "bpe" / "tokenizer"))
    torch.manual_seed(0)
    hf_cfg = LlamaConfig(
        vocab_size=padded_vocab_size(len(tokenizer)),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    hf = work / "hf"
    hf.mkdir()
    save_hf_folder(LlamaForCausalLM(hf_cfg).eval(), tokenizer, hf)
    assert main(["import", f"hf_dir={hf}", f"out={work / 'import'}"]) == 0
    return work


def test_import_writes_one_model_file_with_only_the_keys_that_apply(imported):
    keys = OmegaConf.to_container(OmegaConf.load(imported / "import" / "model.yaml"))
    assert keys["hidden_size"] == 32 and keys["num_layers"] == 2 and keys["num_experts"] == 0
    assert keys["vocab_size"] == VOCAB and keys["tokenizer_vocab_size"] == 0
    assert keys["init_checkpoint"] == str((imported / "import").resolve())
    assert keys["tokenizer"] == str((imported / "hf").resolve())
    assert not {"moe_ffn_hidden_size", "moe_router_topk", "params_dtype"} & set(keys)  # dense: no MoE keys


def test_every_stage_then_export_with_run_dir_alone(imported, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(
        [
            "run",
            *DATA,
            f"model_from={imported / 'import'}",  # one argument, not 19 keys
            f"run_dir={run}",
            "sft.steps=2",
            "algorithm.steps=1",
            "algorithm.prompts_per_step=1",
            "algorithm.group_size=2",
            "profile.k=2",
            "filter.min_variance=-1",
            "eval.samples_per_candidate=1",
            "stages=[build,extract,sft,profile,filter,train]",
        ]
    )
    assert rc == 0
    assert json.loads((run / ".stages" / "sft.json").read_text())["summary"]["init_checkpoint"] == str(
        (imported / "import").resolve()
    )
    out = tmp_path / "hf_out"
    # the README's form, with no model or tokenizer override: the run's config.yaml is the base
    assert main(["export", f"run_dir={run}", "export.checkpoint=train", f"export.out={out}"]) == 0
    exported = json.loads((out / "config.json").read_text())
    assert exported["hidden_size"] == 32 and exported["vocab_size"] == VOCAB
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    # an override that would change the run's model is refused, naming the key
    capsys.readouterr()
    bad = main(["export", f"run_dir={run}", "model.hidden_size=64", "export.checkpoint=train", f"export.out={out}2"])
    assert bad == 2
    err = capsys.readouterr().err
    assert "model.hidden_size" in err and "64" in err and "32" in err


def test_the_quickstart_bpe_with_a_pretrained_checkpoint_is_refused_naming_the_numbers(imported):
    with pytest.raises(ConfigError) as e:
        load_config(["experiment=quickstart", f"model.init_checkpoint={imported / 'import'}"])
    assert "model.tokenizer_vocab_size" in str(e.value) and "4096" in str(e.value)
    with pytest.raises(ConfigError) as e:  # model_from fixes it: an explicit override may not undo that
        load_config(["experiment=quickstart", f"model_from={imported / 'import'}", "model.tokenizer_vocab_size=4096"])
    assert "model.tokenizer_vocab_size" in str(e.value) and "4096" in str(e.value)
    cfg = load_config(["experiment=quickstart", f"model_from={imported / 'import'}"])
    assert cfg.model.tokenizer_vocab_size == 0 and cfg.model.vocab_size == VOCAB
    # the runtime check (for configs built around validation): tokenizer, config and checkpoint rows
    bpe = ModelConfig(tokenizer_vocab_size=4096, init_checkpoint="ckpt")
    with pytest.raises(VocabularyError) as v:
        vocabulary_rows(4096, bpe, 49152)
    assert all(str(n) in str(v.value) for n in (4096, 49152)) and "tokenizer_vocab_size=0" in str(v.value)


def test_vocabulary_padding_is_accepted_and_other_mismatches_are_not():
    m = ModelConfig(init_checkpoint="ckpt")
    assert vocabulary_rows(151669, m, 151936) == 151936  # Qwen3: padded rows
    assert vocabulary_rows(4000, ModelConfig()) == 4096  # from scratch: padded to 128
    with pytest.raises(VocabularyError, match="32000 embedding rows"):
        vocabulary_rows(49152, m, 32000)  # fewer rows than tokens
    with pytest.raises(VocabularyError, match="model.vocab_size=49152"):
        vocabulary_rows(49152, ModelConfig(vocab_size=49152, init_checkpoint="ckpt"), 50176)
    with pytest.raises(VocabularyError):
        vocabulary_rows(30000, m, 49152)  # more rows than padding explains: another tokenizer's


def test_smollm2_source_keys_are_the_ones_its_gguf_derives():
    from transformers import AutoConfig

    from pivotrl_nemo.data.tokenizer import smollm2_gguf_path
    from pivotrl_nemo.models.megatron.hf.importer import model_config_from_hf

    gguf = smollm2_gguf_path()
    derived = model_config_from_hf(AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name))
    keys = SMOLLM2.model_keys()
    for k, v in keys.items():
        if k not in ("name", "tokenizer", "tokenizer_vocab_size", "vocab_size", "init_checkpoint"):
            assert getattr(derived, k) == v, k
    assert keys["vocab_size"] == len(load_tokenizer("smollm2"))
    cfg = load_config(["experiment=smollm2"])
    assert cfg.model.hidden_size == 576 and cfg.model.init_checkpoint == keys["init_checkpoint"]


def _saved_run(tmp_path, *overrides):
    """A run directory whose config.yaml was saved from ``overrides`` (as the runner saves it)."""
    from pivotrl_nemo.config import to_yaml

    run = tmp_path / "saved"
    run.mkdir()
    (run / "config.yaml").write_text(to_yaml(load_config(["experiment=tiny", f"run_dir={run}", *overrides])))
    return run


def test_a_run_continues_from_its_saved_configuration(tmp_path):
    from pivotrl_nemo.pipeline.run_config import load_run_config

    run = _saved_run(tmp_path, "algorithm.steps=7", "model.hidden_size=96", "stages=[build]", "model.name=mine")
    cfg = load_run_config([f"run_dir={run}", "eval.samples_per_candidate=3"])
    assert (cfg.algorithm.steps, cfg.model.hidden_size, cfg.model.name) == (7, 96, "mine")
    assert cfg.eval.samples_per_candidate == 3 and cfg.stages == []  # stages belong to one command
    with pytest.raises(ConfigError, match=r"model\.hidden_size.*128.*96"):
        load_run_config([f"run_dir={run}", "model.hidden_size=128"])
    with pytest.raises(ConfigError, match="model.tokenizer_vocab_size"):
        load_run_config([f"run_dir={run}", "+model.tokenizer_vocab_size=2048"])
    # experiment= composes afresh (the experiment file's edits count), still with the run's model
    fresh = load_run_config(["experiment=tiny", f"run_dir={run}", "model.hidden_size=96"])
    assert fresh.algorithm.steps == 4 and fresh.model.hidden_size == 96
    with pytest.raises(ConfigError, match="model.hidden_size"):
        load_run_config(["experiment=tiny", f"run_dir={run}"])


def test_a_saved_gpu_setting_can_be_overridden_to_continue_on_a_cpu(tmp_path):
    from pivotrl_nemo.pipeline.run_config import load_run_config

    run = _saved_run(tmp_path)
    text = (run / "config.yaml").read_text()
    assert "use_distributed_optimizer: false" in text
    (run / "config.yaml").write_text(
        text.replace("use_distributed_optimizer: false", "use_distributed_optimizer: true")
    )
    with pytest.raises(ConfigError, match="use_distributed_optimizer"):
        load_run_config([f"run_dir={run}"])
    cfg = load_run_config([f"run_dir={run}", "parallel.use_distributed_optimizer=false"])
    assert not cfg.parallel.use_distributed_optimizer
