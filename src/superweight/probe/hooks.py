"""Hooks over down projections: see X and Y of each, record its spike (edits: interventions.py).

Dense down projections are plain modules, so a forward hook sees X (``[B, T, in]``) and
Y (``[B, T, out]``). Mixture-of-experts layers in transformers keep all experts in one
3-D parameter and call ``F.linear`` on a slice per expert; there a ``TorchFunctionMode``,
active only while the experts module runs, sees each of those calls and tells the
experts apart by which slice of the fused down projection is passed (the parameters are
the adapter's to name: ``Adapter.expert_params``). Token positions of routed
rows come from the router's choices the experts module is given (``top_k_index``), in the
order transformers' experts loop uses; where a module is not given them, by matching the
expert's input rows against the tokens entering it (exact copies).
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from superweight.models.adapters import Adapter, Site
from superweight.probe.records import SiteRecord  # made here, defined there (torch-free)


@contextmanager
def hooked(handles: list):
    """The one way hooks are held: the block runs with ``handles`` (hook handles registered
    before it, or appended inside it) and each is removed when it ends, however it ends."""
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()


def summarize(site: Site, x: torch.Tensor, y: torch.Tensor, tokens: torch.Tensor, zeroed=()) -> SiteRecord:
    """x: [N, in], y: [N, out] for N tokens whose prompt positions are ``tokens``.
    ``zeroed``: (row, col) pairs of the weight to count as zero (ablated by subtraction)."""
    x = x.detach().float()
    y = y.detach().float()
    ax, ay = x.abs(), y.abs()
    i_flat = int(ax.argmax())
    o_flat = int(ay.argmax())
    ti, ki = divmod(i_flat, x.shape[1])
    to, row = divmod(o_flat, y.shape[1])
    w_row = site.weight()[row].detach().float()  # [in]
    contrib = x[to] * w_row  # [in]
    for r, c in zeroed:
        if r == row:
            contrib[c] = 0.0
    col = int(contrib.abs().argmax())
    y_val = float(y[to, row])
    share = float(contrib[col]) / y_val if y_val != 0 else 0.0
    return SiteRecord(
        layer=site.layer, expert=site.expert, path=site.path,
        max_input=float(ax.view(-1)[i_flat]), input_token=int(tokens[ti]), input_channel=ki,
        max_output=float(ay.view(-1)[o_flat]), output_token=int(tokens[to]), output_channel=row,
        output_value=y_val, col=col, weight=float(w_row[col]), x_col=float(x[to, col]), share=share,
    )


def routed_tokens(top_k_index: torch.Tensor, expert: int) -> torch.Tensor:
    """Flattened token indices of the rows an expert is given, in the order transformers'
    experts loop passes them (``torch.where`` over [slot, token]: by top-k slot, then token)."""
    _, tok = torch.where((top_k_index.reshape(-1, top_k_index.shape[-1]) == expert).T)
    return tok


class _ExpertCalls(TorchFunctionMode):
    """Sees the per-expert F.linear calls inside one fused-experts module and passes each
    down projection's (expert, X, Y, flattened token indices) to ``on_down``."""

    def __init__(self, down: torch.Tensor, inputs: list[torch.Tensor], hidden: torch.Tensor, top_k_index, on_down,
                 strict: bool):
        super().__init__()
        self.strict = strict
        self.down, self.inputs = down, inputs  # the module's parameters (``Adapter.expert_params``)
        self.hidden = hidden  # [N, D] tokens entering the experts module (flattened)
        self.top_k_index = top_k_index  # [N, k] the router's choices, when the module is given them
        self.on_down = on_down
        self.tokens: dict[int, torch.Tensor] = {}

    def _expert_of(self, w: torch.Tensor, param: torch.Tensor) -> int | None:
        if not isinstance(w, torch.Tensor) or w.dim() != 2 or param.dim() != 3:
            return None
        if w.untyped_storage().data_ptr() != param.untyped_storage().data_ptr():
            return None
        return (w.storage_offset() - param.storage_offset()) // param.stride(0)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.linear and len(args) >= 2:
            x, w = args[0], args[1]
            e = self._expert_of(w, self.down)
            if e is not None:
                tok = self.tokens.get(e)
                if tok is None or tok.shape[0] != x.shape[0]:
                    tok = torch.full((x.shape[0],), -1)
                self.on_down(e, x, out, tok)
            else:
                for p in self.inputs:
                    if (e := self._expert_of(w, p)) is not None:
                        tok = routed_tokens(self.top_k_index, e) if self.top_k_index is not None else None
                        if tok is None or tok.shape[0] != x.shape[0] or not torch.equal(self.hidden[tok], x):
                            # rows of x are copies of rows of self.hidden: find which (the
                            # first match: exact for one prompt, not for a batch that repeats
                            # one, so ``strict`` leaves the rows unknown, -1)
                            eq = (x[:, None, :] == self.hidden[None, :, :]).all(-1)
                            tok = torch.full((x.shape[0],), -1) if self.strict else eq.float().argmax(-1)
                        self.tokens[e] = tok
                        break
        return out


@contextmanager
def watch(adapter: Adapter, fn, sites=None, strict: bool = False) -> Iterator[None]:
    """Call ``fn(site, x [N, in], y [N, out], tokens [N])`` for every down projection that runs
    inside the block, ``tokens`` being each row's index into the flattened [B * T] batch
    (-1 where unknown). ``fn`` may change ``y`` in place: the model goes on with it.
    ``sites``: only these (default: all). ``strict``: an expert's rows are named only from
    the router's choices, never by matching values (ambiguous in a batch). Fused experts
    run in transformers' eager loop while watched, so each expert's rows can be seen."""
    sites = adapter.sites if sites is None else sites
    handles = []
    with ExitStack() as stack:
        experts_modules = {}
        for site in sites:
            if site.expert is None:
                def hook(mod, inp, out, site=site):
                    x = inp[0].reshape(-1, inp[0].shape[-1])
                    y = out.reshape(-1, out.shape[-1])
                    fn(site, x, y, torch.arange(x.shape[0]))
                    if y.data_ptr() != out.data_ptr():  # reshape copied: hand the edited copy on
                        return y.view(out.shape)
                handles.append(site.module.register_forward_hook(hook))
            else:
                experts_modules.setdefault(id(site.module), (site.module, {}))[1][site.expert] = site
        for mod, by_expert in experts_modules.values():
            cfg = getattr(mod, "config", None)
            if cfg is not None and hasattr(cfg, "_experts_implementation"):
                old = cfg._experts_implementation
                cfg._experts_implementation = "eager"
                stack.callback(setattr, cfg, "_experts_implementation", old)
            state = {}

            def pre(m, args, kwargs, by_expert=by_expert, state=state):
                hidden = args[0] if args else kwargs["hidden_states"]
                top_k = args[1] if len(args) > 1 else kwargs.get("top_k_index")
                top_k = top_k if isinstance(top_k, torch.Tensor) and top_k.dim() >= 2 else None

                def on_down(e, x, y, tokens):
                    if e in by_expert:
                        fn(by_expert[e], x, y, tokens)

                state["mode"] = _ExpertCalls(*adapter.expert_params(m), hidden.reshape(-1, hidden.shape[-1]), top_k,
                                             on_down, strict)
                state["mode"].__enter__()

            def post(m, args, out, state=state):
                state.pop("mode").__exit__(None, None, None)

            handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(mod.register_forward_hook(post))
        with hooked(handles):
            yield
