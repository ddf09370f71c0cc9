"""Human-readable output (rich tables). JSON comes from the result objects themselves."""
from __future__ import annotations

from rich.markup import escape
from rich.table import Table


def _add(t: Table, *cells) -> None:
    t.add_row(*(escape(str(c)) for c in cells))


def _g(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def _short(module: str, coord) -> str:
    """``model.layers.11.mlp.down_proj.weight`` -> ``mlp.down_proj`` (the layer has its own column)."""
    tail = module.split(f".{coord.layer}.", 1)[-1].removesuffix(".weight")
    return tail if coord.expert is None else f"{tail}[{coord.expert}]"


def _effect(f) -> str:
    e = f.effect
    if e is None:
        return "-"
    return f"KL {e.kl:.3g}, ppl {e.ppl_intact:.3g}->{e.ppl:.3g}"


def _control(f) -> str:
    e = f.effect
    if e is None or e.control is None:
        return "-"
    return f"[{e.control.row},{e.control.col}] KL {e.control_kl:.2g}"


def print_detect(console, result, agreement, index_id, verbose: bool = False) -> None:
    console.print(f"[bold]{result.model}[/bold]  ({result.architecture}, {result.num_layers} layers, "
                  f"{result.rounds} round(s), probe perplexity {result.probe_ppl:.4g})")
    if result.super_weights:
        t = Table(title="super weights (row = output channel, col = input channel)", title_justify="left")
        for col in ("layer", "module", "row", "col", "value", "input act", "output act", "token", "zeroing it alone", "control"):
            t.add_column(col, justify="left" if col in ("module", "zeroing it alone", "control") else "right")
        for f in result.super_weights:
            _add(t, str(f.coord.layer), _short(f.module, f.coord), str(f.coord.row), str(f.coord.col), _g(f.value),
                      _g(f.input_activation), _g(f.output_activation), str(f.token), _effect(f), _control(f))
        console.print(t)
    else:
        console.print("no super weight found: no down-projection spike survived the ablation test")
    if result.super_activation:
        sa = result.super_activation
        console.print(f"super activation: residual channel {sa['channel']}, max |h| {max(sa['max_per_layer']):.4g}")
    if result.rejected:
        t = Table(title="examined and rejected", title_justify="left")
        for col in ("layer", "row", "col", "value", "output act", "reason"):
            t.add_column(col, justify="left" if col == "reason" else "right")
        for f in result.rejected:
            _add(t, str(f.coord.layer) + ("" if f.coord.expert is None else f" e{f.coord.expert}"), str(f.coord.row),
                      str(f.coord.col), _g(f.value), _g(f.output_activation), f.reason or "")
        console.print(t)
    if agreement:
        console.print(f"index ({agreement['source']}, {agreement['model']}): {agreement['status']}"
                      + (f"; only detected: {', '.join(agreement['only_detected'])}" if agreement["only_detected"] else "")
                      + (f"; only in index: {', '.join(agreement['only_in_index'])}" if agreement["only_in_index"] else ""))
    elif index_id:
        console.print(f"index: no entry for {index_id}")
    if verbose:
        t = Table(title="per-layer spikes (round 1)", title_justify="left")
        for col in ("layer", "max |X|", "in channel", "max |Y|", "out channel", "token"):
            t.add_column(col, justify="right")
        for r in result.layers:
            _add(t, str(r.layer) + ("" if r.expert is None else f" e{r.expert}"), _g(r.max_input),
                      str(r.input_channel), _g(r.max_output), str(r.output_channel), str(r.output_token))
        console.print(t)


def print_verify(console, name, verdicts, together=None) -> None:
    t = Table(title=f"verify: {name}", title_justify="left")
    for col in ("coordinate", "value", "super weight?", "KL", "probe ppl", "control KL", "spike", "why not"):
        t.add_column(col, justify="left" if col == "why not" else "right")
    for v in verdicts:
        _add(t, str(v.coord), _g(v.value), "yes" if v.is_super_weight else "no", _g(v.effect.kl, 3),
             f"{v.effect.ppl_intact:.3g}->{v.effect.ppl:.3g}", _g(v.effect.control_kl, 2), "yes" if v.spike else "no",
             v.reason or "")
    console.print(t)
    if together:
        e = together["effect"]
        console.print(escape(
            f"all {len(together['coords'])} zeroed together: KL {e['kl']:.3g}, probe ppl {e['probe_ppl_intact']:.3g}->"
            f"{e['probe_ppl']:.3g} -> {'a super-weight set' if together['is_super_weight_set'] else 'not a super-weight set'}"
            + (f" ({together['reason']})" if together.get("reason") else "")))


def print_index(console, entries) -> None:
    t = Table(title="known super weights (layer, row=output channel, col=input channel)", title_justify="left")
    for col in ("model", "super weights", "source", "note"):
        t.add_column(col)
    for e in entries:
        _add(t, e.model, "; ".join(f"{c.layer} [{c.row}, {c.col}]" for c in e.super_weights), e.source, e.note or "")
    console.print(t)
