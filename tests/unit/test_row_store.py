"""Indexed JSONL (data/jsonl_index.py) and compact, sharded row loading (data/row_store.py):
byte-identical files, rows equal to ``json.loads`` of their lines, shards that partition the file
by the profile shards' hash, the same errors with and without an index, lazy rows only for
validated files, and the streaming filter / extract writing what the in-memory versions wrote."""

from __future__ import annotations

import json
import os
import random
from collections import Counter

import pytest

from pivotrl_nemo.algorithms.filtering import filter_pivots
from pivotrl_nemo.algorithms.profile_shards import shard_of, shard_rows
from pivotrl_nemo.algorithms.profiling import attach_profile
from pivotrl_nemo.config.schema import FilterConfig
from pivotrl_nemo.data.extract import extract_candidates
from pivotrl_nemo.data.jsonl_index import NO_SPAN, IndexedJsonlWriter, JsonlIndex, index_path, write_indexed_jsonl
from pivotrl_nemo.data.row_store import IndexedRows, PivotRows, load_pivot_rows
from pivotrl_nemo.pipeline.candidates import stream_candidates, write_candidates
from pivotrl_nemo.pipeline.stages.filter import filter_file
from pivotrl_nemo.utils.io import DataError, atomic_write_jsonl, dumps_row


def _tools(n: int, tag: str = "") -> list[dict]:
    return [
        {
            "type": "function",
            "name": f"tool_{i}{tag}",
            "description": f'Does thing {i} — ünïcode, "quotes" and a \\ backslash {tag}',
            "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
        }
        for i in range(n)
    ]


def _traj(tid: str, tools: list[dict], turns: int = 3, system: str | None = None) -> dict:
    msgs: list[dict] = [{"role": "system", "content": system}] if system else []
    msgs += [{"role": "user", "content": f'task {tid} with "tools": [] inside text'}]
    for t in range(turns):
        call = {
            "id": f"c{t}",
            "type": "function",
            "function": {"name": tools[t % len(tools)]["name"], "arguments": json.dumps({"x": t})},
        }
        msgs += [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{t}", "content": f"out {t}"},
        ]
    return {
        "id": tid,
        "tools": [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}} for t in tools],
        "messages": msgs,
        "domain": "generic",
    }


def _rows(n_traj: int = 12) -> list[dict]:
    rows: list[dict] = []
    for i in range(n_traj):
        system = f'Policy {i % 2}: be careful ✓ "quoted"\n' * 20 if i % 4 else None  # some without one
        rows += extract_candidates(_traj(f"traj{i}", _tools(5, tag=str(i % 3)), system=system), "rl", "tool_call_args")
    rows[4]["responses_create_params"].pop("tools")  # a row without tools (no span)
    return rows


def _lines(path) -> list[bytes]:
    return [line for line in open(path, "rb").read().split(b"\n") if line]


def test_writer_is_byte_identical_to_dumps_row_and_indexes_every_line(tmp_path):
    rows = _rows()
    p = tmp_path / "c.jsonl"
    assert write_indexed_jsonl(p, rows) == len(rows)
    assert p.read_bytes() == "".join(dumps_row(r) + "\n" for r in rows).encode()
    idx = JsonlIndex.load(p)
    assert idx is not None and len(idx) == len(rows) and not idx.validated
    for j, line in enumerate(_lines(p)):
        ts, te, ss, se = idx.spans(j)
        if j == 4:
            assert ts == te == NO_SPAN
        else:
            assert json.loads(line[ts:te]) == rows[j]["responses_create_params"]["tools"]
        first = rows[j]["responses_create_params"]["input"][0]
        if first["role"] == "system":
            assert json.loads(line[ss:se]) == first
        else:
            assert ss == se == NO_SPAN
        assert idx.linenos[j] == j + 1


def test_rows_equal_json_loads_and_share_one_parsed_tool_list(tmp_path):
    rows = _rows()
    p = tmp_path / "c.jsonl"
    write_indexed_jsonl(p, rows)
    got, skipped = load_pivot_rows(p)
    assert isinstance(got, PivotRows) and skipped == 0 and len(got) == len(rows)
    assert [dumps_row(r) for r in got] == [dumps_row(r) for r in rows]  # same keys, same order
    assert got[-1] == rows[-1] and got[2:5] == rows[2:5] and got.ids == [r["id"] for r in rows]
    assert got.distinct_shared_parts == 3 + 2  # three distinct tool lists, two system messages
    a, b = got[-1], got[-2]  # one trajectory: the same objects
    assert a["responses_create_params"]["tools"] is b["responses_create_params"]["tools"]
    assert a["responses_create_params"]["input"][0]["role"] == "system"
    assert a["responses_create_params"]["input"][0] is b["responses_create_params"]["input"][0]
    assert a["responses_create_params"]["input"][1] is not b["responses_create_params"]["input"][1]
    line_bytes = sum(len(x) for x in _lines(p)) / len(rows)
    assert got.nbytes() / len(rows) < line_bytes / 2


