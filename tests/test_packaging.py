"""The project's own metadata: an SPDX license string, read by setuptools without a deprecation warning, and a
build requirement that knows SPDX strings (setuptools >= 77)."""
import os
import warnings

import pytest

from .conftest import ROOT


def test_metadata_applies_without_deprecation_warnings(monkeypatch):
    pytest.importorskip("setuptools")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(ROOT)  # readme and packages are found relative to the project
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), os.path.join(ROOT, "pyproject.toml"))
    deprecations = [f"{w.category.__name__}: {w.message}" for w in caught
                    if issubclass(w.category, DeprecationWarning) or "Deprecat" in w.category.__name__]
    assert not deprecations, deprecations
    assert dist.metadata.license_expression == "Apache-2.0"


def test_build_requires_a_setuptools_that_reads_spdx_strings():
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["project"]["license"] == "Apache-2.0"
    (setuptools,) = [Requirement(r) for r in config["build-system"]["requires"] if r.startswith("setuptools")]
    assert not setuptools.specifier.contains("76.1") and setuptools.specifier.contains("80.0")
