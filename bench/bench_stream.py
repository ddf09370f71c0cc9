"""Checkpoints larger than memory: synthetic full-size Llama-2 shapes, streamed.

Writes a synthetic checkpoint (bf16 safetensors shards with an index; random weights, std
0.02; one planted super weight in layer 2: W_down[row, col] = 1.5, with the gate and up rows
of ``col`` scaled 40x so that its input activation is massive, and the output head's column
``row`` at std 0.5 so that predictions depend on the super activation, as in real models),
then measures, each command as a fresh process (wall time, peak RSS from
``os.wait4``) that starts with the checkpoint evicted from the page cache, side by side in
one run:

- 13b: ``cat`` of the shards to /dev/null (reading the bytes once) against
  ``superweight detect DIR --stream``, and against two streamed forward passes on one
  token (what detection reads, without its compute);
- moe: the same three on a mixture of experts stored one tensor per expert, as on the
  hub (Qwen1.5-MoE-A2.7B's shape, 28.6 GB; the super weight planted in routed expert 7),
  whose layers are fused expert by expert as they are read;
- 7b: the in-memory path (transformers ``from_pretrained`` plus one forward with hooks on
  every down projection) and the same detection with the model loaded whole
  (``--no-stream``) against ``superweight detect DIR --stream``; and
  ``superweight quantize DIR --stream`` against ``cat`` of the shards into one file on the
  same disk (reading plus writing the bytes once).

    python bench/bench_stream.py --shape 13b 7b --dir /var/tmp/sw-bench [--write docs/benchmarks.md]
    python bench/bench_stream.py --shape moe --dir /var/tmp/sw-bench
    python bench/bench_stream.py --shape small moe-small   # 4-layer checks of the recipes, seconds
    python bench/bench_stream.py --shape 7b --only quantize # the copy and the quantize rows only

Free disk is checked first; the run stops with one line if there is not enough.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

VOCAB = 32000
SW_LAYER, SW_VALUE, BOOST, HEAD = 2, 1.5, 40.0, 0.5
SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40),
    "small": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8),
}
# Mixture of experts, stored one tensor per expert as on the hub: Qwen1.5-MoE-A2.7B's shape
# (14.3B parameters, 28.6 GB in bf16; 60 routed experts, 4 per token, and a shared expert).
MOE_SHAPES = {
    "moe": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, num_experts=60, num_experts_per_tok=4,
                moe_intermediate_size=1408, shared_expert_intermediate_size=5632, vocab_size=151936),
    "moe-small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_experts=8, num_experts_per_tok=2,
                      moe_intermediate_size=128, shared_expert_intermediate_size=512, vocab_size=VOCAB),
}
SW_EXPERT, ROUTE = 7, 0.9


def sw_coord(shape: str) -> tuple:
    if shape in MOE_SHAPES:
        s = MOE_SHAPES[shape]
        return SW_LAYER, 2533 % s["hidden_size"], 7890 % s["moe_intermediate_size"], SW_EXPERT
    s = SHAPES[shape]
    return SW_LAYER, 2533 % s["hidden_size"], 7890 % s["intermediate_size"]


def checkpoint_bytes(shape: str) -> int:
    if shape in MOE_SHAPES:
        s = MOE_SHAPES[shape]
        h, n, e = s["hidden_size"], s["num_hidden_layers"], s["num_experts"]
        per_layer = 4 * h * h + 3 * h + e * 3 * h * s["moe_intermediate_size"] + 3 * h * s["shared_expert_intermediate_size"] \
            + e * h + h + 2 * h
        return 2 * (n * per_layer + 2 * s["vocab_size"] * h + h)
    s = SHAPES[shape]
    h, i, n = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
    per_layer = 4 * h * h + 3 * h * i + 2 * h
    return 2 * (n * per_layer + 2 * VOCAB * h + h)


def _start(out: Path):
    """A fresh ``.partial`` sibling of ``out`` to write into, a seeded bf16 sampler and its generator."""
    import torch

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, std=0.02):
        return (torch.randn(*shape, generator=g, dtype=torch.bfloat16) * std).contiguous()
    return tmp, rnd, g


def _finish(tmp: Path, out: Path, cfg, weight_map: dict, total: int, vocab: int, h: int, rnd, row: int,
            embed=lambda e: e) -> None:
    """The last shard (embeddings, norm, and a head that reads the super activation's channel
    ``row``, as real models do), the index, config and tokenizer; then ``tmp`` becomes ``out``.
    ``embed``: applied to the sampled embeddings."""
    import torch
    from safetensors.torch import save_file

    name = f"model-{total:05d}-of-{total:05d}.safetensors"
    head = rnd(vocab, h)
    head[:, row] = rnd(vocab, std=HEAD)
    t = {"model.embed_tokens.weight": embed(rnd(vocab, h)), "lm_head.weight": head, "model.norm.weight": torch.ones(h, dtype=torch.bfloat16)}
    save_file(t, str(tmp / name), metadata={"format": "pt"})
    weight_map.update({key: name for key in t})
    size = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}))
    cfg.save_pretrained(tmp)
    _tokenizer().save_pretrained(tmp)
    os.replace(tmp, out)


def _mlp(rnd, h: int, inter: int, plant: bool, row: int, col: int) -> tuple:
    """(gate, up, down) of one MLP; ``plant``: the super weight at [row, col] with its input
    channel made massive (gate and up rows of ``col`` scaled ``BOOST``)."""
    gate, up, down = rnd(inter, h), rnd(inter, h), rnd(h, inter)
    if plant:
        gate[col] *= BOOST  # a massive input activation on channel col ...
        up[col] *= BOOST
        down[row, col] = SW_VALUE  # ... times the super weight
    return gate, up, down


def _write_layers(tmp: Path, n: int, h: int, rnd, mlp, layers_per_shard: int, qkv_bias: bool = False) -> tuple[dict, int]:
    """Decoder layers in shards of ``layers_per_shard``: norms and attention here, the rest from
    ``mlp(i, prefix) -> {name: tensor}``. Returns (weight_map, number of shards with the last)."""
    import torch
    from safetensors.torch import save_file

    weight_map = {}
    groups = [list(range(i, min(i + layers_per_shard, n))) for i in range(0, n, layers_per_shard)]
    total = len(groups) + 1
    for k, layers in enumerate(groups):
        t = {}
        for i in layers:
            p = f"model.layers.{i}."
            t[p + "input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
            t[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
            for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
                t[p + f"self_attn.{m}.weight"] = rnd(h, h)
            if qkv_bias:
                for m in ("q_proj", "k_proj", "v_proj"):
                    t[p + f"self_attn.{m}.bias"] = torch.zeros(h, dtype=torch.bfloat16)
            t.update(mlp(i, p))
        name = f"model-{k + 1:05d}-of-{total:05d}.safetensors"
        save_file(t, str(tmp / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in t})
        print(f"  wrote {name}", file=sys.stderr, flush=True)
    return weight_map, total


def write_checkpoint(shape: str, out: Path, layers_per_shard: int = 2) -> None:
    from transformers import LlamaConfig

    s = SHAPES[shape]
    h, inter, n = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
    cfg = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
                      num_key_value_heads=s["num_attention_heads"], dtype="bfloat16", **s)
    tmp, rnd, _ = _start(out)
    layer_, row, col = sw_coord(shape)

    def mlp(i, p):
        gate, up, down = _mlp(rnd, h, inter, i == layer_, row, col)
        return {p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up, p + "mlp.down_proj.weight": down}

    weight_map, total = _write_layers(tmp, n, h, rnd, mlp, layers_per_shard)
    _finish(tmp, out, cfg, weight_map, total, VOCAB, h, rnd, row)


def write_moe_checkpoint(shape: str, out: Path, layers_per_shard: int = 2) -> None:
    """Qwen2-MoE, one tensor per expert. The planted super weight is in routed expert
    ``SW_EXPERT`` of layer ``SW_LAYER`` (its gate and up rows of ``col`` boosted, as in the
    dense shapes); every token's embedding carries a shared direction u and that layer's
    router row for the expert reads u, so the expert is among every token's top-k."""
    import torch
    from transformers import Qwen2MoeConfig

    s = MOE_SHAPES[shape]
    h, n, e = s["hidden_size"], s["num_hidden_layers"], s["num_experts"]
    mi, si, vocab = s["moe_intermediate_size"], s["shared_expert_intermediate_size"], s["vocab_size"]
    cfg = Qwen2MoeConfig(max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False, intermediate_size=si,
                         num_key_value_heads=s["num_attention_heads"], decoder_sparse_step=1, dtype="bfloat16", **s)
    tmp, rnd, g = _start(out)
    u = torch.randn(h, generator=g)
    u = u / u.norm()
    layer_, row, col, expert = sw_coord(shape)

    def mlp(i, p):
        router = rnd(e, h)
        if i == layer_:
            router[expert] = (ROUTE * u).to(torch.bfloat16)
        t = {p + "mlp.gate.weight": router}
        for x in range(e):
            q = p + f"mlp.experts.{x}."
            gate, up, down = _mlp(rnd, h, mi, i == layer_ and x == expert, row, col)
            t[q + "gate_proj.weight"], t[q + "up_proj.weight"], t[q + "down_proj.weight"] = gate, up, down
        q = p + "mlp.shared_expert."
        t[q + "gate_proj.weight"], t[q + "up_proj.weight"], t[q + "down_proj.weight"] = rnd(si, h), rnd(si, h), rnd(h, si)
        t[p + "mlp.shared_expert_gate.weight"] = rnd(1, h)
        return t

    weight_map, total = _write_layers(tmp, n, h, rnd, mlp, layers_per_shard, qkv_bias=True)
    # every token carries u; a sampled embedding row's norm is about 0.9 at h=2048
    _finish(tmp, out, cfg, weight_map, total, vocab, h, rnd, row, embed=lambda x: (x.float() + 0.9 * u).to(torch.bfloat16))


