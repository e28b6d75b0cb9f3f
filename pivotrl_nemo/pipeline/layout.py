"""``RunLayout``: every path under ``run_dir``, in one place.

Stages, commands and the report read and write the run directory only through these
properties, so renaming an output is a one-line change here. Layout::

    config.yaml                      the resolved configuration of the last stage run
    pivotrl.log                      the log of every command (rank 0)
    .stages/<stage>.json             markers: fingerprint, seconds, summary (pipeline.runner)
    data/trajectories.jsonl          build: expert trajectories
    data/splits.json                 build: trajectory id -> split
    data/ood_trajectories.jsonl, data/ood_splits.json   build: the data.ood_source family (when set)
    tokenizer/                       build: the domain BPE (model.tokenizer_vocab_size > 0)
    candidates/<split>.jsonl         extract: one pivot row per assistant turn (+ ood_sft, ood_test)
    <pivot file>.jsonl.idx           next to every pivot file a stage writes: its byte-offset index
    sft/checkpoint/, sft/metrics.jsonl                  sft: pi_0
    profile/profile_log.jsonl, profile/shards/, profile/profiled.jsonl   profile
    pivots.jsonl, filter_summary.json                   filter
    train/checkpoint/, train/metrics.jsonl              train
    eval/results.json                                   eval
    report.md, report.json, plots/*.png                 report
    vllm_model/                      the config + tokenizer folder vLLM is started from
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory (nothing is created by constructing it)."""

    root: Path

    @classmethod
    def of(cls, run_dir: str | Path) -> RunLayout:
        return cls(Path(run_dir))

    # -------------------------------------------------------------------- the run itself
    @property
    def config_yaml(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log_file(self) -> Path:
        return self.root / "pivotrl.log"

    @property
    def markers(self) -> Path:
        return self.root / ".stages"

    def marker(self, stage: str) -> Path:
        return self.markers / f"{stage}.json"

    def state_dir(self, name: str) -> Path:
        """A stage's resumable state directory (``Stage.state_dirs`` names them)."""
        return self.root / name

    # -------------------------------------------------------------------- build / extract
    @property
    def trajectories(self) -> Path:
        return self.root / "data" / "trajectories.jsonl"

    @property
    def splits(self) -> Path:
        return self.root / "data" / "splits.json"

    @property
    def ood_trajectories(self) -> Path:
        """The out-of-domain family's trajectories (``data.ood_source``)."""
        return self.root / "data" / "ood_trajectories.jsonl"

    @property
    def ood_splits(self) -> Path:
        """OOD trajectory id -> 'sft' / 'test'."""
        return self.root / "data" / "ood_splits.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def candidates_dir(self) -> Path:
        return self.root / "candidates"

    def candidates(self, split: str) -> Path:
        return self.candidates_dir / f"{split}.jsonl"

    # -------------------------------------------------------------------- sft / profile / filter
    @property
    def sft_dir(self) -> Path:
        return self.root / "sft"

    @property
    def sft_checkpoint(self) -> Path:
        return self.sft_dir / "checkpoint"

    @property
    def profile_dir(self) -> Path:
        return self.root / "profile"

    @property
    def profile_log(self) -> Path:
        return self.profile_dir / "profile_log.jsonl"

    @property
    def profile_shards(self) -> Path:
        return self.profile_dir / "shards"

    @property
    def profiled(self) -> Path:
        return self.profile_dir / "profiled.jsonl"

    @property
    def pivots(self) -> Path:
        return self.root / "pivots.jsonl"

    @property
    def filter_summary(self) -> Path:
        return self.root / "filter_summary.json"

    # -------------------------------------------------------------------- train / eval / report
    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def train_checkpoint(self) -> Path:
        return self.train_dir / "checkpoint"

    def checkpoint(self, which: str) -> Path:
        """The checkpoint root of stage ``which`` ('sft' or 'train')."""
        return self.root / which / "checkpoint"

    @property
    def eval_results(self) -> Path:
        return self.root / "eval" / "results.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def vllm_model(self) -> Path:
        return self.root / "vllm_model"
