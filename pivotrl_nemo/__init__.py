"""pivotrl_nemo: PivotRL (arXiv 2603.21383) on megatron-core, transformers, vLLM and Triton.

Turn expert tool-use trajectories into turn-level RL: extract candidates, profile them with a
frozen reference policy, keep the pivots, and run GRPO with one-turn rollouts scored by
functional verifiers.
"""

__version__ = "0.1.0"
