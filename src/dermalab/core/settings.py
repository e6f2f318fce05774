"""Every environment variable dermalab reads, in one place.

The environment is an input like a config file, so it is declared here (pydantic-settings),
read when :func:`settings` is called (never cached at import: a test or a long-lived process
that changes a variable sees the change) and its values passed down as arguments. No other
module reads ``os.environ``; the one write (MLflow's telemetry off, its S3 endpoint) is
:func:`quiet_mlflow`.

=======================  ======================================================================
variable                 what
=======================  ======================================================================
``DERMALAB_CACHE``       decoded-image cache and downloads (default ``~/.cache/dermalab``)
``DERMALAB_DATA``        where named datasets live (default ``<cache>/datasets``)
``DERMALAB_CATALOG``     a YAML catalog of datasets laid over the built-in one
``DERMALAB_MIRROR``      a mirror URL for dataset downloads
``DERMALAB_ORT_DIR``     the ``onnxruntime-web`` ``dist`` folder for on-device analysis
``AWS_ENDPOINT_URL_S3``  an S3-compatible endpoint (else ``AWS_ENDPOINT_URL``, else AWS)
``HF_HUB_OFFLINE``       the Hugging Face hub's local cache only (no network probe)
``HF_ENDPOINT``          the Hugging Face hub's address
=======================  ======================================================================

Credentials (``AWS_ACCESS_KEY_ID``...) are read by boto3 itself and never pass through here.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from dermalab.core.errors import ConfigError


class Settings(BaseSettings):
    """The environment's settings (see the module docstring); empty variables count as unset."""

    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", frozen=True)

    cache: Path | None = Field(None, validation_alias="DERMALAB_CACHE")
    data: Path | None = Field(None, validation_alias="DERMALAB_DATA")
    catalog: Path | None = Field(None, validation_alias="DERMALAB_CATALOG")
    mirror: str | None = Field(None, validation_alias="DERMALAB_MIRROR")
    ort_dir: Path | None = Field(None, validation_alias="DERMALAB_ORT_DIR")
    s3_endpoint: str | None = Field(
        None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"))
    hf_offline: bool = Field(False, validation_alias="HF_HUB_OFFLINE")
    hf_endpoint: str = Field("https://huggingface.co", validation_alias="HF_ENDPOINT")

    @property
    def cache_dir(self) -> Path:
        """``DERMALAB_CACHE`` or ``~/.cache/dermalab``."""
        return self.cache.expanduser() if self.cache else Path.home() / ".cache" / "dermalab"

    @property
    def data_dir(self) -> Path:
        """``DERMALAB_DATA`` or ``<cache>/datasets``."""
        return self.data.expanduser() if self.data else self.cache_dir / "datasets"


def settings() -> Settings:
    """The settings of the environment as it is now.

    Raises:
        ConfigError: a variable holds a value of the wrong kind (named, with what it takes).
    """
    try:
        return Settings()
    except ValidationError as e:
        err = e.errors()[0]
        name = str(err["loc"][0]) if err.get("loc") else "an environment variable"
        raise ConfigError(f"environment variable {name}: {err['msg']} (got "
                          f"{os.environ.get(name)!r}); fix or unset it") from None


def quiet_mlflow(s3_endpoint: str | None = None) -> None:
    """Turn MLflow's telemetry off and give its S3 artifact store ``s3_endpoint``: MLflow reads
    these from the environment only. A value the user set is kept."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    if s3_endpoint:
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", s3_endpoint)
