"""The README's results are generated from bench/results, never typed: a README whose block
differs from what scripts/readme_results.py makes of the result files fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_results_match_the_result_files() -> None:
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "readme_results.py"),
                          "--check"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr


def test_a_drifted_number_is_caught() -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import readme_results
    finally:
        sys.path.pop(0)
    readme = (REPO / "README.md").read_text()
    assert readme_results.rewrite(readme) == readme
    inside = readme.split(readme_results.START, 1)[1].split(readme_results.END, 1)[0]
    drifted = readme.replace(inside, inside.replace("|", "| 0.999 ", 1))
    assert readme_results.rewrite(drifted) != drifted
