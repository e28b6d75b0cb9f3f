"""The vLLM rollout engine and its CUDA-IPC refit (rollout/vllm.py, weight_sync/vllm_sync.py).

vLLM is CUDA-only and cannot be installed on the CPU machines. What runs here, on real inputs:
the name mapping (checked against transformers' own Qwen3-MoE checkpoint format, which is what
vLLM loads), the sender -> receiver refit protocol (real synchronizer and real worker extension;
vLLM's worker and engine are replaced by the two attributes the extension uses, see
``_Worker``), the IPC handle encoding, and the conversion of vLLM-shaped outputs. The tests at the
bottom need vLLM and a GPU and skip elsewhere.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
from types import SimpleNamespace

import pytest
import torch

from pivotrl_nemo.config.schema import ModelConfig
from pivotrl_nemo.models.megatron.hf.mapping import hf_config_for
from pivotrl_nemo.rollout.vllm import request_seed, sampled_logprobs, to_completions
from pivotrl_nemo.weight_sync.vllm_sync import (
    VLLMIPCWeightSynchronizer,
    VLLMWeightSyncExtension,
    ipc_args_from_wire,
    ipc_args_to_wire,
    to_checkpoint_names,
)

HAS_VLLM = importlib.util.find_spec("vllm") is not None
GPU_ONLY = "needs vLLM and a CUDA GPU (GPU-only path)"
CFG = ModelConfig(
    hidden_size=32,
    num_layers=2,
    num_attention_heads=4,
    num_query_groups=2,
    head_dim=8,
    ffn_hidden_size=64,
    num_experts=4,
    moe_ffn_hidden_size=16,
    moe_router_topk=2,
)


@pytest.fixture(scope="module")
def _hf_moe_once():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(hf_config_for(CFG, vocab_size=128)).eval()


@pytest.fixture
def hf_moe(_hf_moe_once):
    """A fresh copy per test: ``save_pretrained`` writes into the model's config (e.g. its
    ``architectures``), which must not leak into the next test."""
    return copy.deepcopy(_hf_moe_once)


# --------------------------------------------------------------------------- model directory


def test_model_dir_names_the_causal_lm_class_for_vllm(tmp_path):
    """vLLM picks the model class from config.json's ``architectures``; a config that never went
    through a model's ``save_pretrained`` has none, and vLLM would fall back to the base
    ``Qwen3MoeModel`` (a pooling model, no ``generate``)."""
    import json

    from pivotrl_nemo.data.tokenizer import load_tokenizer
    from pivotrl_nemo.rollout.vllm import write_model_dir

    dense = dataclasses.replace(CFG, num_experts=0)
    llama = dataclasses.replace(dense, qk_layernorm=False)
    tokenizer = load_tokenizer("smollm2")
    for cfg, arch in ((CFG, "Qwen3MoeForCausalLM"), (dense, "Qwen3ForCausalLM"), (llama, "LlamaForCausalLM")):
        config = hf_config_for(cfg, vocab_size=128)
        assert not config.architectures  # fresh: nothing filled it in
        path = write_model_dir(config, tokenizer, tmp_path / arch)
        with open(f"{path}/config.json") as f:
            assert json.load(f)["architectures"] == [arch]
        assert not config.architectures  # the caller's config is left as it was


# --------------------------------------------------------------------------- names


def test_checkpoint_names_match_transformers_saved_checkpoint(hf_moe, tmp_path):
    """The tensors we stream are exactly the checkpoint transformers writes (names and values)."""
    from safetensors.torch import load_file

    hf_moe.save_pretrained(tmp_path)
    saved = {}
    for f in tmp_path.glob("*.safetensors"):
        saved.update(load_file(f))
    ours = dict(to_checkpoint_names(hf_moe.named_parameters()))
    assert sorted(ours) == sorted(saved)
    assert "model.layers.1.mlp.experts.3.up_proj.weight" in ours
    for name, t in saved.items():
        assert torch.equal(ours[name], t), name


# --------------------------------------------------------------------------- refit protocol


class _LoadsByName(torch.nn.Module):
    """Holds one parameter per checkpoint name; ``load_weights`` copies and returns the loaded
    names, with vLLM's model signature."""

    def __init__(self, shapes: dict[str, tuple[torch.Size, torch.dtype]]) -> None:
        super().__init__()
        self.names = list(shapes)
        for i, (shape, dtype) in enumerate(shapes.values()):
            self.register_parameter(f"p{i}", torch.nn.Parameter(torch.zeros(shape, dtype=dtype), requires_grad=False))
        self.calls = 0

    def named_parameters(self, *a, **k):  # the engine's parameter names are the checkpoint names here
        return [(n, getattr(self, f"p{i}")) for i, n in enumerate(self.names)]

    def load_weights(self, weights):
        self.calls += 1
        index = {n: i for i, n in enumerate(self.names)}
        loaded = set()
        for name, t in weights:
            getattr(self, f"p{index[name]}").data.copy_(t)
            loaded.add(name)
        return loaded


