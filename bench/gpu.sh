#!/usr/bin/env bash
# The GPU path, in one short run (never in CI). Untested until a session is lent a GPU:
# docs/benchmarks.md says so until this script's numbers are there.
#
#   bash bench/gpu.sh [OUT_DIR]      # default $OUT or ./bench/out/gpu
#
# 1. SmolLM2 detect on CUDA (bf16, the GPU default) and on CPU (float32): the same verdict
#    (super weights, strong weights, grades) or exit 1;
# 2. the synthetic Llama-2-7B (bf16 safetensors, bench/bench_stream.py's recipe) streamed
#    to the GPU: detect (--recompute: the proof, not the cache) and 4-bit quantize, wall
#    time and peak RSS each, and whether detect found the planted super weight;
# 3. vLLM loading and generating from our exports, when vllm is installed there;
# 4. llmcompressor GPTQ and AWQ with and without `superweight recipe`, audited (when installed).
# Needs: a CUDA build of torch in .venv (the Makefile installs the CPU build; on the GPU
# machine: .venv/bin/pip install torch --index-url of the CUDA wheels the machine has).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-bench/out}/gpu}
mkdir -p "$OUT_DIR"
PY=${PY:-.venv/bin/python}
SW=${SW:-.venv/bin/superweight}
export SUPERWEIGHT_CACHE=${SUPERWEIGHT_CACHE:-$OUT_DIR/cache}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script is for a GPU machine')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT_DIR/gpu.txt"

timed() {  # timed NAME CMD...: wall seconds and peak RSS (MiB) into $OUT_DIR/times.tsv
  local name=$1; shift
  /usr/bin/time -f "$name\t%e\t%M" -a -o "$OUT_DIR/times.tsv" "$@"
}
: > "$OUT_DIR/times.tsv"

# 1. SmolLM2: CUDA against CPU
timed smollm2-cpu "$SW" detect --recompute --json "$OUT_DIR/smollm2-cpu.json" > /dev/null
timed smollm2-cuda "$SW" detect --recompute --device cuda --json "$OUT_DIR/smollm2-cuda.json" > /dev/null
"$PY" - "$OUT_DIR" <<'EOF'
import json, sys
d = sys.argv[1]
a, b = (json.load(open(f"{d}/smollm2-{k}.json")) for k in ("cpu", "cuda"))
def verdict(r):
    return {g: sorted((f["layer"], f["row"], f["col"], f["grade"]) for f in r[g]) for g in ("super_weights", "strong")}
same = verdict(a) == verdict(b)
print("smollm2 cuda verdict", "equals" if same else "DIFFERS from", "the cpu verdict:", verdict(b))
sys.exit(0 if same else 1)
EOF

# 2. the synthetic 7B streamed to the GPU
"$PY" - "$OUT_DIR" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "bench")
import bench_stream as b
out = Path(sys.argv[1]) / "llama2-7b"
if not (out / "config.json").exists():
    b.write_checkpoint("7b", out)
print(out)
EOF
CK="$OUT_DIR/llama2-7b"
timed 7b-detect-cuda "$SW" detect "$CK" --stream --device cuda --recompute --json "$OUT_DIR/7b-detect.json" > /dev/null
timed 7b-quantize-cuda "$SW" quantize "$CK" --stream --device cuda --bits 4 --group-size 128 --out "$OUT_DIR/7b-q4" --overwrite > /dev/null
"$PY" - "$OUT_DIR" <<'EOF'
import json, sys
sys.path.insert(0, "bench")
import bench_stream as b
d = sys.argv[1]
r = json.load(open(f"{d}/7b-detect.json"))
want = tuple(b.sw_coord("7b"))
got = [(f["layer"], f["row"], f["col"]) for f in r["super_weights"] + r["strong"]]
print("7b planted", want, "found" if want[:3] in got else "NOT found", got)
EOF
rm -rf "$OUT_DIR/7b-q4" "$CK"