def test_shards_partition_the_file_by_the_profile_shard_hash(tmp_path):
    rows = _rows()
    p = tmp_path / "c.jsonl"
    write_indexed_jsonl(p, rows)
    seen: list[str] = []
    for i in range(4):
        part, _ = load_pivot_rows(p, shard=(i, 4))
        assert isinstance(part, PivotRows)
        assert all(shard_of(rid, 4) == i for rid in part.ids)
        assert [r["id"] for r in shard_rows(rows, i, 4)] == part.ids  # the in-memory shard, same order
        seen += part.ids
    assert sorted(seen) == sorted(r["id"] for r in rows)


@pytest.mark.parametrize("indexed", [True, False])
def test_errors_and_skips_are_the_same_with_and_without_an_index(tmp_path, indexed):
    rows = _rows()
    p = tmp_path / "c.jsonl"
    bad = json.loads(json.dumps(rows[6]))
    bad["expected_action"]["name"] = 7
    if indexed:
        write_indexed_jsonl(p, [rows[0], rows[1], bad, rows[0]])
    else:
        atomic_write_jsonl(p, [rows[0], rows[1], bad, rows[0]])
    with pytest.raises(DataError, match=r"c.jsonl:3: expected_action.name: missing"):
        load_pivot_rows(p)
    ok, skipped = load_pivot_rows(p, skip_invalid=True)
    assert len(ok) == 2 and skipped == 2  # the bad row and the duplicate of line 1
    assert index_path(p).exists()  # built by the first scan when it was missing
    with open(p, "ab") as f:  # a torn, unparseable line: shard 0 owns it
        f.write(b'{"id": "x", \n')
    assert JsonlIndex.load(p) is None  # the file changed: the index is stale
    with pytest.raises(DataError, match=r"c.jsonl:5: <row>: not valid JSON"):
        load_pivot_rows(p, skip_invalid=False, shard=(0, 3))


def test_a_stale_span_falls_back_to_the_whole_line(tmp_path):
    rows = _rows()
    p = tmp_path / "c.jsonl"
    write_indexed_jsonl(p, rows)
    idx = JsonlIndex.load(p)
    assert idx is not None
    idx.tools_start[0] += 3  # spans pointing into the wrong bytes
    idx.system_end[len(rows) - 1] -= 2
    idx.save(p)
    got, _ = load_pivot_rows(p)
    assert got[0] == rows[0] and got[-1] == rows[-1]


def test_lazy_rows_only_for_a_fresh_validated_index(tmp_path):
    rows = _rows()
    p = tmp_path / "pivots.jsonl"
    write_indexed_jsonl(p, rows)
    assert isinstance(load_pivot_rows(p, lazy=True)[0], PivotRows)  # not validated: checked
    write_indexed_jsonl(p, rows, validated=True)
    lazy, _ = load_pivot_rows(p, lazy=True)
    assert isinstance(lazy, IndexedRows) and len(lazy) == len(rows)
    assert [lazy[j] for j in (5, 0, 5, len(rows) - 1)] == [rows[5], rows[0], rows[5], rows[-1]]
    assert lazy[1:3] == rows[1:3] and lazy.nbytes() < 100 * len(rows) + 4000
    os.utime(p, ns=(1, 1))  # touched: the index no longer vouches for the file
    assert isinstance(load_pivot_rows(p, lazy=True)[0], PivotRows)


def test_a_file_replaced_under_its_index_is_never_read_with_it(tmp_path):
    rows = _rows()
    p, other = tmp_path / "pivots.jsonl", tmp_path / "other.jsonl"
    write_indexed_jsonl(p, rows, validated=True)
    lazy, _ = load_pivot_rows(p, lazy=True)
    assert isinstance(lazy, IndexedRows)
    swapped = [{**r, "id": r["id"][::-1]} for r in rows]  # same size, other rows
    atomic_write_jsonl(other, swapped)
    st = os.stat(p)
    assert os.stat(other).st_size == st.st_size
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only the inode differs
    os.replace(other, p)
    assert JsonlIndex.load(p) is None
    assert list(lazy[:]) == rows  # rows opened before the swap keep reading the file they checked
    again, _ = load_pivot_rows(p, lazy=True)
    assert isinstance(again, PivotRows) and list(again[:]) == swapped  # scanned, not trusted
    lazy.close()


def test_an_aborted_writer_publishes_nothing(tmp_path):
    p = tmp_path / "c.jsonl"
    write_indexed_jsonl(p, _rows(3))
    before = p.read_bytes()
    with pytest.raises(RuntimeError), IndexedJsonlWriter(p) as w:
        w.write(_rows(3)[0])
        raise RuntimeError("interrupted")
    assert p.read_bytes() == before and JsonlIndex.load(p) is not None
    assert not list(tmp_path.glob("*.tmp.*"))


