"""Worker for test_pivotrl_layouts.py: the real ``train`` stage (rollouts on the HF engine fed by
the gathered weights, BFCL verifier, GRPO steps, checkpoints) on a prepared run directory, at
whatever layout the overrides and the launch give (python for 1 rank, torchrun for 2)."""

import sys


def main(run_dir: str, *overrides: str) -> None:
    from pivotrl_nemo.pipeline import STAGES, Runner
    from pivotrl_nemo.config import load_config

    cfg = load_config(["experiment=tiny", f"run_dir={run_dir}", *overrides])
    STAGES.get("train").fn(Runner(cfg).context())


if __name__ == "__main__":
    main(*sys.argv[1:])
