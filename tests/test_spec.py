"""The job spec: typed, validated, fingerprinted (schemas/spec.py)."""

import tomllib

import pytest

from masktok.jobs import BUNDLED, bundled_spec
from masktok.schemas.errors import SpecError
from masktok.schemas.spec import (
    JobSpec, apply_overrides, expand_env, fingerprint, fingerprint_diff, load_spec,
    spec_from_dict, spec_to_toml,
)


def test_defaults_are_the_papers_settings():
    spec = JobSpec()
    assert spec.detect.top_k == 100
    assert spec.masks.source == "sam"
    assert spec.segment.model_type == "vit_h"
    assert spec.invert.model == "ViT-L-14-336-quickgelu"
    assert (spec.invert.iterations, spec.invert.lr, spec.invert.layer_index) == (10, 0.5, -1)


@pytest.mark.parametrize("doc, message", [
    ({"detect": {"top_kk": 5}}, "unknown key 'detect.top_kk' (did you mean 'detect.top_k'?)"),
    ({"detect": {"resources": {"gpu": 1}}}, "unknown key 'detect.resources.gpu'"),
    ({"nonsense": 1}, "unknown key 'nonsense'"),
    ({"detect": {"top_k": "100"}}, "'detect.top_k': input should be a valid integer, got str '100'"),
    ({"detect": {"top_k": True}}, "'detect.top_k'"),
    ({"corpus": {"check_files": "yes"}}, "'corpus.check_files'"),
    ({"masks": {"source": "slic"}}, "'masks.source'"),
    ({"filter": {"iou_threshold": 1.5}}, "'filter.iou_threshold'"),
    ({"shards": {"size": 0}}, "'shards.size'"),
])
def test_bad_spec_is_one_clear_error_naming_the_key(doc, message):
    with pytest.raises(SpecError) as err:
        spec_from_dict(doc, origin="my.toml")
    assert message in str(err.value)
    assert str(err.value).startswith("my.toml: ")
    assert "\n" not in str(err.value)


def test_floats_accept_integers_but_integers_refuse_floats():
    assert spec_from_dict({"invert": {"lr": 1}}).invert.lr == 1.0
    with pytest.raises(SpecError, match="'invert.iterations'"):
        spec_from_dict({"invert": {"iterations": 10.0}})


def test_set_overrides_are_read_as_toml_values():
    doc = apply_overrides({}, ["detect.top_k=50", "filter.iou_threshold=0.7", "corpus.check_files=false",
                               "masks.source=boxes", "invert.checkpoint=/w/clip.bin", "job.name=\"x=y\""])
    spec = spec_from_dict(doc)
    assert spec.detect.top_k == 50 and spec.filter.iou_threshold == 0.7
    assert spec.corpus.check_files is False and spec.masks.source == "boxes"
    assert spec.invert.checkpoint == "/w/clip.bin" and spec.job.name == "x=y"


@pytest.mark.parametrize("item", ["detect.top_k", "Detect.top_k=1", "=3"])
def test_malformed_set_items_are_refused(item):
    with pytest.raises(SpecError, match="--set"):
        apply_overrides({}, [item])


def test_checkpoint_env_refs_are_expanded_and_unset_ones_refused():
    spec = expand_env(JobSpec(), {"MASKTOK_DETR_CHECKPOINT": "/m/detr", "MASKTOK_SAM_CHECKPOINT": "/m/sam.pth",
                                  "MASKTOK_CLIP_CHECKPOINT": "/m/clip.bin"})
    assert (spec.detect.checkpoint, spec.segment.checkpoint, spec.invert.checkpoint) == ("/m/detr", "/m/sam.pth", "/m/clip.bin")
    with pytest.raises(SpecError, match=r"'segment.checkpoint' refers to \$\{MASKTOK_SAM_CHECKPOINT\}"):
        expand_env(JobSpec(), {"MASKTOK_DETR_CHECKPOINT": "/m/detr"})


def test_fingerprint_is_stable_and_ignores_key_order():
    a = spec_from_dict({"detect": {"top_k": 50, "checkpoint": "x"}, "masks": {"source": "boxes"}})
    b = spec_from_dict({"masks": {"source": "boxes"}, "detect": {"checkpoint": "x", "top_k": 50}})
    assert fingerprint(a) == fingerprint(b) == fingerprint(a.model_copy())
    assert fingerprint(a).startswith("sha256:") and len(fingerprint(a)) == 7 + 64


