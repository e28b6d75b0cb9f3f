"""Packing prompt + action token sequences into right-padded batches with loss masks.

The micro-batch format of ``MegatronPolicy.forward_backward`` (which gathers the hidden states
at the loss positions with ``gather_hidden``); the SFT and GRPO steps build these batches.

Position t of a sequence predicts token t+1, so the loss positions of an action occupying
tokens [p, L) are t in [p-1, L-2]. Only those positions are gathered before the lm head: a
batch never materialises [batch x seq x vocab] logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # [B, S] long, right-padded
    loss_index: torch.Tensor  # [N, 2] (batch, position) of every loss position, row-major
    targets: torch.Tensor  # [N] the token each loss position predicts
    seq_of_token: torch.Tensor  # [N] which sequence (0..B-1) each loss position belongs to
    lengths: torch.Tensor | None = None  # [B] unpadded length of each sequence

    def padding_mask(self) -> torch.Tensor | None:
        """[B, S] True at right-padding positions (None when lengths are unknown)."""
        if self.lengths is None:
            return None
        return torch.arange(self.input_ids.shape[1]).unsqueeze(0) >= self.lengths.unsqueeze(1)

    @property
    def num_tokens(self) -> int:
        return int(self.targets.numel())


def make_batch(
    prompts: list[list[int]], actions: list[list[int]], pad_id: int, action_masks: list[list[int]] | None = None
) -> TokenBatch:
    """Right-pad prompt+action sequences; loss positions are the action tokens (optionally
    restricted by a per-action 0/1 mask, e.g. to drop a truncated action)."""
    seqs = [p + a for p, a in zip(prompts, actions)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    idx, tgt, owner = [], [], []
    for b, (p, a) in enumerate(zip(prompts, actions)):
        s = p + a
        ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        keep = action_masks[b] if action_masks is not None else [1] * len(a)
        for j, tok in enumerate(a):
            if keep[j]:
                idx.append((b, len(p) + j - 1))
                tgt.append(tok)
                owner.append(b)
    return TokenBatch(
        input_ids=ids,
        loss_index=torch.tensor(idx, dtype=torch.long).reshape(-1, 2),
        targets=torch.tensor(tgt, dtype=torch.long),
        seq_of_token=torch.tensor(owner, dtype=torch.long),
        lengths=torch.tensor([len(s) for s in seqs], dtype=torch.long),
    )


def gather_hidden(hidden: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    """[B, S, H] hidden states -> [N, H] at the loss positions."""
    idx = batch.loss_index.to(hidden.device)
    return hidden[idx[:, 0], idx[:, 1]]


def chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]
