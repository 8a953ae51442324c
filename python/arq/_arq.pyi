"""Type stubs of the Rust extension `arq._arq` (re-exported by `arq`)."""

from os import PathLike
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

_Path = Union[str, "PathLike[str]"]

class ArqError(Exception):
    """An error reported by arq, with its one-line message."""

class BadFileError(ArqError):
    """A model or input file that cannot be opened, parsed or loaded."""

class BadArgumentError(ArqError):
    """An argument that does not fit the model or the call (a size, a range, a token id)."""

class ArenaTooSmallError(ArqError):
    """A session's memory is smaller than its plan needs."""

def convert(
    input: _Path,
    output: _Path,
    quant: str = "q8",
    *,
    force: bool = False,
    calib: Optional[_Path] = None,
    calibrate: bool = True,
    progress: bool = True,
    head: Optional[str] = None,
    levels: Optional[int] = None,
    vocab: Optional[_Path] = None,
) -> Dict[str, Any]:
    """Converts a GGUF file, an ONNX graph (PixelCNN, GPT-2) or a Hugging Face directory
    to the .arq file `output` (`quant`: "q8", "q4" or "f32"), as `arq convert` does.
    Progress goes to stderr. Returns the report: `format`, `output`, `bytes`, `quant`,
    `tensor_errors` (name -> relative error), `accuracy` (text models: `tokens`,
    `kl_mean`, `top1_agreement`, `ppl_reference`, `ppl_quantized`; None when not run),
    `description` (ONNX). `vocab`: the vocabulary file of an ONNX recurrent model
    (`arq convert --vocab`)."""

class Model:
    """An .arq file: a text model with its tokenizer, or a PixelCNN over images."""

    def __init__(self, path: _Path, threads: Optional[int] = None) -> None:
        """Opens (maps) the file; `threads` workers per call (default: the cores)."""
    @property
    def kind(self) -> str:
        """"text" or "pixel"."""
    @property
    def path(self) -> str: ...
    @property
    def threads(self) -> int: ...
    @property
    def config(self) -> Dict[str, Any]:
        """Text: family, vocab, dim, n_layers, ctx_train. Pixel: height, width,
        channels, levels, head."""
    # Text models
    def tokenize(self, text: str, special: bool = False) -> List[int]:
        """Token ids of `text` without BOS; `special`: control tokens matched whole."""
    def prompt_ids(self, prompt: str, chat: bool = False) -> List[int]:
        """The ids generate/next run for `prompt` (BOS when the model asks for it)."""
    def detokenize(self, ids: List[int]) -> str: ...
    def next(self, prompt: str, top: int = 10, chat: bool = False, kv: str = "f32") -> List[Tuple[str, int, float]]:
        """The `top` most likely next tokens: (token, id, prob), most likely first."""
    def score(
        self,
        x: Union[str, npt.NDArray[np.uint8]],
        per_token: bool = False,
        ctx: Optional[int] = None,
        kv: str = "f32",
    ) -> Any:
        """Text models, `x` a str: a dict with tokens, nll_nats, perplexity,
        bits_per_token, bits_per_byte, bytes, bos_added, windows {count, ctx, stride,
        min_context, evaluated_tokens},
        and with `per_token` a dict of numpy arrays pos (int64), id (uint32), logprob
        (float64), top_id (uint32), top_logprob (float64). PixelCNN models, `x` a uint8
        array (N, H, W) or (N, H, W, 1): each image's NLL in nats, float64 (N,)."""
    def generate(
        self,
        prompt: str = "",
        max_tokens: int = 128,
        *,
        temperature: float = 0.8,
        top_k: Optional[int] = None,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        seed: int = 0,
        chat: bool = False,
        ctx: Optional[int] = None,
        kv: str = "f32",
    ) -> "Generation":
        """Generated text, a piece per token, as `arq generate` with the same options."""
    def session(self, ctx: Optional[int] = None, kv: str = "f32") -> "Session":
        """A KV-cache session to feed tokens and read logits step by step."""
    # PixelCNN models
    def sample(self, n: int = 16, seed: int = 0, temperature: float = 1.0) -> npt.NDArray[np.uint8]:
        """`n` images (n, H, W) of levels; image i uses seed + i (as `arq sample`)."""
    def impute(
        self,
        image: npt.NDArray[np.uint8],
        mask: npt.NDArray[np.bool_],
        particles: int = 64,
        seed: int = 0,
        temperature: float = 1.0,
    ) -> Tuple[npt.NDArray[np.uint8], Dict[str, Any]]:
        """Fills the pixels where `mask` is True; returns the image (H, W) and a dict:
        method ("exact" or "smc"), missing_pixels, and for SMC particles, resamples, ess."""

class Session:
    """A text model's KV cache of `ctx` tokens."""

    @property
    def pos(self) -> int: ...
    @property
    def ctx(self) -> int: ...
    @property
    def vocab(self) -> int: ...
    def feed(self, ids: List[int]) -> None:
        """Runs the ids (at least one) from the current position."""
    def logits(self) -> npt.NDArray[np.float32]:
        """The next-token logits after the last id fed (a new array each call)."""
    def reset(self) -> None: ...
    def truncate(self, pos: int) -> None:
        """Keeps the first `pos` cached tokens."""

class Generation(Iterator[str]):
    """The iterator `Model.generate` returns; breaking out of it frees its session."""

    def __iter__(self) -> "Generation": ...
    def __next__(self) -> str: ...
    @property
    def stop(self) -> Optional[str]:
        """"length", "end of text" or "context full" once finished, else None."""
    @property
    def ids(self) -> Optional[List[int]]:
        """The generated token ids once finished."""
    @property
    def prompt_tokens(self) -> int: ...
    def close(self) -> None:
        """Ends the generation and frees its session."""

def _live_sessions() -> int: ...