@pytest.mark.parametrize("key, value", [
    ("detect.top_k", 50), ("masks.source", "tiles"), ("filter.iou_threshold", 0.5), ("filter.max_objects", 20),
    ("invert.lr", 0.1), ("invert.precision", "bf16"), ("segment.checkpoint", "/other.pth"),
    ("corpus.sample", 10), ("corpus.seed", 3), ("shards.size", 500), ("decode.max_pixels", 1000),
    ("decode.mode", "llava"),
])
def test_fingerprint_changes_with_every_result_field(key, value):
    changed = spec_from_dict(apply_overrides({}, [f"{key}={value!r}".replace("'", '"')]))
    assert fingerprint(changed) != fingerprint(JobSpec())


@pytest.mark.parametrize("key, value", [
    ("job.name", '"other"'), ("job.description", '"notes"'), ("detect.resources.actors", 4),
    ("segment.resources.gpus", 0.5), ("invert.resources.batch_size", 32), ("decode.resources.cpus", 0.25),
])
def test_fingerprint_ignores_fields_that_only_change_speed(key, value):
    changed = spec_from_dict(apply_overrides({}, [f"{key}={value}"]))
    assert fingerprint(changed) == fingerprint(JobSpec())


def test_fingerprint_diff_names_the_changed_keys():
    old = tomllib.loads(spec_to_toml(JobSpec()))
    new = spec_from_dict({"detect": {"top_k": 7}, "job": {"name": "renamed"}})
    assert fingerprint_diff(old, new) == ["detect.top_k: 100 -> 7"]


def test_resolved_spec_round_trips_through_toml_with_meta():
    spec = spec_from_dict({"corpus": {"sample": 5}, "filter": {"max_objects": 9}})
    text = spec_to_toml(spec, meta={"fingerprint": fingerprint(spec)}, header="# hi\n")
    again = spec_from_dict(tomllib.loads(text))
    assert again == spec and fingerprint(again) == fingerprint(spec)
    assert text.startswith("# hi\n")


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_specs_are_valid(name):
    spec = load_spec(bundled_spec(name))
    assert spec.version == 1


def test_corpus_specs_keep_the_papers_models_and_settings_and_decode_as_llava():
    """The bundled LLaVA specs are the defaults but for the corpus and LLaVA's pixels, which
    their fingerprint holds."""
    for name, kind in (("llava_pretrain", "llava-pretrain"), ("llava_instruct", "llava-instruct")):
        spec = load_spec(bundled_spec(name))
        assert spec.corpus.kind == kind and spec.decode.mode == "llava"
        careful = spec.model_copy(update={"decode": spec.decode.model_copy(update={"mode": "careful"})})
        assert fingerprint(careful) != fingerprint(spec)
        assert fingerprint(careful.model_copy(update={"corpus": JobSpec().corpus, "job": JobSpec().job})) == \
            fingerprint(JobSpec()), f"{name} differs from the paper's defaults"
    assert load_spec(bundled_spec("demo")).decode.mode == "careful"  # the demo's quirks stay meaningful


def test_a_job_planned_before_decode_mode_keeps_its_fingerprint():
    """decode.mode = "careful" is what every older job ran, so it is left out of the hash: the
    default spec hashes as it did before the field existed (value computed then)."""
    assert fingerprint(JobSpec()) == "sha256:dd0a9aa96d767105fad3adb99f19600e1ae049b32c567fe5105f8f9a591962f4"


def test_demo_spec_uses_the_tiny_presets():
    spec = load_spec(bundled_spec("demo"))
    assert spec.detect.checkpoint == spec.segment.checkpoint == spec.invert.checkpoint == "tiny"
    assert spec.segment.model_type == "tiny"


def test_a_partial_resources_table_keeps_the_stages_defaults():
    spec = spec_from_dict({"detect": {"resources": {"actors": 4}}})
    assert spec.detect.resources.actors == 4
    assert spec.detect.resources.gpus == JobSpec().detect.resources.gpus == 1.0
    assert spec.detect.resources.batch_size == JobSpec().detect.resources.batch_size


def test_a_folder_named_like_a_bundled_spec_does_not_hide_it(tmp_path, monkeypatch):
    """--spec demo from a folder that holds a demo/ (say, `make demo`'s output) is the bundled spec."""
    from masktok.jobs import spec_document

    (tmp_path / "demo").mkdir()
    monkeypatch.chdir(tmp_path)
    doc, label = spec_document("demo")
    assert label == "bundled spec 'demo'" and doc["detect"]["checkpoint"] == "tiny"