class _Worker(VLLMWeightSyncExtension):
    """vLLM's GPU worker reduced to what the extension uses: ``model_runner.model`` and ``device``."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model_runner = SimpleNamespace(model=model, model_config=None)
        self.device = torch.device("cpu")


class _InProcessEngine:
    """The engine methods the synchronizer calls; ``collective_rpc`` runs the method on the worker
    in this process, as vLLM's in-process executors do."""

    in_process = True

    def __init__(self, worker: _Worker) -> None:
        self.worker, self.events = worker, []

    def collective_rpc(self, method, args=()):
        return [getattr(self.worker, method)(*args)]

    def wake_for_weight_update(self):
        self.events.append("wake weights")

    def finish_weight_update(self):
        self.events.append("wake kv_cache + reset prefix cache")


def _receiver_for(hf_moe):
    shapes = {n: (t.shape, t.dtype) for n, t in to_checkpoint_names(hf_moe.named_parameters())}
    return _Worker(_LoadsByName(shapes))


def test_sync_streams_every_tensor_through_buckets(hf_moe):
    worker = _receiver_for(hf_moe)
    engine = _InProcessEngine(worker)
    sync = VLLMIPCWeightSynchronizer(
        None, None, engine, named_tensors=lambda: hf_moe.named_parameters(), bucket_bytes=16 << 10
    )
    assert sync.is_stale()
    sync.sync_weights()
    stats = sync.last_stats
    assert not sync.is_stale() and sync.version == 1
    assert stats["weight_sync/buckets"] > 3 and worker.model_runner.model.calls == stats["weight_sync/buckets"]
    expected = dict(to_checkpoint_names(hf_moe.named_parameters()))
    got = dict(worker.model_runner.model.named_parameters())
    assert sorted(got) == sorted(expected)
    for name, t in expected.items():
        assert torch.equal(got[name], t), name
    assert engine.events == ["wake weights", "wake kv_cache + reset prefix cache"]
    sync.mark_stale()
    assert sync.is_stale()


def test_receiver_rejects_duplicates_gaps_and_unloaded_parameters(hf_moe):
    worker = _receiver_for(hf_moe)
    engine = _InProcessEngine(worker)
    named = list(hf_moe.named_parameters())

    dup = VLLMIPCWeightSynchronizer(None, None, engine, named_tensors=lambda: named + named[:1], bucket_bytes=1 << 20)
    with pytest.raises(ValueError, match="appears twice"):
        dup.sync_weights()
    # a tensor announced but never sent
    worker.pivotrl_begin_update(7)
    with pytest.raises(RuntimeError, match="1 tensors missing"):
        worker.pivotrl_finish_update(["model.norm.weight"])
    # an engine parameter nobody sent (e.g. a name-mapping gap): lm_head left out
    partial = VLLMIPCWeightSynchronizer(
        None,
        None,
        engine,
        bucket_bytes=1 << 20,
        named_tensors=lambda: [(n, t) for n, t in named if n != "lm_head.weight"],
    )
    with pytest.raises(RuntimeError, match="not loaded: \\['lm_head.weight'\\]"):
        partial.sync_weights()
    with pytest.raises(RuntimeError, match="before pivotrl_begin_update"):
        worker.pivotrl_load_bucket(
            {"manifest": {"nbytes": 0, "specs": []}, "buffer": torch.empty(0, dtype=torch.uint8)}
        )


