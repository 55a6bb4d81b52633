"""One image's visual tokens from its cached record: which ones (the token spec), how they
are scaled and positioned, and re-filtering at another IoU (docs/trainer.md, "Token spec").
Plain functions over a record dict; nothing here reads files.

    token_spec  the token spec string (cls,patch:N[:pool|max|prune],obj:K) -> TokenSpec
    compose     record + spec -> VisualTokens (global, patch, objects); the box-centre embedding
    scaling     the norm-scaling modes (per-image-std, per-image, dataset-global, c7, none)
    refilter    keep_rank at another IoU threshold (``obj:K@iouX``)
"""