def _tokenizer():
    """A BPE tokenizer with Llama-2's 32,000-token vocabulary size and BOS, trained here on the
    English text every Debian machine has (licences, copyright files, Python's standard
    library): no download needed, and about Llama-2's token counts on the probe sentences
    (11 to 19 tokens each, against 56 to 61 for a byte-level tokenizer, which would make
    every probe pass 4x the compute a real model needs)."""
    import glob

    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    files = [f for pattern in ("/usr/share/common-licenses/*", "/usr/share/doc/*/copyright", "/usr/lib/python3*/*.py")
             for f in sorted(glob.glob(pattern)) if os.path.isfile(f)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<s>", "</s>"], show_progress=False)
    tok.train(files, trainer)  # no files: the byte alphabet alone
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def run(cmd: list[str] | str, shell: bool = False, cold: Path | None = None) -> tuple[float, float, str]:
    """(wall s, peak RSS MiB, stdout) of a fresh process; ``cold``: evict this checkpoint first."""
    if cold is not None:
        evict(cold)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, shell=shell, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd if shell else ' '.join(cmd)} failed:\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 1024, out


PLAIN = r'''
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16).eval()
rec = {}
for i, layer in enumerate(model.model.layers):
    layer.mlp.down_proj.register_forward_hook(
        lambda m, inp, out, i=i: rec.__setitem__(i, (inp[0].abs().max().item(), out.abs().max().item())))
ids = AutoTokenizer.from_pretrained(sys.argv[1])("Apple Inc. is a worldwide tech company.", return_tensors="pt")["input_ids"]
with torch.no_grad():
    model(ids)
i = max(rec, key=lambda k: rec[k][1])
print(i, rec[i])
'''


