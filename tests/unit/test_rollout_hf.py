"""HFRolloutEngine on a tiny random Qwen3-MoE: logprobs, greedy, seeding, stopping, weight updates."""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM  # noqa: E402

from pivotrl_nemo.models.megatron.hf.mapping import WeightLoadError  # noqa: E402
from pivotrl_nemo.rollout.base import SamplingParams  # noqa: E402
from pivotrl_nemo.rollout.hf import HFRolloutEngine, sample_tokens  # noqa: E402

VOCAB = 256
PROMPTS = [[3, 17, 42, 9, 100, 7, 55], [8, 9], [10, 11, 12, 13], [200, 201, 202]]


class ToyTokenizer:
    """Decodes ids as space-separated numbers (the engine only needs decode and pad_token_id)."""

    pad_token_id = 0

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return " ".join(str(i) for i in ids)


def tiny_model(seed: int = 0) -> Qwen3MoeForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen3MoeConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=256,
        initializer_range=0.5,  # a wide init: peaked, non-uniform distributions
    )
    return Qwen3MoeForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model() -> Qwen3MoeForCausalLM:
    return tiny_model(0)


def engine(model, batch_size: int = 4, stop: list[int] | None = None) -> HFRolloutEngine:
    return HFRolloutEngine(model, ToyTokenizer(), batch_size=batch_size, stop_token_ids=stop or [VOCAB - 1])


@torch.no_grad()
def full_logits(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """Logits predicting each completion token, from one unpadded full-sequence forward."""
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0].float()
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(completion)]


def reference_logprobs(model, prompt, completion, temperature: float, top_p: float = 1.0) -> list[float]:
    logits = full_logits(model, prompt, completion)
    logp = torch.log_softmax(logits / temperature, dim=-1)
    out = []
    for t, tok in enumerate(completion):
        lp = logp[t, tok].item()
        if top_p < 1.0:
            probs, order = logp[t].exp().sort(descending=True, stable=True)
            before = probs.cumsum(0) - probs
            nucleus = order[before < top_p]
            assert tok in nucleus.tolist(), "sampled a token outside the nucleus"
            lp -= math.log(probs[before < top_p].sum().item())
        out.append(lp)
    return out


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.0, 0.8)])
def test_logprobs_match_full_forward_with_left_padding(model, temperature, top_p):
    eng = engine(model, batch_size=5)  # mixed-length batches that also split a prompt's group
    sp = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=12, seed=7)
    results = eng.generate(PROMPTS, 3, sp)
    assert [len(r) for r in results] == [3] * len(PROMPTS)
    for prompt, comps in zip(PROMPTS, results):
        for c in comps:
            assert c.prompt_token_ids == prompt
            assert len(c.token_ids) == len(c.logprobs) > 0
            ref = reference_logprobs(model, prompt, c.token_ids, temperature, top_p)
            assert torch.allclose(torch.tensor(c.logprobs), torch.tensor(ref), atol=1e-4), (c.logprobs, ref)


def test_greedy_equals_stepwise_argmax(model):
    eng = engine(model, batch_size=3)
    sp = SamplingParams(temperature=0.0, max_new_tokens=10, seed=0)
    results = eng.generate(PROMPTS, 2, sp)
    for prompt, comps in zip(PROMPTS, results):
        seq: list[int] = []
        ref_lp = []
        with torch.no_grad():
            for _ in range(10):
                logits = model(input_ids=torch.tensor([prompt + seq])).logits[0, -1].float()
                seq.append(int(logits.argmax()))
                ref_lp.append(torch.log_softmax(logits, -1)[seq[-1]].item())
        for c in comps:  # greedy: both samples identical and equal to the reference
            assert c.token_ids == seq
            assert c.finish_reason == "length"
            assert torch.allclose(torch.tensor(c.logprobs), torch.tensor(ref_lp), atol=1e-4)


