"""Shared fixtures: the repository's committed models, and the arq CLI the package is
compared with (ARQ_HOST_BIN, which scripts/test-python.sh sets)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
TINYGPT_Q8 = MODELS / "tinygpt" / "tinygpt-q8.arq"
TINYGPT_F32 = MODELS / "tinygpt" / "tinygpt-f32.arq"
HELDOUT = MODELS / "tinygpt" / "heldout.txt"
DIGITS_Q8 = MODELS / "pixelcnn" / "digits17-q8.arq"
DIGITS_TEST = MODELS / "pixelcnn" / "digits_test.npy"
TINY_LLAMA_GGUF = MODELS / "tiny" / "llama" / "llama-f32.gguf"
PIXELCNN_ONNX = MODELS / "pixelcnn" / "digits17.onnx"


def arq_bin() -> str:
    path = os.environ.get("ARQ_HOST_BIN") or str(REPO / "target" / "release" / "arq")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no arq CLI at {path}: set ARQ_HOST_BIN or run scripts/test-python.sh")
    return path


def cli(*args) -> subprocess.CompletedProcess:
    """Runs the arq CLI; fails the test with its stderr when it fails."""
    r = subprocess.run([arq_bin(), *map(str, args)], capture_output=True)
    if r.returncode != 0:
        pytest.fail(f"arq {' '.join(map(str, args))} failed: {r.stderr.decode(errors='replace')}")
    return r


def cli_json(*args):
    return json.loads(cli(*args, "--json").stdout)


@pytest.fixture(scope="session")
def smollm2_gguf():
    """SmolLM2's GGUF (models/fetch_smollm2.sh; test-all.sh exports ARQ_SMOLLM2_GGUF)."""
    path = os.environ.get("ARQ_SMOLLM2_GGUF")
    if not path or not Path(path).is_file():
        pytest.skip("ARQ_SMOLLM2_GGUF is not set (models/fetch_smollm2.sh fetches it)")
    return Path(path)
