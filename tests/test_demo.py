"""`masktok demo`: generated corpus with real-world quirks, planned with tiny models."""

import pytest
from click.testing import CliRunner
from PIL import Image

from masktok.cli import main
from masktok.tiny.corpus import SCENES, write_demo_corpus
from masktok.schemas.manifest import read_manifest

# The demo starts a local Ray of its own for its one run (the longest test of the suite). It is
# not in the "ray" group: in the group "beside-ray" (with the other tests whose Ray is theirs
# alone: tests/test_ray_cluster.py, the answer workers of tests/test_answer_scale.py) it runs
# beside the Ray tests' worker, on the worker that has the short tests (`make test` runs
# two), so the suite ends minutes earlier; the Rays share 2 cores meanwhile, and are slower,
# never wrong.
pytestmark = pytest.mark.xdist_group("beside-ray")


def test_demo_corpus_has_the_quirks_of_real_corpora(tmp_path):
    source = write_demo_corpus(tmp_path)
    q = tmp_path / "images" / "quirks"
    assert Image.open(q / "gray.jpg").mode == "L"
    assert Image.open(q / "cmyk.jpg").mode == "CMYK"
    assert Image.open(q / "palette.png").mode == "P"
    assert Image.open(q / "rgba.png").mode == "RGBA"
    assert Image.open(q / "deep16.png").mode.startswith("I")
    assert Image.open(q / "animated.gif").n_frames == 3
    assert Image.open(q / "png_named.jpg").format == "PNG"
    assert Image.open(q / "rotated_exif.jpg").getexif()[0x0112] == 6
    assert source.exists() and len(list((tmp_path / "images" / "scenes").iterdir())) == SCENES


def test_demo_corpus_is_deterministic(tmp_path):
    a, b = write_demo_corpus(tmp_path / "a"), write_demo_corpus(tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a/images/scenes/003.jpg").read_bytes() == (tmp_path / "b/images/scenes/003.jpg").read_bytes()


def test_demo_runs_the_whole_job_and_says_where_the_results_are(tmp_path):
    result = CliRunner().invoke(main, ["demo", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "d/job/manifest.parquet")
    assert manifest.num_rows == SCENES + 9  # scenes + quirk files; '../outside.jpg' rejected
    assert max(manifest.column("shard").to_pylist()) == 3  # shards of 8
    assert (tmp_path / "d/job/models/sam_tiny.pth").exists()
    assert len(list((tmp_path / "d/job/commits").glob("shard-*.json"))) == 4
    assert "28 images done, 1 failed" in result.output  # quirks/broken.jpg
    assert str(tmp_path / "d/job/tokens.zarr") in result.output and "every committed shard matches" in result.output
    assert (tmp_path / "d/inspect.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "data:image/png;base64," in (tmp_path / "d/report.html").read_text()
    assert "trained a tiny Llama from the cache" in result.output
    assert (tmp_path / "d/train/metrics.jsonl").read_text().count("\n") == 6  # 60 steps, logged every 10
    assert "masktok generate" in result.output
    again = CliRunner().invoke(main, ["demo", str(tmp_path / "d")])
    assert again.exit_code == 0 and "nothing to do" in again.output
