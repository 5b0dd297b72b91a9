"""The shape of the code that the design promises: the training step readable in one sitting,
fast paths chosen only in xpdnn/kernels, no mode flags set on another object."""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "xpdnn"
GENERIC = [*sorted((ROOT / "layers").glob("*.py")), *sorted((ROOT / "losses").glob("*.py")),
           *sorted((ROOT / "optim").glob("*.py")), ROOT / "trainer.py", ROOT / "step.py", ROOT / "nan_guard.py",
           ROOT / "callbacks.py", ROOT / "regularizers.py",
           ROOT / "heads.py", ROOT / "ensemble.py"]


@pytest.mark.parametrize("path", [ROOT / "trainer.py", ROOT / "step.py", ROOT / "nan_guard.py"], ids=lambda p: p.name)
def test_the_step_and_trainer_stay_small(path):
    """No function over 40 lines or of cyclomatic complexity over 12 (radon's measure)."""
    radon = pytest.importorskip("radon.complexity")
    source = path.read_text()
    too_complex = [(b.name, b.complexity) for b in radon.cc_visit(source) if b.complexity > 12]
    assert not too_complex, too_complex
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(ast.parse(source))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 40]
    assert not long, long


@pytest.mark.parametrize("path", GENERIC, ids=lambda p: str(p.relative_to(ROOT)))
def test_generic_code_holds_no_fast_path_choice(path):
    """Layers, losses, optimizers and the step call xpdnn.kernels; only it looks at the array
    library to pick a fast path (CuPy kernel / NumPy in place / portable)."""
    text = path.read_text()
    for pattern in (r"\bcpu\.", r"is_cupy\(", r"from \.\.kernels import cpu", r"kernels\.cpu",
                    r"isinstance\([^)]*np\.ndarray"):
        hits = [line for line in text.splitlines() if re.search(pattern, line) and not line.lstrip().startswith(("#", "``"))
                and ":func:" not in line and "``xpdnn" not in line]
        assert not hits, (pattern, hits)


def test_no_object_sets_a_mode_flag_on_another():
    """The trainer passes ``check=False`` to the loss and hands the step a sink; it never sets
    attributes such as ``labels_prechecked`` or ``_fused`` on the loss, the net or the optimizer."""
    for path in (ROOT / "trainer.py", ROOT / "step.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Attribute) \
                            and t.value.attr in ("loss", "loss_fn", "optimizer") and t.attr not in ("lr", "steps", "state"):
                        pytest.fail(f"{path.name}:{node.lineno} sets {t.value.attr}.{t.attr}")
