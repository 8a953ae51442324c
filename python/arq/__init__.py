"""arq from Python: convert models to .arq files, then score, generate, sample and
impute with them; numpy arrays in and out.

    import arq
    arq.convert("model.gguf", "model-q8.arq", quant="q8")
    m = arq.Model("model-q8.arq", threads=2)
    m.next("The capital of France is", top=5)
    m.score("Some text.", per_token=True)
    for piece in m.generate("Once upon a time", max_tokens=32, seed=7):
        print(piece, end="")

Every call releases the GIL while it computes; a Model can be used from several
threads at once (each call runs its own session). Errors raise ArqError or one of its
subclasses with arq's one-line message.
"""

from ._arq import (
    ArenaTooSmallError,
    ArqError,
    BadArgumentError,
    BadFileError,
    Generation,
    Model,
    Session,
    convert,
)

__all__ = [
    "ArenaTooSmallError",
    "ArqError",
    "BadArgumentError",
    "BadFileError",
    "Generation",
    "Model",
    "Session",
    "convert",
]
