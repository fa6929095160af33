"""Neural network blocks built from operations and einsum specs: `from ocannl_py import nn`.

Each block returns a Tensor; the parameters it creates are labelled `f"{label}.{name}"` and
appear in `t.params`. docs/nn.md describes every block, its specs, parameters and initialisation.
"""

from ocannl_py.nn.activations import gelu, silu
from ocannl_py.nn.attention import attention, multi_head_attention
from ocannl_py.nn.batch_norm import batch_norm, state
from ocannl_py.nn.conv import avg_pool2d, conv2d, max_pool2d
from ocannl_py.nn.dropout import dropout
from ocannl_py.nn.embedding import embedding
from ocannl_py.nn.kv_cache import KVCache
from ocannl_py.nn.lenet import lenet
from ocannl_py.nn.linear import linear, mlp
from ocannl_py.nn.norms import layer_norm, rms_norm
from ocannl_py.nn.softmax import cross_entropy, log_softmax, softmax
from ocannl_py.nn.transformer import transformer_block

__all__ = [
    "KVCache", "attention", "avg_pool2d", "batch_norm", "conv2d", "cross_entropy", "dropout",
    "embedding", "gelu", "layer_norm", "lenet", "linear", "log_softmax", "max_pool2d", "mlp",
    "multi_head_attention", "rms_norm", "silu", "softmax", "state", "transformer_block",
]  # fmt: skip
