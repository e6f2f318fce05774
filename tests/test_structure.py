"""The size limits of issue 53 on the package's source: no function over 100 lines and no
module over 500 (static assets aside; the import layers are lint-imports' job)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dermalab"
MAX_FUNCTION, MAX_MODULE = 100, 500


def test_no_function_over_100_lines_and_no_module_over_500() -> None:
    long_functions, long_modules = [], []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text("utf-8")
        if len(text.splitlines()) > MAX_MODULE:
            long_modules.append(f"{path.relative_to(SRC)}: {len(text.splitlines())}")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION:
                    long_functions.append(f"{path.relative_to(SRC)}:{node.name}: {n}")
    assert long_functions == [] and long_modules == []
