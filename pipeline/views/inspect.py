"""`masktok inspect`: one image of a job as a picture: boxes, masks, ranks, scores, maps.

    masktok inspect JOBDIR IMAGE_ID -o OUT.png [--maps] [--top N]
    masktok inspect JOBDIR 12 -o OUT.png          (all digits: manifest index 12)
    masktok inspect JOBDIR --index 12 -o OUT.png

Picture (see figure.py): the decoded image and, beside it, the overlay: kept objects filled
in a colour each with box and ``keep_rank · score`` label, suppressed ones as dashed grey
boxes, the background hatched. ``--top N`` shows only the first N kept objects (by rank)
and no suppressed ones. ``--maps`` adds a tile pair per shown object: its mask and its
final explainability map, recomputed from the stored token (explain.py; original frame).

Masks come from the job's ``masks.json`` (``write.rle_masks = true``); otherwise they are
recomputed by running the job's front stages on this image (jobview.recompute_masks), and the
picture says so. A failed image gives a picture of the image (if it can be read) with the
stage and reason of the failure; the command prints them too and exits 0.
"""

from __future__ import annotations

from pathlib import Path


def inspect_image(jobdir: Path, image: str | None = None, index: int | None = None, maps: bool = False,
                  top: int | None = None, recompute: bool = True) -> tuple[bytes, dict, str]:
    """PNG bytes, layout and a one-line summary of one image of the job in ``jobdir``.

    ``recompute=False`` draws boxes only when the job stored no masks (the report uses it:
    it must stay fast). Raises a MasktokError (InspectError, RunError...) for user errors.
    """
    import numpy as np

    from ...schemas.errors import InspectError
    from ...schemas.jobdir import JobDir
    from ...stages.batch import decode_masks
    from ..run import load_job
    from .figure import Scene, render
    from .jobview import load_record, read_image, recompute_masks, resolve_index, stored_masks

    jd = JobDir(jobdir)
    spec, _ = load_job(jd)
    record = load_record(jd, resolve_index(jd, image, index), tokens=maps)
    size = f"{record.width}x{record.height}" if record.width else "size unknown"
    title = f"{record.image_id}   (index {record.index}, shard {record.shard}, {size})"
    if record.failure is not None:
        reason = f"FAILED at stage {record.failure['stage']}: {record.failure['reason']}"
        try:
            picture = read_image(spec, record)
        except Exception:  # the failure is usually that the file cannot be decoded
            picture = None
        scene = Scene(title=title, notes=[], image=picture, boxes=np.zeros((0, 4)), scores=np.zeros(0),
                      keep_rank=np.zeros(0, np.int16), losses=np.zeros(0), failure=reason)
        png, layout = render(scene)
        return png, layout, f"{record.image_id} (index {record.index}) {reason}"
    picture = read_image(spec, record)
    rles = stored_masks(jd, record)
    if rles is not None:
        masks, source = decode_masks(rles), "masks stored by the job (masks.json)"
    elif recompute:
        masks, source = recompute_masks(jd, spec, record)
    else:
        masks, source = None, "masks not stored by this job (write.rle_masks = false): boxes only"
    if masks is not None and masks.shape[0] != record.num_objects:
        raise InspectError(f"{record.image_id!r}: {masks.shape[0]} masks for {record.num_objects} stored rows")
    keep = record.rows("keep_rank")
    kept = int((keep[:-1] >= 0).sum()) if len(keep) else 0
    background = (f"background (hatched): rank {int(keep[-1])}, loss {record.rows('inversion_loss')[-1]:.3f}"
                  if len(keep) and keep[-1] >= 0 else "background: empty (every pixel covered)")
    notes = [f"{kept} of {record.num_objects - 1} objects kept (label: keep_rank · score; dashed grey: suppressed); "
             f"{background}", source]
    scene = Scene(title=title, notes=notes, image=picture, boxes=record.rows("boxes"), scores=record.rows("scores"),
                  keep_rank=keep, losses=record.rows("inversion_loss"), masks=masks)
    if maps:
        from .explain import explain_tokens

        found = explain_tokens(jd, spec, picture, record.rows("object_tokens"), masks)
        scene.maps, scene.map_losses = found.maps, found.dice_loss
    png, layout = render(scene, top=top)
    return png, layout, f"{record.image_id} (index {record.index}): {kept} objects kept of {record.num_objects - 1}"
