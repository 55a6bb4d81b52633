"""`masktok inspect` and `masktok report` on a small real job (tiny models, masks stored).

The job is the session's one finished job (``finished_job``, conftest.py: 9 demo images, one
broken; top_k 4, 2 inversion steps, shards of 3). The pictures are checked pixel by pixel
through the layout the PNG carries in its metadata.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from masktok.cli.views import inspect
from masktok.pipeline.views.jobview import load_record, read_image, recompute_masks, stored_masks
from masktok.stages.batch import decode_masks
from masktok.pipeline.views.overlay import hatch_lines, scale_image, scale_masks
from masktok.cli.views import report
from masktok.schemas.jobdir import JobDir
from masktok.pipeline.run import load_job
from small_job import JOB_IMAGES, manifest_index, plan_job

# Every test that starts Ray runs in one pytest-xdist worker, one after the other (`make test`
# runs two workers): two local Rays at once would fight over 2 cores.
pytestmark = pytest.mark.xdist_group("ray")


@pytest.fixture
def job(finished_job: JobDir) -> JobDir:
    return finished_job


def invoke(command, *args: object):
    return CliRunner().invoke(command, [str(a) for a in args])


def read_png(path: Path) -> tuple[np.ndarray, dict]:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")), json.loads(im.text["masktok.layout"])


def panel(pixels: np.ndarray, rect: list[int]) -> np.ndarray:
    x, y, w, h = rect
    return pixels[y:y + h, x:x + w]


def drawn_things(layout: dict, boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool [h, w] of the overlay panel: within 3 px of a box edge or inside a label."""
    out = np.zeros(shape, bool)
    for x0, y0, x1, y1 in np.rint(boxes[:-1] * layout["scale"]).astype(int):
        for lo, hi in ((x0, x0), (x1, x1)):
            out[max(0, y0 - 3):y1 + 4, max(0, lo - 3):hi + 4] = True
        for lo, hi in ((y0, y0), (y1, y1)):
            out[max(0, lo - 3):hi + 4, max(0, x0 - 3):x1 + 4] = True
    ox, oy = layout["overlay"][:2]
    for x0, y0, x1, y1 in layout["labels"]:
        out[max(0, y0 - oy - 2):y1 - oy + 2, max(0, x0 - ox - 2):x1 - ox + 2] = True
    return out


def test_inspect_draws_masks_exactly_where_they_are(job: JobDir, tmp_path: Path) -> None:
    out = tmp_path / "a.png"
    result = invoke(inspect, job.root, "scenes/003.jpg", "-o", out)
    assert result.exit_code == 0, result.output
    assert "objects kept" in result.output and str(out) in result.output
    pixels, layout = read_png(out)
    assert pixels.shape[:2] == (layout["height"], layout["width"])

    spec, _ = load_job(job)
    record = load_record(job, manifest_index(job, "scenes/003.jpg"))
    assert record.image_id == "scenes/003.jpg"
    image = read_image(spec, record)
    plain = scale_image(image, layout["scale"])
    assert layout["plain"][2:] == [plain.shape[1], plain.shape[0]] and layout["scale"] >= 2
    assert np.array_equal(panel(pixels, layout["plain"]), plain), "the plain panel is the image, pixel for pixel"

    overlay = panel(pixels, layout["overlay"]).astype(int)
    masks = scale_masks(decode_masks(stored_masks(job, record)), layout["scale"])
    keep = record.rows("keep_rank")
    kept = np.zeros(plain.shape[:2], bool)
    for r in layout["objects"]:
        kept |= masks[r]
    assert layout["objects"] and all(keep[r] >= 0 for r in layout["objects"])
    free = ~drawn_things(layout, record.rows("boxes"), plain.shape[:2])
    changed = np.abs(overlay - plain).sum(axis=2) > 0
    assert changed[kept & free].mean() > 0.95, "kept masks are coloured"
    background = masks[-1] & ~kept & free
    assert background.sum() > 1000
    assert not changed[background & ~hatch_lines(*plain.shape[:2])].any(), "off the hatch the image is untouched"
    assert changed[background & hatch_lines(*plain.shape[:2])].mean() > 0.95, "the background is hatched"