def test_ipc_handle_wire_format_roundtrip():
    """The CUDA IPC reduction's arguments travel as plain data and come back with the local device."""
    args = (
        torch.Tensor,
        torch.Size([4096]),
        (1,),
        0,
        torch.storage.TypedStorage,
        torch.uint8,
        3,
        b"\x01handle",
        8192,
        512,
        False,
        b"refcount",
        16,
        b"event",
        True,
    )
    wire = ipc_args_to_wire(args)
    assert all(isinstance(v, (int, bytes, bool, type(None))) for v in wire.values())
    back = ipc_args_from_wire(wire, device_index=0)
    assert back[6] == 0 and back[:6] == args[:6] and back[7:] == args[7:]
    with pytest.raises(RuntimeError, match="reduction changed"):
        ipc_args_to_wire(args[:-1])
    with pytest.raises(ValueError, match="1-D uint8"):
        ipc_args_to_wire(args[:5] + (torch.float32,) + args[6:])


# --------------------------------------------------------------------------- outputs


def _out(index, ids, lps, reason):
    return SimpleNamespace(
        index=index,
        text=f"t{index}",
        token_ids=ids,
        finish_reason=reason,
        logprobs=[{t: SimpleNamespace(logprob=lp), 99: SimpleNamespace(logprob=-9.0)} for t, lp in zip(ids, lps)],
    )


def test_outputs_become_completions_in_sample_order():
    ro = SimpleNamespace(outputs=[_out(1, [5, 6], [-0.5, -0.25], "length"), _out(0, [7, 2], [-1.0, -2.0], "stop")])
    (comps,) = to_completions([ro], [[1, 2, 3]], n=2)
    assert [c.token_ids for c in comps] == [[7, 2], [5, 6]]
    assert comps[0].logprobs == [-1.0, -2.0] and comps[1].logprobs == [-0.5, -0.25]
    assert [c.finish_reason for c in comps] == ["stop", "length"] and comps[0].prompt_token_ids == [1, 2, 3]
    with pytest.raises(RuntimeError, match="expected 3"):
        to_completions([ro], [[1]], n=3)
    with pytest.raises(RuntimeError, match="no log-probs"):
        sampled_logprobs([1], None)


def test_request_seeds_differ_per_prompt():
    assert request_seed(None, 3) is None
    seeds = {request_seed(11, i) for i in range(100)}
    assert len(seeds) == 100 and request_seed(11, 5) == request_seed(11, 5)
    # vLLM seeds sample j of a request as seed + j: with n samples per prompt no two sequences of
    # a call may share a stream
    n = 8
    streams = [request_seed(11, i, n) + j for i in range(100) for j in range(n)]
    assert len(set(streams)) == len(streams)


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed: the missing-extra message is not reachable")
def test_engine_without_vllm_says_how_to_get_it():
    from pivotrl_nemo.rollout.vllm import VLLMRolloutEngine

    with pytest.raises(ImportError, match="pip install 'pivotrl_nemo\\[gpu\\]'"):
        VLLMRolloutEngine("/nonexistent", stop_token_ids=[0])


# --------------------------------------------------------------------------- GPU only


