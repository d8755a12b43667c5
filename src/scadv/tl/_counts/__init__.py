"""Count-space threat model: attacks measured in UMIs, through the stored preprocessing.

``_transform`` is the recipe (normalise → log1p → z-score → clip) as a differentiable torch
function of the model genes' counts; ``_engine`` is the batched count-space attack (integer
edits of single UMIs under per-gene caps and a library-size range).
"""