def test_inspect_by_index_with_maps_adds_a_tile_pair_per_object(job: JobDir, tmp_path: Path) -> None:
    by_id, by_digits, with_maps = tmp_path / "id.png", tmp_path / "digits.png", tmp_path / "maps.png"
    index = manifest_index(job, "scenes/003.jpg")
    assert invoke(inspect, job.root, "scenes/003.jpg", "-o", by_id).exit_code == 0
    assert invoke(inspect, job.root, str(index), "-o", by_digits).exit_code == 0
    result = invoke(inspect, job.root, "--index", index, "--maps", "-o", with_maps)
    assert result.exit_code == 0, result.output
    a, layout = read_png(by_id)
    b, _ = read_png(by_digits)
    assert np.array_equal(a, b), "an all-digit argument is the manifest index"
    c, maps_layout = read_png(with_maps)
    assert maps_layout["width"] == layout["width"] and maps_layout["height"] > layout["height"] + 150
    assert maps_layout["tiles"] == len(layout["objects"]) >= 1
    below = c[layout["height"]:]
    assert (below < 200).any(axis=2).mean() > 0.05, "the tiles hold pictures, not white space"
    top1 = tmp_path / "top1.png"
    assert invoke(inspect, job.root, "--index", index, "--top", 1, "-o", top1).exit_code == 0
    assert len(read_png(top1)[1]["objects"]) == 1


def test_inspect_errors_and_failed_images(job: JobDir, job_corpus: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    result = invoke(inspect, job.root, "scenes/999.jpg", "-o", out)
    assert result.exit_code == 1 and "no image 'scenes/999.jpg'" in result.output and "Traceback" not in result.output
    past = len(JOB_IMAGES)
    result = invoke(inspect, job.root, "--index", past, "-o", out)
    assert result.exit_code == 1 and f"index {past} is out of range" in result.output
    result = invoke(inspect, job.root, "quirks/broken.jpg", "-o", out)
    assert result.exit_code == 0 and "FAILED at stage decode" in result.output
    assert read_png(out)[1]["width"] > 0
    fresh = plan_job(tmp_path / "fresh", job_corpus)
    result = invoke(inspect, fresh.root, "0", "-o", out)
    assert result.exit_code == 1 and "no results yet" in result.output
    result = invoke(report, fresh.root, "-o", tmp_path / "r.html")
    assert result.exit_code == 1 and "no results yet" in result.output


def test_recomputed_masks_equal_the_stored_ones(job: JobDir) -> None:
    """The path taken when a job stores no masks: the front stages give the same rows."""
    spec, _ = load_job(job)
    record = load_record(job, manifest_index(job, "scenes/000.png"))
    masks, note = recompute_masks(job, spec, record)
    assert "match" in note
    assert np.array_equal(masks, decode_masks(stored_masks(job, record)))


def test_recomputed_maps_give_back_the_stored_dice_losses(job: JobDir) -> None:
    """inspect --maps: the map of each stored token against its stored mask gives the loss the
    invert stage recorded, to the float16 rounding of the stored token (tiny CLIP: measured
    2.6e-6; the bound leaves 40x that)."""
    from masktok.pipeline.views.explain import explain_tokens

    spec, _ = load_job(job)
    record = load_record(job, manifest_index(job, "scenes/003.jpg"), tokens=True)
    masks = decode_masks(stored_masks(job, record))
    tokens, stored = record.rows("object_tokens"), record.rows("inversion_loss")
    found = explain_tokens(job, spec, read_image(spec, record), tokens, masks)
    assert found.dice_loss.shape == stored.shape and len(stored) >= 2
    np.testing.assert_allclose(found.dice_loss, stored, rtol=0, atol=1e-4)


def test_report_is_one_self_contained_page(job: JobDir, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = invoke(report, job.root, "-o", out, "--images", 2)
    assert result.exit_code == 0, result.output
    html = out.read_text()
    sections = re.findall(r"<h2>(.*?)</h2>", html)
    assert sections == ["Summary", "Throughput", "Failures", "Distributions", "Inspected images"]
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == html.count("<img") == 1 + 4 + 2 >= len(sections)
    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            assert im.size[0] > 300 and im.size[1] > 150
    assert "truncated or corrupt" in html and "quirks/broken.jpg" in html
    assert "Mask area from the RLE masks" in html
    assert not re.search(r"https?://|<script|<link", html)


def test_report_while_a_run_holds_the_job_says_who(job: JobDir, tmp_path: Path) -> None:
    """The report of a running job names the run's process (it raised KeyError before: found by
    `make bench BENCH=exit`, a report beside a `masktok run`)."""
    import os

    from masktok.pipeline.lock import run_lock

    out = tmp_path / "report.html"
    with run_lock(job.run_lock):
        result = invoke(report, job.root, "-o", out, "--images", 0)
    assert result.exit_code == 0, result.output
    assert f"yes (pid {os.getpid()} on " in out.read_text()
