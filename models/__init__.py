"""The three models of the pipeline in one home: Deformable-DETR (``detector.py``), SAM
(``sam.py``) and open_clip CLIP (``clip.py``), each with its loader for the real checkpoint
format and a tiny seeded preset; ``registry.py`` names them and places them on a device;
``weight_files.py`` tells the loaders when a weights file is none (an error page, a cut
download). Stages take models that are already built (see ``stages/topology.py``)."""

from .registry import MODEL_REGISTRY, TINY, load_inputs, load_model, materialize_tiny, pick_device, quiet_model_libraries

__all__ = ["MODEL_REGISTRY", "TINY", "load_inputs", "load_model", "materialize_tiny", "pick_device",
           "quiet_model_libraries"]
