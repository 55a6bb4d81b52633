"""Stages: plain classes over batches, usable with no Ray (pipeline/ wraps them).

Every stage is a class built from the spec section(s) it needs (plus checkpoint paths, an
image root), holds its own models (device: CUDA if available, else CPU, unless given),
and is called as ``stage(batch) -> batch``. It updates the items in place and returns
the same list, in the same order, with the same length: no stage drops an item.

The in-flight batch contract
----------------------------
A batch is a ``list[dict]``, one dict ("item") per image. Keys, by the stage that adds them:

==================  =====================================================================
planner             ``index`` (int, manifest row), ``image_id`` (str), ``path`` (str)
decode              ``image``: ``np.uint8 [H, W, 3]`` RGB, C-contiguous, EXIF-upright;
                    ``width``, ``height``: ints, of that decoded image
prepare             ``detector_pixels``, ``sam_pixels``: ``np.uint8 [h, w, 3]``, the image
                    resized for the detector and SAM; ``clip_pixels``: ``np.uint8 [S, S, 3]``
                    in CLIP's frame (``masktok.stages.prepare``; a model stage given an
                    item without them resizes ``image`` itself, identically)
detect              ``boxes``: ``float32 [M, 4]`` xyxy in original pixels, clipped to the
                    image; ``scores``: ``float32 [M]`` (class-agnostic, descending)
segment             ``masks``: list of M COCO RLE dicts from pycocotools
                    (``{"size": [H, W], "counts": bytes}``, original resolution);
                    ``mask_iou``: ``float32 [M]`` (SAM's predicted IoU; 1.0 for the
                    ``boxes`` and ``tiles`` sources, which have no prediction)
background          appends one row to ``boxes`` (``[0, 0, W, H]``), ``scores`` (0),
                    ``mask_iou`` (0) and ``masks`` (the uncovered pixels), so the
                    **background is always the last row**; ``background_empty``: bool
filter              ``keep_rank``: ``int16 [M+1]``, rank after IoU/confidence filtering,
                    -1 suppressed or empty; ``pairwise_iou``: ``float16 [M+1, M+1]``,
                    the exact mask IoU of every pair of rows (stored as the record's
                    ``mask_iou`` triangle); with ``filter.max_objects`` set, rows are
                    dropped: only kept objects with rank < max_objects remain, in rank
                    order, then the background (see ``masktok.stages.filter``)
prepare_masks       ``clip_masks``: ``float32 [K, S, S]``, every row's mask in CLIP's frame
==================  =====================================================================

"Rows" are the entries of the per-row keys ``boxes``, ``scores``, ``masks``, ``mask_iou``,
``keep_rank`` (:data:`masktok.stages.batch.ROW_KEYS`); they always have the same length,
and a stage that selects rows selects them in all of these (and in both axes of
``pairwise_iou``).

Masks never travel as full-resolution float or bool tensors: always RLE. Decode
``item["masks"][i]`` with ``pycocotools.mask.decode`` (uint8 ``[H, W]``) or
:func:`masktok.stages.batch.decode_mask` (bool). ``item["image"]`` and the RLE masks share
the same ``H x W``; the invert stage consumes ``image``, ``masks`` and ``keep_rank`` (it
may skip rows with ``keep_rank == -1``; an empty mask has no meaningful token).

Failures: an item that cannot be processed gets ``"error": {"stage": str, "reason": str}``
(first failure wins) and every later stage passes it through untouched. Decode turns
every bad file into such a record (missing, truncated, not an image, too many pixels,
path outside the image root); model stages record per-image failures (e.g. an image that
cannot be resized) the same way. A stage raises only for wiring mistakes (e.g. the filter
run without the background row) and unloadable checkpoints (``ModelLoadError``).

Mask sources (``masks.source``, paper Table 2): ``sam`` = detect + segment, ``boxes`` =
detect + :class:`~masktok.stages.masks.BoxMaskStage`, ``tiles`` =
:class:`~masktok.stages.masks.TileMaskStage` (54 grid masks, no models). Which stages run for
a spec, grouped how and with which models, is defined once in ``masktok.stages.topology``
(``front_stages`` gives the front half, in process); ``masktok.stages.chain`` runs stages on
a batch with the per-batch error handling, for a job's actors and ``masktok ask`` alike.
"""
