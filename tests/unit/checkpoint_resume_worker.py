"""Driver for test_checkpoint_resume.py: ``python checkpoint_resume_worker.py RUN_DIR [overrides]``
runs the real train stage (the ``train`` stage: megatron policy from pi_0, HF rollouts, BFCL
verifier, GRPO, dist checkpoints) on a run directory that already holds pi_0 and pivots.jsonl.
It resumes from ``train/checkpoint`` when there is one, and exits 143 after a SIGTERM checkpoint
(130 after a SIGINT one) as the CLI does."""

import sys


def main(run_dir: str, overrides: list[str]) -> int:
    from pivotrl_nemo.config import load_config
    from pivotrl_nemo.pipeline import STAGES, Runner
    from pivotrl_nemo.utils.logging import configure_logging
    from pivotrl_nemo.utils.preemption import Preempted

    cfg = load_config([*overrides, f"run_dir={run_dir}"])
    configure_logging(cfg.log_level)
    try:
        STAGES.get("train").fn(Runner(cfg).context())
    except Preempted as e:
        return e.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2:]))
