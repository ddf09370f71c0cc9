"""How removing super weights shifts the next-token distribution (the paper's Figure 5).

Average the next-token distribution over prompts (LAMBADA passages with the last word
removed, by default), once intact and once under an intervention, and list the tokens
whose mean probability moved most. The paper: without the super weight Llama-7B puts
twice the mass on "the", 5x on "." and 10x on ",".
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable

import torch

from superweight.models.load import LoadedModel
from superweight.probe.tokens import tokens


@dataclass
class TokenShift:
    token_id: int
    token: str
    before: float  # mean probability, intact
    after: float  # mean probability under the intervention
    ratio: float  # after / before

    def to_dict(self) -> dict:
        return {"token_id": self.token_id, "token": self.token, "before": self.before, "after": self.after,
                "ratio": self.ratio}


BATCH = 8  # contexts per group, similar lengths together (little padding)


@torch.no_grad()
def mean_next_token(lm: LoadedModel, contexts: list[str], progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """[V] mean over contexts of the next-token distribution after each one: batches of
    ``BATCH`` contexts of similar length, right-padded, through ``passes.run`` with the head
    at each row's last real token only (``Group(last=True)``)."""
    from superweight.probe.passes import Group, run, stack

    enc = [torch.tensor(tokens(lm.tokenizer, text, special=True)) for text in contexts]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    groups = []
    for at in range(0, len(order), BATCH):
        ids, mask = stack([enc[i] for i in order[at: at + BATCH]])
        groups.append(Group(ids.to(lm.device), mask.to(lm.device), last=True))
    total, done = None, 0
    for at in range(0, len(groups), 4):  # a few groups per call, so the progress bar moves
        for ans in run(lm, groups[at: at + 4], reduce=lambda lp: lp.exp().sum(0)):
            total = ans.value if total is None else total + ans.value
        done = min(len(enc), (at + 4) * BATCH)
        if progress:
            progress(done)
    return total / len(contexts)


def shift(lm: LoadedModel, contexts: list[str], intervention: Callable[[], AbstractContextManager],
          top: int = 10, progress: Callable[[int], None] | None = None) -> list[TokenShift]:
    """The ``top`` tokens whose mean next-token probability moved most (by absolute change)
    between the intact model and the model under ``intervention()``."""
    from superweight.progress import expect

    if not contexts:
        raise ValueError("no contexts")
    expect(2 * -(-len(contexts) // BATCH))  # the groups of both passes over the contexts: one percent
    before = mean_next_token(lm, contexts, progress)
    with intervention():
        after = mean_next_token(lm, contexts, progress)
    order = (after - before).abs().argsort(descending=True)[:top]
    out = []
    for t in order.tolist():
        b, a = float(before[t]), float(after[t])
        out.append(TokenShift(t, lm.tokenizer.decode([t]), b, a, a / b if b > 0 else float("inf")))
    return out
