"""The grader's static pass over answer cells (coursekit.grading.static): what it flags and what it lets be."""

from __future__ import annotations

from pathlib import Path

import pytest

from coursekit.grading.build import cell_role, read_notebook
from coursekit.grading.grade import _static_findings, assemble_notebook, forbidden_apis
from coursekit.grading.static import check_answer, protected_names

FORBIDDEN = ["torchvision.ops", "coursekit.boxes"]
SETUP = ("import torch\nimport torchvision\nimport coursekit as ck\nfrom torch import Tensor\n\n\n"
         "def seconds(fn):\n    return 0")
TEST = "assert seconds(box_iou) < 1\nassert torch.equal(nms(b, s, 0.5), torchvision.ops.nms(b, s, 0.5))"
PROTECTED = protected_names([SETUP], [TEST])
IMPORTS = {"torch": "torch", "torchvision": "torchvision", "ck": "coursekit", "Tensor": "torch.Tensor"}


def kinds(source: str) -> list[str]:
    return [f.kind for f in check_answer(source, FORBIDDEN, PROTECTED, IMPORTS)]


@pytest.mark.parametrize("source", [
    "from torchvision.ops import nms",
    "from torchvision.ops import box_iou as b",
    "import torchvision.ops as O\nO.nms(x, y, 0.5)",
    "f = torchvision.ops\nf.nms(x, y, 0.5)",
    "def f():\n    t = torchvision\n    return t.ops.nms",
    "x = getattr(torchvision.ops, 'nms')",
    "ck.boxes.box_iou(a, b)",
    "from coursekit import boxes",
    "from torchvision.ops import *",
    "%timeit torchvision.ops.nms(a, b, 0.5)",
])
def test_forbidden_api_is_found_through_aliases_and_tricks(source):
    assert "forbidden" in kinds(source), source


@pytest.mark.parametrize("source", [
    "get_ipython().input_transformers_post.append(lambda lines: ['pass'])",
    "ip = get_ipython()\nip.run_cell = lambda *a, **k: None",
    "torchvision.ops.nms = nms",
    "seconds = lambda *a, **k: 0.0",
    "def seconds(fn):\n    return 0.0",
    "def f():\n    global seconds\n    seconds = None",
    "x = getattr(torchvision.ops, 'n' + 'ms')",
    "__import__('torchvision').ops.nms",
    "import importlib",
    "import sys\nsys.modules['x'] = None",
    "e.__traceback__.tb_frame.f_back.f_locals",
    "().__class__.__bases__[0].__subclasses__()",
    "class A(float):\n    def __eq__(self, other):\n        return True",
    "exec('print(1)')",
    "%run ../solutions/01_boxes.ipynb",
    "!cat /etc/passwd",
    "torch.ops.torchvision.nms(a, b, 0.5)",
    "type(x).__eq__ = lambda a, b: True",
    "open('/work/main/solutions/01_boxes.ipynb').read()",
    "from operator import attrgetter\nattrgetter('ops.nms')(torchvision)",
    "Anything = type('Anything', (float,), {'__eq__': lambda s, o: True})",
    "ｅｘｅｃ('print(1)')",  # full-width letters: Python reads them as exec
    "vars(torchvision.ops)['nms']",
])
def test_tampering_is_flagged(source):
    assert "tampering" in kinds(source), source


@pytest.mark.parametrize("source", [
    "import torch\n\n\ndef box_iou(a: Tensor, b: Tensor) -> Tensor:\n"
    "    lt = torch.maximum(a[:, None, :2], b[None, :, :2])\n    return lt.sum()",
    "from torch import Tensor\nimport numpy as np\n\n\n"
    "class Net(torch.nn.Module):\n    def __len__(self):\n        return 3",
    "%matplotlib inline\nimport matplotlib.pyplot as plt",
    "%timeit box_iou(a, b)",
    "boxes = torch.zeros(3, 4)  # scratch work at the top level",
    "self_kernel = 3\ndef f(self):\n    self.kernel = torch.ones(3)",
    "def f(x):\n    seconds = 2  # a local of the same name\n    return x * seconds",
    "x = (",  # a syntax error: no finding, the cell fails when it runs
])
def test_honest_answers_pass(source):
    assert kinds(source) == [], check_answer(source, FORBIDDEN, PROTECTED, IMPORTS)


ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_every_solution_declares_forbidden_apis_and_its_answers_break_no_rule(path):
    """The instructor's answers are honest answers: if the static pass flagged one, it would flag students."""
    solution = read_notebook(path)
    forbidden = forbidden_apis(solution)
    assert forbidden, f"{path.name}: declare the APIs students must not call in metadata coursekit.forbidden"
    graded, _ = assemble_notebook(solution, solution)
    assert _static_findings(graded, forbidden) == {}
    assert any(cell_role(c) == "test" for c in solution.cells)
