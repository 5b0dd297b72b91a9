"""docs/guide.md runs: its ``python`` blocks are executed in order, in one namespace, in a
temporary folder, and the ``xpdnn`` commands of its ``bash`` blocks run there too, between them,
through the command line's ``main``; ``sh`` blocks (installs, long benchmarks) are only shown.
A block in any other language fails the test, so nothing in the guide escapes it."""

import re
import shlex
from pathlib import Path

import pytest

from xpdnn.cli import main

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guide.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def blocks():
    return [(m.group(1), m.group(2), GUIDE.read_text()[:m.start()].count("\n") + 1)
            for m in FENCE.finditer(GUIDE.read_text())]


def test_the_guide_has_code_to_run():
    langs = [lang for lang, _, _ in blocks()]
    assert langs.count("python") >= 10 and langs.count("bash") >= 2
    assert set(langs) <= {"python", "bash", "sh"}, langs


def test_the_guide_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("pandas")
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "guide"}
    for lang, code, line in blocks():
        if lang == "python":
            exec(compile(code, f"{GUIDE}:{line}", "exec"), namespace)
        elif lang == "bash":
            for command in filter(None, (c.strip() for c in code.splitlines())):
                assert command.startswith("xpdnn "), f"{GUIDE}:{line}: a bash block holds xpdnn commands only"
                try:
                    rc = main(shlex.split(command)[1:])
                except SystemExit as exc:
                    rc = exc.code
                assert rc == 0, (command, capsys.readouterr().err)
    out = capsys.readouterr().out
    for name in ("best.xpd", "checkpoint.xpd", "curves.png", "digits.onnx", "flowers.xpd", "flowers.png",
                 "predictions.csv", "flowers.onnx"):
        assert (tmp_path / name).is_file(), name
    assert "test accuracy" in out and "3-fold accuracy" in out


def test_the_readme_links_the_guide():
    readme = (GUIDE.parent.parent / "README.md").read_text()
    assert "(docs/guide.md)" in readme
