"""Follow one ``detect`` call as a newcomer reading the code would: the stops it makes.

    python tools/follow_detect.py [--all]

A stop is a function of ours that the model ``lm`` is handed to (an argument that is
``lm`` or holds it as ``.lm``: ``self``, a ``judge``), entered for the first time during ``detect.detect`` on
a tiny model: the places a reader follows ``lm`` through. Comprehensions are part of the
function they are written in, and the probing engine is one stop: ``passes.run`` and the
helpers of ``probe/passes.py`` it descends through (issue 23: "the engine's part is a
clean descent"). ``--all`` lists every function of ours entered, with its caller.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "tests"))
SRC = str(HERE / "src" / "superweight")


def follow(show_all: bool = False):
    from tiny import plant, tiny_model

    import superweight as sw
    from superweight.find import detect

    lm = tiny_model("llama")
    plant(lm, sw.Coord(1, 5, 7), 400)
    stops, seen, files = [], set(), set()

    def prof(frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        if not code.co_filename.startswith(SRC):
            return
        key = (code.co_filename, code.co_name)
        if key in seen or code.co_name.startswith("<") and not show_all:
            return
        if not show_all and code.co_filename.endswith("probe/passes.py") and code.co_name != "run":
            return
        # at the call, the locals are the arguments: one that is lm or holds it as .lm (lm's
        # own methods, ``self`` being lm, are not a hand-off)
        holds = any(v is lm and k != "self" or getattr(v, "lm", None) is lm for k, v in frame.f_locals.items())
        if holds or show_all:
            seen.add(key)
            files.add(code.co_filename)
            caller = frame.f_back.f_code.co_name if frame.f_back else "?"
            stops.append(f"{Path(code.co_filename).relative_to(SRC)}:{code.co_name} (from {caller})")

    sys.setprofile(prof)
    try:
        detect(lm, sw.DetectConfig(window=32))
    finally:
        sys.setprofile(None)
    return stops, files


if __name__ == "__main__":
    stops, files = follow("--all" in sys.argv)
    for i, s in enumerate(stops, 1):
        print(f"{i:3d}  {s}")
    print(f"{len(stops)} stops in {len(files)} files")
