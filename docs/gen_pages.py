"""Pages generated at every docs build (mkdocs-gen-files), so they cannot drift from the code:

- ``reference/config.md``: every config key with its type, default, choices and the comment
  beside it in ``dermalab.core.config`` (the dataclasses are the one source of the keys);
- ``results/``: every file of ``bench/results/`` but ``kept/`` (the benchmarks' own tables,
  never retyped)
  and ``results/index.md``, the README's headline table (``scripts/readme_results.py``) with
  the list of benchmarks.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import mkdocs_gen_files
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

import readme_results  # noqa: E402

from dermalab.core import config as config_module  # noqa: E402
from dermalab.core import schema  # noqa: E402

RESULTS = REPO / "bench" / "results"


def _field_comments(cls: type) -> dict[str, str]:
    """The comment of each field of a config dataclass: the comment lines right above it and
    the comment at the end of its line, joined."""
    lines = inspect.getsource(cls).splitlines()
    out: dict[str, str] = {}
    above: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        m = re.match(r"\s+(\w+): [^=]+(?:=\s*(.*))?$", line)
        if m and not stripped.startswith(('"""', "def ")):
            trailing = ""
            rest = line.split("#", 1)
            if len(rest) == 2 and rest[1].strip():
                trailing = rest[1].strip()
            out[m.group(1)] = " ".join([*above, trailing]).strip()
        above = []
    return out


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _type_name(tp: Any) -> str:
    """``str`` for a choice of words, the bare type for a bounded number."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) is typing.Literal:
        return "str"
    if typing.get_origin(tp) is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    text = str(tp).replace("typing.", "")
    return re.sub(r"<class '(\w+)'>", r"\1", text)


def _rows(cls: type, prefix: str) -> list[tuple[str, str, str, str]]:
    hints = typing.get_type_hints(cls, include_extras=True)
    comments = _field_comments(cls)
    rows: list[tuple[str, str, str, str]] = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += _rows(tp, key + ".")  # type: ignore[arg-type]
            continue
        words = schema.choices(tp)
        if words is None and typing.get_origin(tp) is list:
            words = schema.choices(typing.get_args(tp)[0])
        note = comments.get(f.name, "")
        if words:
            note = f"one of {', '.join(f'`{c}`' for c in words)}. {note}".strip()
        bound = schema.lower_bound(tp)
        if bound is not None:
            note = f"at least {bound:g}. {note}".strip()
        shown = yaml.safe_dump(_default(f), default_flow_style=True).strip()
        shown = shown.removesuffix("...").strip().replace("|", "\\|")
        note = note.replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
        rows.append((key, _type_name(tp).replace("|", "\\|"), f"`{shown}`", note))
    return rows


def config_reference() -> str:
    """The configuration reference page."""
    top = config_module.ExperimentConfig
    md = ["# Configuration reference", "",
          "Generated from `dermalab.core.config` at every docs build. A run's config is the "
          "defaults below, then `--config FILE` (YAML, nested by section), then `--set "
          "key=value ...` (values parsed as YAML). Unknown keys and wrong types are errors "
          "that list the valid keys. Relative paths in a config file are read from the file's "
          "own folder. The resolved config is saved as `config.yaml` in the run directory.", ""]
    hints = typing.get_type_hints(top)
    for f in dataclasses.fields(top):
        tp = hints[f.name]
        if not dataclasses.is_dataclass(tp):
            md += [f"- `{f.name}` (default `{_default(f)!r}`): the run's name.", ""]
            continue
        doc = (inspect.getdoc(tp) or "").split("\n\n")[0].replace("\n", " ")
        md += [f"## `{f.name}`", "", doc, "", "| key | type | default | what |",
               "| --- | --- | --- | --- |"]
        md += [f"| `{k}` | {t} | {d} | {n} |" for k, t, d, n in _rows(tp, f.name + ".")]
        md.append("")
    return "\n".join(md)


def results_index() -> str:
    """The results page: the README's generated headline table and every result file."""
    block = readme_results.block().replace("](bench/results/", "](")
    block = block.replace(readme_results.START, "").replace(readme_results.END, "")
    files = sorted(p.name for p in RESULTS.glob("*.md"))
    md = ["# Results", "", "Every number here is generated from the benchmarks' result files "
          "in `bench/results/` (each written by the script named in it; run a benchmark with "
          "nothing else on the machine).", "", block.strip(), "", "## Every result file", ""]
    md += [f"- [{name}]({name})" for name in files]
    md.append("")
    return "\n".join(md)


def copy_results() -> None:
    for path in sorted(RESULTS.rglob("*")):
        # kept/: the runs' raw outputs the tables are computed from, not pages to read
        if path.is_file() and "kept" not in path.relative_to(RESULTS).parts[:1]:
            rel = path.relative_to(RESULTS)
            with mkdocs_gen_files.open(f"results/{rel.as_posix()}", "wb") as out:
                out.write(path.read_bytes())


copy_results()
with mkdocs_gen_files.open("results/index.md", "w") as f:
    f.write(results_index())
with mkdocs_gen_files.open("reference/config.md", "w") as f:
    f.write(config_reference())
