"""The model and its files: the projectors and the LM, checkpoints that resume, and the
consolidated folder ``generate`` and ``export`` load.

    mask_llava   Projector (two mlp2x_gelu: patch C->H, global/object D->H) + MaskLlava
    checkpoint   checkpoint-*/ folders that resume
    consolidate  a checkpoint -> one consolidated folder; loading it back
"""