def _ipc_child(handles, queue):
    from pivotrl_nemo.weight_sync.vllm_sync import open_cuda_buffer

    buf = open_cuda_buffer(handles)
    queue.put(int(buf.to(torch.int64).sum().item()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (GPU-only path)")
def test_cuda_ipc_buffer_opens_in_another_process():
    import torch.multiprocessing as mp

    from pivotrl_nemo.weight_sync.vllm_sync import share_cuda_buffer

    buf = torch.arange(4096, device="cuda").to(torch.uint8)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_ipc_child, args=(share_cuda_buffer(buf), q))
    p.start()
    total = q.get(timeout=120)
    p.join(timeout=60)
    assert total == int(buf.to(torch.int64).sum().item())


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_VLLM and torch.cuda.is_available()), reason=GPU_ONLY)
def test_vllm_engine_generates_sleeps_and_refits(hf_moe, tmp_path):
    """Refit correctness: after a sync, vLLM's greedy log-probs equal the trainer-side model's."""
    from pivotrl_nemo.data.tokenizer import load_tokenizer
    from pivotrl_nemo.rollout.base import SamplingParams
    from pivotrl_nemo.rollout.vllm import VLLMRolloutEngine, write_model_dir

    model = copy.deepcopy(hf_moe).to("cuda", torch.bfloat16)
    model_dir = write_model_dir(model.config, load_tokenizer("smollm2"), tmp_path / "model")
    engine = VLLMRolloutEngine(
        model_dir,
        stop_token_ids=[0],
        load_format="dummy",
        gpu_memory_utilization=0.3,
        max_model_len=256,
        enforce_eager=True,
    )
    sync = VLLMIPCWeightSynchronizer(None, None, engine, named_tensors=lambda: model.named_parameters())
    engine.sleep()
    sync.sync_weights()
    prompt = [1, 5, 9, 17, 33]
    (comps,) = engine.generate([prompt], n=2, sampling=SamplingParams(temperature=0.0, max_new_tokens=8, seed=0))
    assert comps[0].token_ids == comps[1].token_ids
    ids = torch.tensor([prompt + comps[0].token_ids], device="cuda")
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits.float()[0, len(prompt) - 1 : -1], dim=-1)
    ref = logp.gather(-1, ids[0, len(prompt) :, None]).squeeze(-1)
    assert torch.allclose(torch.tensor(comps[0].logprobs, device="cuda"), ref, atol=0.05)
    engine.sleep()
    engine.wake()
    (again,) = engine.generate([prompt], n=1, sampling=SamplingParams(temperature=0.0, max_new_tokens=8))
    assert again[0].token_ids == comps[0].token_ids


class _SleepRecorder:
    """The three ``vllm.LLM`` calls the engine's sleep / wake state machine makes."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags):
        self.calls.append(("wake_up", tuple(tags)))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))


def test_level_two_sleep_refuses_to_generate_until_a_refit(monkeypatch):
    import sys
    import types

    from pivotrl_nemo.config.schema import VLLMEngineConfig
    from pivotrl_nemo.rollout.base import SamplingParams
    from pivotrl_nemo.rollout.vllm import VLLMRolloutEngine

    assert VLLMEngineConfig().sleep_level == 2  # the default: every step ends with a full refit
    engine = object.__new__(VLLMRolloutEngine)  # the state machine only; vLLM itself needs a GPU
    engine.llm, engine.sleep_level, engine._asleep, engine._weights_discarded = _SleepRecorder(), 2, set(), False
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=dict))
    engine.sleep()
    engine.wake()  # a wake without a refit leaves uninitialised weights behind
    with pytest.raises(RuntimeError, match="sync_weights"):
        engine.generate([[1, 2]], 1, SamplingParams())
    engine.sleep()
    engine.wake_for_weight_update()
    engine.finish_weight_update()  # what sync_weights does around a complete refit
    assert not engine._weights_discarded
    assert engine.llm.calls[:3] == [("sleep", 2), ("wake_up", ("weights", "kv_cache")), ("sleep", 2)]