# Detection's reads without its compute: a streamed model (bf16, as detection runs here) does
# the two forward passes detection needs on one token, so the time is loading and reading.
IO_FLOOR = r'''
import sys, torch
from superweight.models.load import load
lm = load(sys.argv[1], dtype="bfloat16", stream=True)
with torch.no_grad():
    for _ in range(2):
        lm.model(input_ids=torch.tensor([[1]]), use_cache=False)
print(len(lm.adapter.streamer.drop))
'''


def evict(d: Path) -> None:
    """Drop the checkpoint's pages from the page cache, so that every measurement starts
    cold: what is cached otherwise depends on what ran before (a `cat` of the 13B took 9 to
    48 s in earlier runs)."""
    os.sync()
    for f in d.glob("*.safetensors"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def shards(d: Path) -> str:
    return " ".join(str(p) for p in sorted(d.glob("*.safetensors")))


def detect_cmd(d: Path) -> list[str]:
    return [sys.executable, "-m", "superweight.cli", "detect", str(d), "--stream", "--dtype", "bfloat16", "--json", "-"]


def _dirname(shape: str) -> str:
    return f"qwen-moe-{shape}" if shape in MOE_SHAPES else f"llama2-{shape}"


def found(out: str, shape: str) -> bool:
    """The planted weight, graded super or strong (a random model's perplexity says little)."""
    res = json.loads(out)
    sws = res["super_weights"] + res.get("strong", [])
    return [(s["layer"], s["row"], s["col"]) + ((s["expert"],) if s.get("expert") is not None else ()) for s in sws] \
        == [sw_coord(shape)]


def bench(shape: str, root: Path, only: str | None = None) -> list[str]:
    d = root / _dirname(shape)
    need = 0 if d.is_dir() else checkpoint_bytes(shape)
    if shape == "7b":
        need += checkpoint_bytes(shape) * 2  # the quantized copy and the cat copy
    free = shutil.disk_usage(root).free
    if need > free * 0.95:
        raise SystemExit(f"bench_stream: {shape} needs {need / 1e9:.1f} GB free on {root}, there are {free / 1e9:.1f} GB")
    if not d.is_dir():
        t0 = time.perf_counter()
        print(f"writing the synthetic {shape} checkpoint to {d} ({checkpoint_bytes(shape) / 1e9:.1f} GB)", file=sys.stderr)
        # in a child process, so this one stays small (a fork copies its RSS into the children's peak)
        subprocess.run([sys.executable, __file__, "--generate", shape, str(d)], check=True)
        print(f"  {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    size = sum(p.stat().st_size for p in d.glob("*.safetensors"))
    rows = []
    L, R, C = sw_coord(shape)[:3]
    coord = ":".join(str(v) for v in sw_coord(shape))
    if shape in ("13b", "small", "moe", "moe-small") and only != "quantize":
        cat_w, cat_rss, _ = run(f"cat {shards(d)} > /dev/null", shell=True, cold=d)
        io_w, io_rss, io_out = run([sys.executable, "-c", IO_FLOOR, str(d)], cold=d)
        det_w, det_rss, out = run(detect_cmd(d), cold=d)
        rows.append(f"| {shape} ({size / 1e9:.1f} GB) | read the shards once (`cat`) | {cat_w:.0f} | {cat_rss:.0f} | |")
        rows.append(f"| {shape} | two streamed passes on one token (detection's reads, not its compute) | {io_w:.0f} | "
                    f"{io_rss:.0f} | {io_out.strip()} layers dropped from the page cache after use; {io_w / cat_w:.1f}x the read |")
        rows.append(f"| {shape} | `superweight detect --stream` | {det_w:.0f} | {det_rss:.0f} | "
                    f"found {coord}: {found(out, shape)}; {det_w / cat_w:.1f}x the read |")
    if shape in ("7b", "small") and only != "quantize":
        plain_w, plain_rss, plain_out = run([sys.executable, "-c", PLAIN, str(d)], cold=d)
        whole_w, whole_rss, whole_out = run([a if a != "--stream" else "--no-stream" for a in detect_cmd(d)], cold=d)
        det_w, det_rss, out = run(detect_cmd(d), cold=d)
        rows.append(f"| {shape} ({size / 1e9:.1f} GB) | in memory: `from_pretrained` + forward with hooks | {plain_w:.0f} | "
                    f"{plain_rss:.0f} | largest spike: layer {plain_out.split()[0] if plain_out else '?'} |")
        rows.append(f"| {shape} | in memory: `superweight detect --no-stream` (the same detection, model loaded whole) | "
                    f"{whole_w:.0f} | {whole_rss:.0f} | found {L}:{R}:{C}: {found(whole_out, shape)} |")
        rows.append(f"| {shape} | `superweight detect --stream` | {det_w:.0f} | {det_rss:.0f} | found {L}:{R}:{C}: "
                    f"{found(out, shape)}; {det_rss / plain_rss:.3f}x the memory, {det_w / plain_w:.2f}x the time |")
    if shape in ("7b", "small"):
        qout = root / f"llama2-{shape}-q4"
        copy = root / f"llama2-{shape}-copy.bin"
        shutil.rmtree(qout, ignore_errors=True)

        def copy_once() -> tuple[float, float]:
            w, rss, _ = run(f"cat {shards(d)} > {copy} && sync", shell=True, cold=d)
            copy.unlink()
            return w, rss

        quant = ["quantize", str(d), "--stream", "--dtype", "bfloat16", "--coords", f"{L}:{R}:{C}", "--bits", "4",
                 "--group-size", "128", "--out", str(qout)]
        # this machine's disk varies from minute to minute (a copy took 16 to 38 s within one
        # hour), so each quantize row is paired with a copy run just before it
        copies, done = [], []
        for what, extra in (("4-bit, group 128, super weight and massive-input columns held out", []),
                            ("the same, no massive-input columns (no forward pass)", ["--act-ratio", "0"]),
                            ("compressed-tensors, 4-bit packed, group 128" if shape == "7b" else
                             "compressed-tensors, 4-bit packed, group 32 (1,376 is no multiple of 128)",
                             ["--format", "compressed-tensors"] + ([] if shape == "7b" else ["--group-size", "32"]))):
            cp_w, cp_rss = copy_once()
            copies.append(cp_w)
            shutil.rmtree(qout, ignore_errors=True)
            q_w, q_rss, _ = run([sys.executable, "-m", "superweight.cli", *quant, *extra], cold=d)
            t0 = time.perf_counter()
            subprocess.run(["sync"])
            q_w += time.perf_counter() - t0  # the copy's row counts its sync too
            qsize = sum(p.stat().st_size for p in qout.glob("*.safetensors"))
            done.append((what, q_w, q_rss, qsize, cp_w))
        mean = statistics.mean(copies)
        rows.append(f"| {shape} | read + write the bytes once (`cat > file`, then `sync`), run just before each row "
                    f"below | {mean:.0f} (mean; {min(copies):.0f} to {max(copies):.0f}) | {cp_rss:.0f} | |")
        for what, q_w, q_rss, qsize, cp_w in done:
            rows.append(f"| {shape} | `superweight quantize --stream` ({what}) | {q_w:.0f} | {q_rss:.0f} | "
                        f"wrote {qsize / 1e9:.1f} GB; {q_w / cp_w:.2f}x the copy just before it ({cp_w:.0f} s), "
                        f"{q_w / mean:.2f}x the mean copy |")
        shutil.rmtree(qout, ignore_errors=True)
    return rows


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--generate":
        (write_moe_checkpoint if sys.argv[2] in MOE_SHAPES else write_checkpoint)(sys.argv[2], Path(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", nargs="+", choices=sorted(SHAPES) + sorted(MOE_SHAPES), default=["13b", "7b"])
    ap.add_argument("--dir", default="/var/tmp/superweight-bench", help="where the synthetic checkpoints go")
    ap.add_argument("--write", metavar="MD", help="append the table to this markdown file")
    ap.add_argument("--clean", action="store_true", help="delete the synthetic checkpoints afterwards")
    ap.add_argument("--only", choices=["quantize"], help="only the copy and quantize rows (7b, small)")
    args = ap.parse_args()
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["| shape | what | wall s | peak RSS MiB | notes |", "|---|---|---|---|---|"]
    for shape in args.shape:
        rows += bench(shape, root, args.only)
        if args.clean:
            shutil.rmtree(root / _dirname(shape), ignore_errors=True)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    head = (f"\n## Streaming checkpoints larger than memory ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
            f"{mem:.0f} GiB RAM, {platform.python_version()})\n\n`python bench/bench_stream.py --shape {' '.join(args.shape)}`\n\n")
    text = head + "\n".join(rows) + "\n"
    print(text)
    if args.write:
        with open(args.write, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
