"""Per-stage seconds per image, no Ray: the graph wrapper's timing, the commit file's sums,
the status aggregation, and the one rate formatter the run summary, status and report use."""

import json

import pytest
import webdataset as wds

from masktok.pipeline import commit as commits
from masktok.stages.chain import timed_stage
from masktok.pipeline.run import RunSummary
from masktok.pipeline.status import format_rate, format_seconds, job_status, status_lines, verify_job
from masktok.pipeline.views.report import stage_rows, stage_table
from masktok.pipeline.views.report_html import Page
from masktok.schemas.commits import STAGE_SECONDS, stage_seconds_per_image
from masktok.schemas.jobdir import JobDir
from masktok.schemas.manifest import build_table, encode_manifest
from masktok.stages.write import open_store
from test_write_commit import DIMS, shard_items


@pytest.mark.parametrize("rate, text", [
    (0.005, "200 s/image"), (0.0004, "2500 s/image"), (0.05, "20.0 s/image"), (0.3, "3.33 s/image"),
    (1.0, "1.00 images/s"), (3.2, "3.20 images/s"), (250, "250.00 images/s"), (None, "n/a"), (0.0, "n/a")])
def test_a_rate_reads_as_images_per_second_or_seconds_per_image(rate, text):
    assert format_rate(rate) == text


def test_seconds_keep_their_significant_digits():
    assert [format_seconds(s) for s in (200.4, 20.46, 3.214, 0.1001, 0.01234, 0.0004)] == [
        "200", "20.5", "3.21", "0.100", "0.0123", "0.000400"]


def test_each_item_gets_its_share_of_a_stage_call(monkeypatch):
    """A clock that reads 0.06 s for the first call of 3 items and 0.03 s for the second: each
    item gets exactly a third of each, 0.02 + 0.01 (shares divided by 2 would sum to 0.045)."""
    import masktok.stages.chain as chain

    ticks = iter([10.0, 10.06, 20.0, 20.03])
    monkeypatch.setattr(chain.time, "perf_counter", lambda: next(ticks))
    items = timed_stage("invert", lambda b: b, [{"index": 0}, {"index": 1},
                                                {"error": {"stage": "decode", "reason": "x"}}])
    items = timed_stage("invert", lambda b: b, items)  # a second call adds to the same stage
    shares = [item[STAGE_SECONDS]["invert"] for item in items]
    assert shares == pytest.approx([0.03, 0.03, 0.03], abs=1e-12)


def test_a_retried_batch_is_timed_whole_and_the_bad_item_too():
    def picky(items):
        if any(item["index"] == 1 for item in items) and len(items) > 1:
            raise ValueError("batch")
        if items[0]["index"] == 1:
            raise ValueError("bad image")
        return items

    items = timed_stage("detect", picky, [{"index": 0}, {"index": 1}])
    assert items[1]["error"]["stage"] == "detect"
    assert all(item[STAGE_SECONDS]["detect"] > 0 for item in items)


def timed(items, seconds):
    for item in items:
        item[STAGE_SECONDS] = dict(seconds)
    return items


def test_the_commit_sums_the_shard_and_the_record_never_sees_the_key(tmp_path):
    jd = JobDir(tmp_path)
    group = open_store(jd.tokens, rows=8, shard_size=4, dims=DIMS)
    items = timed(shard_items(4, 4, failed={6}), {"decode": 0.5, "detect": 0.25, "invert": 2.0})
    commit = commits.write_shard(jd, group, 1, 4, 8, items, DIMS, "sha256:f", rle_masks=True)
    assert commit[STAGE_SECONDS] == {"decode": 2.0, "detect": 1.0, "invert": 8.0} and commit["images"] == 4
    assert json.loads(jd.commit_path(1).read_text())[STAGE_SECONDS] == commit[STAGE_SECONDS]
    for sample in wds.WebDataset(str(jd.wds / "shard-000001.tar"), shardshuffle=False).decode():
        assert not any(STAGE_SECONDS in key for key in sample) and STAGE_SECONDS not in sample["json"]
    assert STAGE_SECONDS not in group.array_keys()
    assert verify_job(jd) == {}

    untimed = commits.write_shard(jd, group, 0, 0, 4, shard_items(0, 4), DIMS, "sha256:f")
    assert STAGE_SECONDS not in untimed and "images" not in untimed


def test_means_weigh_images_and_skip_commits_without_timing():
    per_image, images = stage_seconds_per_image([
        {"images": 4, STAGE_SECONDS: {"decode": 0.4, "invert": 40.0}},
        {"images": 2, STAGE_SECONDS: {"decode": 0.2, "invert": 8.0}},
        {"images_ok": 3},  # committed before stage timing: skipped, not zero
    ])
    assert images == 6 and per_image == pytest.approx({"decode": 0.1, "invert": 8.0})
    assert list(per_image) == ["decode", "invert"]
    assert stage_seconds_per_image([{"images_ok": 3}]) == ({}, 0)