def test_streaming_filter_writes_what_the_list_filter_kept(tmp_path):
    rows = _rows()
    profiled = []
    for j, r in enumerate(rows):
        rewards = [1.0] * (j % 5) + [0.0] * (4 - j % 5)
        mean = sum(rewards) / 4
        profiled.append(
            attach_profile(
                r,
                {
                    "k": 4,
                    "rewards": rewards,
                    "mean": mean,
                    "variance": mean * (1 - mean),
                    "categories": ["x"] * 4,
                    "policy_id": "p",
                },
            )
        )
    src, dst = tmp_path / "profiled.jsonl", tmp_path / "pivots.jsonl"
    write_indexed_jsonl(src, profiled, validated=True)
    cfg = FilterConfig(lambda_diff=0.7)
    summary, means = filter_file(src, dst, cfg)
    kept, expected = filter_pivots(profiled, cfg)
    assert summary == expected and 0 < summary["pivots"] < len(rows)
    assert dst.read_bytes() == "".join(dumps_row(r) + "\n" for r in kept).encode()
    assert means == [p["pass_rate"] for p in profiled]
    lazy, _ = load_pivot_rows(dst, lazy=True)
    assert isinstance(lazy, IndexedRows) and list(lazy[:]) == kept


def test_filter_rewrites_lines_the_pipeline_did_not_write(tmp_path):
    rows = [
        attach_profile(
            r,
            {"k": 2, "rewards": [1.0, 0.0], "mean": 0.5, "variance": 0.25, "categories": ["x", "y"], "policy_id": "p"},
        )
        for r in _rows(4)
    ]
    src, dst = tmp_path / "profiled.jsonl", tmp_path / "pivots.jsonl"
    src.write_bytes(b"".join(json.dumps(r, indent=None, separators=(",", ":")).encode() + b"\r\n" for r in rows))
    summary, _ = filter_file(src, dst, FilterConfig(lambda_diff=0.9))
    assert summary["pivots"] == len(rows)
    assert dst.read_bytes() == "".join(dumps_row(r) + "\n" for r in rows).encode()


def test_random_turns_picks_what_random_sample_picked():
    from pivotrl_nemo.pipeline.compare.arms import random_turns

    rows = [{"id": str(i)} for i in range(300)]
    for n, seed in ((5, 0), (250, 3), (400, 1)):
        assert random_turns(rows, n, seed) == random.Random(seed).sample(rows, min(n, len(rows)))


def test_streamed_extract_writes_what_the_list_extract_wrote(tmp_path):
    trajs = [_traj(f"t{i}", _tools(4, tag=str(i % 2)), turns=1 + i % 3) for i in range(9)]
    tpath, spath = tmp_path / "trajectories.jsonl", tmp_path / "splits.json"
    atomic_write_jsonl(tpath, trajs)
    assignment = {t["id"]: ("rl" if i % 3 else "test") for i, t in enumerate(trajs)}
    spath.write_text(json.dumps(assignment))
    summary = write_candidates(
        stream_candidates(tpath, spath, ["rl", "test", "val"], "", "tool_call_args"), lambda s: tmp_path / f"{s}.jsonl"
    )
    for split in ("rl", "test", "val"):
        want = [
            r for t in trajs if assignment[t["id"]] == split for r in extract_candidates(t, split, "tool_call_args")
        ]
        assert (tmp_path / f"{split}.jsonl").read_bytes() == "".join(dumps_row(r) + "\n" for r in want).encode()
        assert summary[split] == {
            "candidates": len(want),
            "by_action_type": dict(Counter(r["expected_action"]["type"] for r in want)),
        }


def test_the_prompt_cache_is_bounded_and_keeps_what_is_reused(monkeypatch):
    from pivotrl_nemo.algorithms import rollouts

    rendered: list[str] = []

    def render(view, tokenizer, data_cfg):
        rendered.append(view.id)
        return [len(view.id), 7]

    monkeypatch.setattr(rollouts, "render_prompt_ids", render)
    monkeypatch.setattr(rollouts, "PROMPT_CACHE_ROWS", 2)
    sampler = rollouts.TurnSampler(engine=None, tokenizer=None, data_cfg=None, verifier=None)  # type: ignore[arg-type]
    for rid in ("a", "bb", "a", "ccc", "a", "bb"):
        assert sampler.prompt_ids({"id": rid}) == [len(rid), 7]
    # "a" stays (used again before each eviction); "bb" was dropped for "ccc" and rendered again
    assert rendered == ["a", "bb", "ccc", "bb"] and len(sampler._prompt_cache) == 2
