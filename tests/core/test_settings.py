"""The environment as one declared input (dermalab.core.settings)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from dermalab.core.errors import ConfigError
from dermalab.core.settings import settings
from dermalab.data.cache import default_cache_dir
from dermalab.data.catalog import data_home

SRC = Path(__file__).resolve().parents[2] / "src" / "dermalab"

VARIABLES = ("DERMALAB_CACHE", "DERMALAB_DATA", "DERMALAB_CATALOG", "DERMALAB_MIRROR",
             "DERMALAB_ORT_DIR", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "HF_HUB_OFFLINE",
             "HF_ENDPOINT")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_and_values_are_read_when_asked(clean_env: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    s = settings()
    assert s.cache_dir == Path.home() / ".cache" / "dermalab"
    assert s.data_dir == s.cache_dir / "datasets"
    assert (s.mirror, s.s3_endpoint, s.hf_offline) == (None, None, False)
    assert s.hf_endpoint == "https://huggingface.co"
    # set after import: seen at the next call, by the functions that use it
    clean_env.setenv("DERMALAB_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    assert data_home() == tmp_path / "c" / "datasets"
    clean_env.setenv("DERMALAB_DATA", str(tmp_path / "d"))
    assert data_home() == tmp_path / "d"


def test_s3_endpoint_prefers_the_s3_variable_and_empty_counts_as_unset(
        clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert settings().s3_endpoint == "http://127.0.0.1:1"
    clean_env.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2")
    assert settings().s3_endpoint == "http://127.0.0.1:2"
    clean_env.setenv("DERMALAB_MIRROR", "")
    assert settings().mirror is None


@pytest.mark.parametrize(("value", "offline"), [("1", True), ("true", True), ("ON", True),
                                                ("0", False), ("no", False)])
def test_hf_offline_reads_the_usual_spellings(clean_env: pytest.MonkeyPatch, value: str,
                                              offline: bool) -> None:
    clean_env.setenv("HF_HUB_OFFLINE", value)
    assert settings().hf_offline is offline


def test_a_wrong_value_names_the_variable(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("HF_HUB_OFFLINE", "sometimes")
    with pytest.raises(ConfigError, match=r"HF_HUB_OFFLINE.*'sometimes'.*fix or unset it"):
        settings()


def test_no_other_module_reads_the_environment() -> None:
    """``os.environ`` / ``os.getenv`` appear only in the settings module."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "settings.py" and path.parent.name == "core":
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "os" and node.attr in ("environ", "getenv")):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert found == []