# 3. vLLM loads and generates from our exports (when vllm is installed on the machine): the
#    dequantized SmolLM2 (tied embeddings) and a 4-bit group-128 compressed-tensors pack of
#    Qwen2.5-Coder-0.5B (widths Marlin takes); quant/engines.py's rules say both load.
if "$PY" -c "import vllm" 2>/dev/null; then
  "$SW" quantize --bits 8 --group-size 128 --out "$OUT_DIR/smol-q8" --overwrite > /dev/null
  "$SW" quantize qwen2.5-coder-0.5b --coords 5:62:956 --bits 4 --group-size 128 --format compressed-tensors \
    --out "$OUT_DIR/qwen-ct4" --overwrite > /dev/null
  for ck in smol-q8 qwen-ct4; do
    timed "vllm-$ck" "$PY" -c "import sys; from vllm import LLM, SamplingParams; \
llm = LLM(sys.argv[1], dtype='bfloat16', gpu_memory_utilization=0.3, enforce_eager=True); \
out = llm.generate(['Paris is the capital of'], SamplingParams(max_tokens=8, temperature=0)); \
print(sys.argv[1], repr(out[0].outputs[0].text))" "$OUT_DIR/$ck" | tee -a "$OUT_DIR/vllm.txt"
  done
else
  echo "vllm is not installed here: step 3 (vLLM load and generate) skipped" | tee "$OUT_DIR/vllm.txt"
fi

# 4. The calibrated llmcompressor recipes (hours on 2 CPU cores, minutes on a GPU): GPTQ and AWQ,
#    W4A16 in groups of 128, on Qwen2.5-Coder-0.5B, without and with `superweight recipe`'s
#    protection (the graded weights' matrices in an 8-bit config group), each audited; then
#    vLLM serves the protected one (a mixed-scheme checkpoint: vLLM resolves the scheme per layer).
if "$PY" -c "import llmcompressor, datasets" 2>/dev/null; then
  for mod in gptq awq; do
    "$SW" recipe qwen2.5-coder-0.5b --for llmcompressor --modifier "$mod" --out "$OUT_DIR/$mod-with.yaml" > /dev/null
    "$PY" - "$OUT_DIR" "$mod" <<'PYEOF'
import sys, yaml, pathlib
d, mod = sys.argv[1], sys.argv[2]
r = yaml.safe_load(pathlib.Path(f"{d}/{mod}-with.yaml").read_text())
body = next(iter(r["quant_stage"]["quant_modifiers"].values()))
body["config_groups"] = {"base": body["config_groups"]["base"]}  # the same scheme, nothing protected
pathlib.Path(f"{d}/{mod}-without.yaml").write_text(yaml.safe_dump(r, sort_keys=False))
PYEOF
    for v in without with; do
      timed "$mod-$v" "$PY" - "$OUT_DIR" "$mod" "$v" <<'PYEOF'
import sys, torch, superweight as sw
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmcompressor import oneshot
d, mod, v = sys.argv[1:]
src = sw.load("qwen2.5-coder-0.5b", stream=False).source
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16, device_map="cuda")
tok = AutoTokenizer.from_pretrained(src)
oneshot(model=model, dataset="open_platypus", recipe=f"{d}/{mod}-{v}.yaml", output_dir=f"{d}/qwen-{mod}-{v}",
        max_seq_length=512, num_calibration_samples=128)
tok.save_pretrained(f"{d}/qwen-{mod}-{v}")
PYEOF
      "$SW" audit qwen2.5-coder-0.5b "$OUT_DIR/qwen-$mod-$v" --json "$OUT_DIR/audit-$mod-$v.json" | tail -2
    done
  done
  if "$PY" -c "import vllm" 2>/dev/null; then
    "$PY" -c "import sys; from vllm import LLM, SamplingParams; \
llm = LLM(sys.argv[1], gpu_memory_utilization=0.3, enforce_eager=True); \
print(llm.generate(['Paris is the capital of'], SamplingParams(max_tokens=8, temperature=0))[0].outputs[0].text)" \
      "$OUT_DIR/qwen-gptq-with" | tee -a "$OUT_DIR/vllm.txt"
  fi
else
  echo "llmcompressor or datasets missing: step 4 (GPTQ/AWQ with and without the recipe) skipped" | tee -a "$OUT_DIR/vllm.txt"
fi
column -t "$OUT_DIR/times.tsv"
