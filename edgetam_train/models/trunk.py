"""Image-encoder trunks built from timm (``pretrained=False`` always; weights only from a local file).

- :class:`TimmTrunk`: any timm ``features_only`` model held as ``body`` (EdgeTAM: ``repvit_m1``, strides 4-32,
  channels 48/96/192/384). Its keys ``body.*`` are the official ``image_encoder.trunk.body.*`` keys. By default it
  takes the feature levels at strides 4, 8, 16, 32 (:func:`select_levels`), so any timm model with such levels is a
  student trunk by name (``repvit_m0_9``, ``mobilenetv4_conv_small``, ``efficientvit_b0``, ``fastvit_t8``, ...).
- :class:`HieraTrunk`: SAM 2 / 2.1 Hiera (timm ``sam2_hiera_{tiny,small,base_plus,large}``), re-housed so its keys
  are the official ``image_encoder.trunk.*`` keys (``pos_embed``, ``pos_embed_window``, ``patch_embed.*``,
  ``blocks.N.*`` with ``mlp.layers.0/1``).
- :func:`reparameterize`: fuse RepViT BatchNorms / RepVGG branches for inference (timm ``reparameterize_model``).

Both trunks map (B, 3, H, W) images to a list of feature maps high-res first (B, C_i, H/s_i, W/s_i), and expose
``channel_list``: the channels of those maps low-res first, which is the order the FPN neck takes them in.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.utils.model import reparameterize_model
from torch import Tensor, nn

from edgetam_train.models.checkpoint import CheckpointMismatchError, check_state_dict

OFFICIAL_TRUNK_PREFIX = "image_encoder.trunk."
TRUNK_STRIDES = (4, 8, 16, 32)  # what the FPN neck (2x top-down steps) and SAM 2's heads (F16, S/4, S/8) expect


def is_random(weights: object) -> bool:
    """``weights: random`` (any case): a randomly initialised trunk chosen on purpose (training refuses an unset
    ``weights`` unless ``model.init_from`` replaces it; ``edgetam_train/run/preflight.py``)."""
    return isinstance(weights, str) and weights.strip().lower() == "random"


def _create_timm(name: str, device: str | None = None, **kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained=False, in_chans=3, **kwargs)`` (on ``device``, e.g. "meta" for a free
    probe); an unknown name or a model without ``features_only`` support is a ValueError naming ``name``."""
    try:
        if device is None:
            return timm.create_model(name, pretrained=False, in_chans=3, **kwargs)
        with torch.device(device):
            return timm.create_model(name, pretrained=False, in_chans=3, **kwargs)
    except RuntimeError as err:  # timm: "Unknown model (...)", "features_only not implemented for ..."
        what = "with features_only=True " if kwargs.get("features_only") else ""
        raise ValueError(f"timm model {name!r} cannot be built {what}as a trunk: {err}") from err


def select_levels(name: str, strides: Sequence[int] = TRUNK_STRIDES, **timm_kwargs) -> list[int]:
    """The timm ``out_indices`` of ``name``'s ``features_only`` levels at ``strides`` (the deepest level of each).

    Probes the model on the meta device (no memory, no init cost). RepViT / EfficientViT / FastViT: [0, 1, 2, 3];
    MobileNetV4 / EfficientNet / ResNet (a stride-2 level first): [1, 2, 3, 4].

    Raises:
        ValueError: naming the strides (and channels) found when one of ``strides`` has no level, e.g. a ViT
            (strides [16, 16, 16]).
    """
    try:
        probe = _create_timm(name, "meta", features_only=True, **timm_kwargs)
    except Exception:  # noqa: BLE001 - init that cannot run on meta: probe on the CPU (a bad name raises there)
        probe = _create_timm(name, features_only=True, **timm_kwargs)
    info = probe.feature_info
    found = list(info.reduction())
    by_stride = {r: idx for idx, r in zip(info.out_indices, found)}  # later (deeper) levels win
    missing = [s for s in strides if s not in by_stride]
    if missing:
        raise ValueError(f"timm model {name!r}: its features_only levels have strides {found} (channels "
                         f"{list(info.channels())}), but an EdgeTAM trunk needs one level at each of strides "
                         f"{list(strides)} (missing {missing}); pick a hierarchical (CNN-like) model")
    return [by_stride[s] for s in strides]


