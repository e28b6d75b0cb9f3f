"""The out-of-domain family (data.ood_source): built, split by trajectory, extracted with its own
verifier, mixed into pi_0's SFT data (its 'sft' part only), and absent when not configured."""

import json

import pytest

from pivotrl_nemo.config import ConfigError, load_config
from pivotrl_nemo.pipeline import Runner
from pivotrl_nemo.pipeline.candidates import candidates_by_split, ood_rows
from pivotrl_nemo.pipeline.stages.build import tokenizer_rows
from pivotrl_nemo.pipeline.stages.sft import sft_rows
from pivotrl_nemo.utils.io import read_jsonl

OOD = ["data.ood_source=toy", "data.ood_max_trajectories=10"]


def _runner(tmp_path, *extra):
    return Runner(load_config(["experiment=tiny", f"run_dir={tmp_path}", "model.tokenizer_vocab_size=0", *extra]))


def _ids(rows):
    return {r["id"] for r in rows}


def test_ood_family_is_split_by_trajectory_and_only_its_sft_part_trains_pi0(tmp_path):
    r = _runner(tmp_path, *OOD, "sft.steps=2")
    layout = r.layout
    built = r.run("build")
    assert built["ood_trajectories"] == 10 and sum(built["ood_by_split"].values()) == 10
    assert layout.ood_trajectories.exists() and layout.ood_splits.exists()
    assignment = json.loads(layout.ood_splits.read_text())
    assert set(assignment.values()) == {"sft", "test"}
    assert {t["id"] for t in read_jsonl(layout.ood_trajectories)} == set(assignment)
    assert not set(assignment) & set(json.loads(layout.splits.read_text()))  # no id shared with the main domain

    r.run("extract")
    ood_sft, ood_test = read_jsonl(layout.candidates("ood_sft")), read_jsonl(layout.candidates("ood_test"))
    assert ood_sft and ood_test
    tids = {s: {row["metadata"]["trajectory_id"] for row in rows} for s, rows in (("sft", ood_sft), ("test", ood_test))}
    assert not tids["sft"] & tids["test"]  # disjoint by trajectory, not only by row
    assert all(assignment[t] == s for s, ts in tids.items() for t in ts)
    for split, rows in (("ood_sft", ood_sft), ("ood_test", ood_test)):
        assert {row["metadata"]["split"] for row in rows} == {split}
        assert {row["agent_ref"]["name"] for row in rows} == {"tool_call_args"}  # the toy domain's verifier
    assert {row["agent_ref"]["name"] for row in read_jsonl(layout.candidates("sft"))} == {"bfcl_state"}

    ctx = r.context()
    assert _ids(ood_rows(ctx, "ood_test")) == _ids(ood_test) == _ids(ood_rows(ctx, "test"))
    in_domain, mixed = sft_rows(ctx, candidates_by_split(ctx))
    trained = _ids(in_domain) | _ids(mixed)
    assert _ids(mixed) == _ids(ood_sft) and not trained & _ids(ood_test)
    assert not _ids(tokenizer_rows(ctx)) & _ids(ood_test)  # the domain tokenizer never sees OOD test text
    assert _ids(ood_sft) <= _ids(tokenizer_rows(ctx))

    done = r.run("sft")
    sft_cands = read_jsonl(layout.candidates("sft"))
    assert done["examples"] == len(sft_cands) + len(ood_sft)
    assert (done["sft_examples"], done["ood_sft_examples"]) == (len(sft_cands), len(ood_sft))


def test_without_ood_source_nothing_ood_is_written(tmp_path):
    r = _runner(tmp_path)
    built = r.run("build")
    r.run("extract")
    assert not any(k.startswith("ood_") for k in built)
    assert not r.layout.ood_trajectories.exists() and not r.layout.ood_splits.exists()
    assert not list(r.layout.candidates_dir.glob("ood_*"))
    assert ood_rows(r.context(), "ood_test") == []


def test_dropping_ood_source_removes_the_previous_runs_ood_outputs(tmp_path):
    with_ood = _runner(tmp_path, *OOD)
    with_ood.run("build")
    with_ood.run("extract")
    assert with_ood.layout.candidates("ood_test").exists()
    without = _runner(tmp_path)
    without.run("build")
    without.run("extract")
    assert not without.layout.ood_trajectories.exists()
    assert not list(without.layout.candidates_dir.glob("ood_*"))


def test_ood_ids_shared_with_the_main_domain_are_refused(tmp_path):
    from pivotrl_nemo.domains.toy import ToyDomain
    from pivotrl_nemo.registry import DOMAINS

    DOMAINS.add("toy_twin", type("ToyTwin", (ToyDomain,), {}))  # another name, the same 'toy/<i>' ids
    try:
        r = _runner(tmp_path, "data.source=toy", "data.ood_source=toy_twin")
        with pytest.raises(ConfigError, match="config key 'data.ood_source': .* also ids of data.source='toy'"):
            r.run("build")
    finally:
        DOMAINS.remove("toy_twin")


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.ood_source=nosuch"], "config key 'data.ood_source': unknown domain 'nosuch'"),
        (["data.ood_source=toyy"], "(did you mean 'toy'?)"),
        (["data.ood_source=bfcl"], "config key 'data.ood_source': must differ from data.source"),
        (
            ["data.ood_split_fractions={sft: 0.7, test: 0.2}"],
            "config key 'data.ood_split_fractions': fractions must sum",
        ),
        (["++data.ood_split_fractions.val=0"], "config key 'data.ood_split_fractions': only 'sft' and"),
        (["data.ood_max_trajectories=-1"], "config key 'data.ood_max_trajectories': must be >= 0, got -1"),
    ],
)
def test_bad_ood_config_is_refused_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(overrides)
    assert message in str(e.value)


def test_ood_config_defaults_and_a_valid_choice_load():
    d = load_config([]).data
    assert d.ood_source == "" and d.ood_split_fractions == {"sft": 0.7, "test": 0.3} and d.ood_max_trajectories == 0
    assert load_config(OOD).data.ood_source == "toy"
