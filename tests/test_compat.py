"""The workarounds of betavae/compat/ are for the versions they name; a different installed version
means re-checking each of them (betavae/compat/__init__.py says where each is tested)."""

from importlib.metadata import version

import pytest

from betavae import compat


@pytest.mark.parametrize("package", sorted(compat.WRITTEN_FOR))
def test_the_installed_version_is_the_one_the_workarounds_were_written_for(package, repo_root):
    written_for = compat.WRITTEN_FOR[package]
    assert version(package) == written_for, (
        f"{package} {version(package)} is installed, but betavae/compat/ was written for {written_for}: re-check "
        "each workaround against it (and delete any it no longer needs), then update WRITTEN_FOR")
    assert f"{package}=={written_for}\n" in (repo_root / "requirements.txt").read_text()