def read_weights_file(path: str | Path) -> dict[str, Tensor]:
    """Tensors stored in ``path``: a state_dict, ``{"model": sd}`` or ``{"state_dict": sd}`` (``torch.load`` with
    ``weights_only=True``), or a ``.safetensors`` file. Returns the flat ``{key: tensor}`` dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trunk weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointMismatchError(f"trunk weights file {path}: expected a state_dict or a dict with key 'model' "
                                      f"or 'state_dict', got {type(obj).__name__}"
                                      + (f" with keys {list(obj)[:10]}" if isinstance(obj, dict) else ""))
    return obj


def _strip_prefix(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Keys under ``prefix`` with it removed, if any key has it (e.g. a whole official SAM 2 checkpoint); else as is."""
    if any(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return state_dict


def _load_strict(module: nn.Module, state_dict: dict[str, Tensor], path: str | Path) -> None:
    """Load strictly; a mismatch raises :class:`CheckpointMismatchError` naming ``path`` and the first 20 keys."""
    check_state_dict(module, state_dict, f"{path} (trunk weights)")
    module.load_state_dict(state_dict, strict=True)


def reparameterize(trunk: nn.Module) -> nn.Module:
    """Fuse BatchNorms and RepVGG branches of ``trunk`` in place for inference (timm ``reparameterize_model``).

    Outputs are unchanged in eval mode (within float rounding); the fused modules have no BatchNorm, so the state_dict
    no longer has the official keys and the trunk must not be trained afterwards. Modules without fusable parts
    (e.g. Hiera) are left as they are. Returns ``trunk``.
    """
    if hasattr(trunk, "reparameterize"):
        return trunk.reparameterize()
    return reparameterize_model(trunk, inplace=True)


class TimmTrunk(nn.Module):
    """A timm ``features_only`` model as a trunk (the official ``TimmBackbone``, but never ``pretrained=True``).

    Args:
        name: timm architecture, e.g. ``repvit_m1``, ``mobilenetv4_conv_small``.
        out_indices: which timm feature levels to return; None (default) = the levels at strides 4, 8, 16, 32
            (:func:`select_levels`). Whatever is chosen must have exactly those strides.
        weights: local timm-format file (e.g. the ImageNet ``repvit_m1.dist_in1k`` checkpoint), see :meth:`load_timm`;
            None or ``"random"``: random init (``"random"`` says it is on purpose; training refuses None).
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``).

    ``forward(x (B, 3, H, W)) -> list`` of 4 maps high-res first, (B, C_i, H/s_i, W/s_i), s_i = 4, 8, 16, 32.
    ``channel_list``: C_i low-res first, from timm's ``feature_info`` (RepViT-M1: [384, 192, 96, 48]); the FPN neck
    takes it from here. ``strides``: s_i high-res first. ``out_indices``: the timm levels used.

    Raises:
        ValueError: unknown timm name, no ``features_only`` support, or levels at other strides (names them).
    """

    def __init__(self, name: str = "repvit_m1", out_indices: Sequence[int] | None = None,
                 weights: str | Path | None = None, **timm_kwargs) -> None:
        super().__init__()
        self.name = name
        if out_indices is None:
            out_indices = select_levels(name, **timm_kwargs)
        self.out_indices: list[int] = [int(i) for i in out_indices]
        self.body = _create_timm(name, features_only=True, out_indices=tuple(self.out_indices), **timm_kwargs)
        self.channel_list: list[int] = list(self.body.feature_info.channels())[::-1]
        self.strides: list[int] = list(self.body.feature_info.reduction())
        if self.strides != list(TRUNK_STRIDES):
            raise ValueError(f"timm model {name!r} with out_indices {self.out_indices}: feature strides "
                             f"{self.strides}, expected {list(TRUNK_STRIDES)} (leave out_indices null to pick them)")
        # timm feature wrappers of some models (e.g. Swin) return channels-last maps
        self.channels_last = str(getattr(self.body, "output_fmt", "NCHW")).upper().endswith("NHWC")
        self.reparameterized = False
        if weights is not None and not is_random(weights):
            self.load_timm(weights)

    def _pruned_keys(self) -> set[str]:
        """Keys of the full timm model (built on the meta device) that the ``features_only`` body does not hold:
        the classifier head, final convs / norms and stages after the last level. A weights file may carry them."""
        full = _create_timm(self.name, "meta")
        return set(full.state_dict().keys())

    def timm_to_features_keys(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Rename a full timm model's keys to this ``features_only`` body's keys; drop the classifier head.

        timm's feature wrapper (``FeatureListNet``) flattens the first level of each top-level ``nn.Sequential``
        into the wrapper and joins the two names with ``_``: ``stages.0.blocks.1.x`` -> ``stages_0.blocks.1.x``.
        Keys of the full model that the wrapper pruned (the head, final conv / norm, stages after the last level)
        are dropped. Keys already in features_only form (or under ``body.`` / ``image_encoder.trunk.body.``) pass
        through; anything else is kept as is, so the strict load reports it as unexpected.
        """
        state_dict = _strip_prefix(_strip_prefix(state_dict, OFFICIAL_TRUNK_PREFIX), "body.")
        targets = self.body.state_dict().keys()
        children = {n for n, _ in self.body.named_children()}
        pruned: set[str] | None = None
        out = {}
        for key, value in state_dict.items():
            parts = key.split(".")
            flat = f"{parts[0]}_{parts[1]}" if len(parts) > 2 else ""
            if key not in targets and flat in children:
                key = ".".join([flat, *parts[2:]])
            elif key not in targets:
                pruned = self._pruned_keys() if pruned is None else pruned
                if key in pruned:
                    continue  # part of the full model that features_only does not keep
            out[key] = value
        return out

    def load_timm(self, path: str | Path) -> None:
        """Load a local timm-format file (full model or features_only keys) strictly, except the classifier head.

        Raises :class:`CheckpointMismatchError` naming ``path`` and the first 20 missing/unexpected keys.
        """
        _load_strict(self.body, self.timm_to_features_keys(read_weights_file(path)), path)

    @torch.no_grad()
    def reparameterize(self) -> TimmTrunk:
        """Fuse BatchNorms / RepVGG branches in place (inference only; keys stop being official). Returns self."""
        if not self.reparameterized:
            reparameterize_model(self.body, inplace=True)
            self.reparameterized = True
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = list(self.body(x))
        return [f.permute(0, 3, 1, 2) for f in feats] if self.channels_last else feats


class HieraMlp(nn.Module):
    """timm's two-layer Hiera MLP re-housed under SAM 2's names: ``layers.0`` (fc1), GELU, ``layers.1`` (fc2).

    Input and output (..., dim). Holds timm's own Linear modules (no copy); dropout is 0 in Hiera, so omitted.
    """

    def __init__(self, fc1: nn.Linear, fc2: nn.Linear, act: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList([fc1, fc2])
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        return self.layers[1](self.act(self.layers[0](x)))


class HieraTrunk(nn.Module):
    """SAM 2 Hiera trunk from timm, with the official SAM 2 module/key layout.

    Args:
        name: ``sam2_hiera_tiny`` | ``sam2_hiera_small`` | ``sam2_hiera_base_plus`` | ``sam2_hiera_large``.
        weights: optional local file with trunk weights: official keys (``pos_embed``, ``blocks.N.mlp.layers.0``),
            timm keys (``mlp.fc1``; a classifier ``head.*`` is ignored) or a whole official SAM 2 checkpoint
            (keys under ``image_encoder.trunk.``).
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``).

    The timm blocks are used as they are; the classifier head and final norm are discarded, each block's ``mlp``
    becomes a :class:`HieraMlp` (``mlp.layers.0/1`` as in the official checkpoint instead of timm's ``mlp.fc1/fc2``)
    and the skip projection ``proj`` is re-registered last so state_dict order equals the official one too.

    ``forward(x (B, 3, H, W)) -> list`` of the 4 stage outputs high-res first, (B, C·2^i, H/2^(i+2), W/2^(i+2)).
    ``channel_list``: stage channels low-res first (B+: [896, 448, 224, 112]).
    """

    def __init__(self, name: str = "sam2_hiera_base_plus", weights: str | Path | None = None, **timm_kwargs) -> None:
        super().__init__()
        if not name.startswith("sam2_hiera_"):
            raise ValueError(f"HieraTrunk: expected a timm sam2_hiera_* architecture, got {name!r}")
        hiera = timm.create_model(name, pretrained=False, num_classes=0, **timm_kwargs)
        self.name = name
        self.pos_embed: nn.Parameter = hiera.pos_embed  # (1, C, h0, w0) background, bicubic-resized to the grid
        self.pos_embed_window: nn.Parameter = hiera.pos_embed_window  # (1, C, w, w) tiled over the grid
        self.patch_embed = hiera.patch_embed  # conv 7x7 stride 4 -> (B, H/4, W/4, C)
        for block in hiera.blocks:
            block.mlp = HieraMlp(block.mlp.fc1, block.mlp.fc2, block.mlp.act)
            proj = block.proj
            del block.proj
            block.proj = proj  # official blocks register `proj` after `mlp`
        self.blocks = hiera.blocks
        self.stage_ends: list[int] = list(hiera.stage_ends)
        self.channel_list: list[int] = [self.blocks[i].dim_out for i in self.stage_ends][::-1]
        self.strides: list[int] = [info["reduction"] for info in hiera.feature_info]
        if weights is not None and not is_random(weights):
            self.load_weights(weights)

    def load_weights(self, path: str | Path) -> None:
        """Load trunk weights from ``path`` strictly (official, timm or whole-checkpoint keys; see class doc)."""
        state_dict = _strip_prefix(read_weights_file(path), OFFICIAL_TRUNK_PREFIX)
        renamed = {}
        for key, value in state_dict.items():
            if key.startswith("head."):
                continue  # timm classifier head / final norm: not part of the SAM 2 trunk
            renamed[key.replace(".mlp.fc1.", ".mlp.layers.0.").replace(".mlp.fc2.", ".mlp.layers.1.")] = value
        _load_strict(self, renamed, path)

    def fix_pos_embed(self, image_size: int) -> None:
        """Compute the position embedding of ``image_size`` inputs once and use that constant from now on (a
        non-persistent buffer), for graphs exported at one size: they then hold no bicubic resize, which Core ML's
        converter has no op for. The model must not be trained afterwards (``pos_embed`` would no longer count)."""
        hw = (image_size // self.strides[0], image_size // self.strides[0])
        with torch.no_grad():
            self.register_buffer("fixed_pos_embed", self._pos_embed(hw).detach().clone(), persistent=False)

    def _pos_embed(self, hw: tuple[int, int]) -> Tensor:
        """Position embedding of an (h, w) patch grid: (1, h, w, C) = bicubic(pos_embed) + tiled window embedding
        (the constant of :meth:`fix_pos_embed` when one was made for this grid)."""
        fixed = getattr(self, "fixed_pos_embed", None)
        if fixed is not None and tuple(fixed.shape[1:3]) == tuple(hw):
            return fixed
        pos = F.interpolate(self.pos_embed, size=hw, mode="bicubic")
        window = self.pos_embed_window
        pos = pos + window.tile((pos.shape[-2] // window.shape[-2], pos.shape[-1] // window.shape[-1]))
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.patch_embed(x)  # (B, h, w, C) channels-last
        x = x + self._pos_embed(x.shape[1:3])
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outs.append(x.permute(0, 3, 1, 2))
        return outs