def write_job(jd: JobDir, commit_files: list[dict]) -> None:
    """A manifest of 3 shards of 2 images and the given commit files (shard 0, 1, ...)."""
    jd.root.mkdir(parents=True, exist_ok=True)
    jd.manifest.write_bytes(encode_manifest(build_table([f"{i}.jpg" for i in range(6)],
                                                        [f"/d/{i}.jpg" for i in range(6)], [[i] for i in range(6)], 2)))
    jd.commits.mkdir()
    for shard, extra in enumerate(commit_files):
        commit = {"version": 1, "shard": shard, "rows": [2 * shard, 2 * shard + 2], "images_ok": 2,
                  "images_failed": 0, "failures": [], "committed_at": f"2025-01-01T00:0{shard}:00+00:00", **extra}
        jd.commit_path(shard).write_text(json.dumps(commit))


def test_status_json_and_lines_name_the_slowest_stage(tmp_path):
    jd = JobDir(tmp_path / "job")
    write_job(jd, [{},  # an older commit: no timing
                   {"images": 2, STAGE_SECONDS: {"decode": 0.02, "segment": 30.0, "invert": 400.0}},
                   {"images": 2, STAGE_SECONDS: {"decode": 0.06, "segment": 50.0, "invert": 600.0}}])
    s = job_status(jd)
    assert s[STAGE_SECONDS] == {"decode": 0.02, "segment": 20.0, "invert": 250.0} and s["stage_seconds_images"] == 4
    assert json.loads(json.dumps(s))[STAGE_SECONDS] == s[STAGE_SECONDS]
    assert s["images_per_s"] == pytest.approx(4 / 120, rel=1e-3)  # 2 images per minute after the first commit
    lines = status_lines(s)
    assert "speed   30.0 s/image (from commit times)" in lines
    assert [line for line in lines if line.startswith("stages")] == [
        "stages  slowest: invert, 250 s/image (decode 0.0200, segment 20.0, invert 250 s/image; per actor, "
        "over 4 images)"]
    assert stage_rows(s) == [("decode", "0.0200", "0 %"), ("segment", "20.0", "7 %"), ("invert", "250", "93 %")]
    page = Page("t")
    stage_table(page, s)
    assert "<tr><td>invert</td><td>250</td><td>93 %</td></tr>" in page.html() and "over 4 images" in page.html()


def test_status_without_timing_has_an_empty_stage_seconds_and_no_line(tmp_path):
    jd = JobDir(tmp_path / "job")
    write_job(jd, [{}])
    s = job_status(jd)
    assert s[STAGE_SECONDS] == {} and s["stage_seconds_images"] == 0
    assert not any(line.startswith("stages") for line in status_lines(s))
    page = Page("t")
    stage_table(page, s)
    assert "No committed shard records its stage times" in page.html() and "<table>" not in page.html()


def test_the_run_summary_gives_a_slow_rate_and_the_stages():
    summary = RunSummary(3, 0, 3, 9, 1, 1800.0, {"decode": 0.01, "detect": 1.5, "invert": 180.0})
    done, stages = summary.line().split("\n")
    assert done == "committed 3 shards (9 images, 1 failed) in 1800.0 s, 200 s/image; 3/3 shards done"
    assert stages == "stages: decode 0.0100, detect 1.50, invert 180 s/image per actor; slowest: invert (180 s/image)"
    assert RunSummary(3, 0, 3, 32, 0, 10.0).line().endswith("3.20 images/s; 3/3 shards done")
    assert RunSummary(3, 3, 0, 0, 0, 0.0).line() == "nothing to do: all 3 shards are committed"


def test_status_rate_is_the_pace_of_the_last_commits_and_the_eta_follows(tmp_path):
    """30 shards of 2 images; 25 committed: five an hour apart (a job paused and resumed),
    then twenty a minute apart. The rate is over the last 20 commits (RATE_WINDOW): 19 shards
    of 2 images in 19 minutes, 1/30 image/s, so the 10 pending images need 300 s. Over
    every commit it would be 48 images in 5 h 19 min."""
    from masktok.pipeline.status import RATE_WINDOW

    jd = JobDir(tmp_path / "job")
    jd.root.mkdir(parents=True)
    jd.manifest.write_bytes(encode_manifest(build_table([f"{i}.jpg" for i in range(60)],
                                                        [f"/d/{i}.jpg" for i in range(60)], [[i] for i in range(60)], 2)))
    jd.commits.mkdir()
    times = [f"2025-01-01T0{h}:00:00+00:00" for h in range(5)] + [f"2025-01-01T05:{m:02d}:00+00:00" for m in range(20)]
    for shard, at in enumerate(times):
        jd.commit_path(shard).write_text(json.dumps({
            "version": 1, "shard": shard, "rows": [2 * shard, 2 * shard + 2], "images_ok": 2, "images_failed": 0,
            "failures": [], "committed_at": at}))
    assert RATE_WINDOW == 20
    s = job_status(jd)
    assert s["images_pending"] == 10 and s["images_per_s"] == pytest.approx(1 / 30, rel=1e-3)
    assert s["eta_s"] == 300
    assert "speed   30.0 s/image (from commit times), ETA 0.1 h" in status_lines(s)
