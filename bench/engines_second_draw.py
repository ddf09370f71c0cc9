"""The engines at 4 bits without and with the recipe on a second draw of text: another prompt and GPL-3.

    .venv/bin/python bench/engines_second_draw.py smollm2 > docs/results/engines-draw2.txt
"""
import sys, warnings; warnings.filterwarnings("ignore")
import superweight as sw
from superweight.audit import AuditConfig, audit
from superweight.quant.recipes import RecipeConfig, recipe
from superweight.quant.run_engine import applied
from superweight.verdicts import detection
name = sys.argv[1]
lm = sw.load(name, stream=False)
det = detection(lm).result
findings = [(f.coord, f.grade) for f in det.super_weights + det.strong]
gs = lm.origin.path if lm.origin.path.is_file() else None
cfg = AuditConfig(prompt="The history of the Roman Empire spans many centuries.", text="gpl3", window=128, windows=2)
for engine in ("llmcompressor", "llama.cpp", "bitsandbytes", "hqq", "torchao"):
    for prot in (False, True):
        r = recipe(lm, findings if prot else [], RecipeConfig(engine=engine))
        q = applied(r, lm.source, gguf_source=gs, gguf_type="Q4_0")
        a = audit(lm, q, findings, cfg)
        print(name, engine, "recipe" if prot else "plain", "; ".join(f"{f.coord} {100*(f.quantized-f.original)/f.original:+.2f}% act {100*(f.activation_change or 0):+.1f}% {f.verdict()}" for f in a.findings), flush=True)
        del q