def test_same_seed_same_completions_independent_of_batch_size(model):
    sp = SamplingParams(temperature=1.0, max_new_tokens=8, seed=123)
    a = engine(model, batch_size=4).generate(PROMPTS, 3, sp)
    b = engine(model, batch_size=4).generate(PROMPTS, 3, sp)
    c = engine(model, batch_size=1).generate(PROMPTS, 3, sp)
    d = engine(model, batch_size=4).generate(PROMPTS, 3, SamplingParams(temperature=1.0, max_new_tokens=8, seed=124))
    ids = lambda res: [[x.token_ids for x in r] for r in res]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) == ids(c)
    assert ids(a) != ids(d)
    assert [[x.logprobs for x in r] for r in a] == [[x.logprobs for x in r] for r in b]
    # the samples of one prompt differ from each other (own per-sequence generators)
    assert len({tuple(x.token_ids) for x in a[0]}) > 1
    # seed=None draws from the engine's generator: two calls differ, two fresh engines agree
    e1, e2 = engine(model), engine(model)
    none = SamplingParams(temperature=1.0, max_new_tokens=8, seed=None)
    first = ids(e1.generate(PROMPTS, 2, none))
    assert first != ids(e1.generate(PROMPTS, 2, none))
    assert first == ids(e2.generate(PROMPTS, 2, none))


def test_stop_token_and_max_new_tokens(model):
    greedy = SamplingParams(temperature=0.0, max_new_tokens=6, seed=0)
    free = engine(model).generate(PROMPTS, 1, greedy)
    stop_tok = free[0][0].token_ids[2]  # third greedy token of prompt 0 becomes the stop token
    stopped = engine(model, stop=[stop_tok]).generate(PROMPTS, 1, greedy)
    for ref, got in zip(free, stopped):
        ref_ids, c = ref[0].token_ids, got[0]
        if stop_tok in ref_ids:
            cut = ref_ids.index(stop_tok) + 1
            assert c.token_ids == ref_ids[:cut]
            assert c.finish_reason == "stop"
            assert c.text == ToyTokenizer().decode(ref_ids[: cut - 1])  # text without the stop token
        else:  # sequences that keep going are unaffected by their batch-mates leaving
            assert c.token_ids == ref_ids
            assert c.finish_reason == "length"
        assert torch.allclose(torch.tensor(c.logprobs), torch.tensor(ref[0].logprobs[: len(c.token_ids)]), atol=1e-5)
    assert stopped[0][0].finish_reason == "stop" and len(stopped[0][0].token_ids) <= 3
    short = engine(model).generate(PROMPTS, 1, SamplingParams(temperature=1.0, max_new_tokens=1, seed=1))
    assert all(len(r[0].token_ids) == 1 for r in short)


def test_sample_tokens_top_p_tiny_is_greedy():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0)) * 3
    tok, lp = sample_tokens(logits, torch.rand(5), temperature=1.0, top_p=1e-6)
    assert torch.equal(tok, logits.argmax(-1))
    assert torch.allclose(lp, torch.zeros(5))
    tok_g, lp_g = sample_tokens(logits, torch.rand(5), temperature=0.0, top_p=1.0)
    assert torch.equal(tok_g, logits.argmax(-1))
    assert torch.allclose(lp_g, torch.log_softmax(logits, -1).max(-1).values)


def test_update_weights_changes_outputs_and_is_strict(model):
    sp = SamplingParams(temperature=0.0, max_new_tokens=8, seed=0)
    mine = tiny_model(0)
    eng = engine(mine)
    before = [r[0].token_ids for r in eng.generate(PROMPTS, 1, sp)]
    other = tiny_model(1)
    eng.update_weights(other.state_dict().items())
    after = [r[0].token_ids for r in eng.generate(PROMPTS, 1, sp)]
    expected = [r[0].token_ids for r in engine(other).generate(PROMPTS, 1, sp)]
    assert after != before
    assert after == expected

    with pytest.raises(WeightLoadError, match="model.layers.0.mlp.not_a_weight"):
        eng.update_weights([*other.state_dict().items(), ("model.layers.0.mlp.not_a_weight", torch.zeros(1))])
    partial = [(k, v) for k, v in other.state_dict().items() if k != "model.norm.weight"]
    with pytest.raises(WeightLoadError, match="missing.*model.norm.weight"):
        eng.update_weights(partial)
    bad = dict(other.state_dict())
    bad["model.norm.weight"] = torch.zeros(3)
    with pytest.raises(WeightLoadError, match="mis-shaped.*model.norm.weight"):
        eng.update_weights(bad.items())


def test_rejects_bad_input(model):
    eng = engine(model)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        eng.generate([[1, 2], []], 1, SamplingParams(seed=0))
    with pytest.raises(ValueError, match="n must be"):
        eng.generate([[1, 2]], 0, SamplingParams(seed=0))
    eng.sleep()
    eng.wake()
