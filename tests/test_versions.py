"""Version promises a user relies on: `masktok --version`, and a manifest written by another
manifest schema version refused with a clear message (issue 23)."""

from importlib.metadata import version

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from masktok.cli import main
from masktok.schemas.errors import ManifestError
from masktok.schemas.manifest import VERSION, build_table, encode_manifest, read_manifest


def test_version_flag_prints_the_installed_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"masktok, version {version('masktok')}"


def test_a_manifest_of_another_version_is_refused_by_name(tmp_path):
    path = tmp_path / "manifest.parquet"
    path.write_bytes(encode_manifest(build_table(["a.jpg"], ["/x/a.jpg"], [[0]], 1)))
    assert read_manifest(path).column("image_id").to_pylist() == ["a.jpg"]
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({b"masktok.manifest_version": str(VERSION + 1).encode()}), path)
    with pytest.raises(ManifestError, match=f"manifest version {VERSION + 1}, this masktok reads version {VERSION}"):
        read_manifest(path)
