//! ONNX import (PixelCNN pattern) with tract-onnx: in progress.
