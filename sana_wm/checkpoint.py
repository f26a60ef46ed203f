"""Reading and writing SANA-WM transformer checkpoints.

Three layouts are read by :func:`load_transformer`:

- NVlabs ``.safetensors`` (``SANA-WM_bidirectional/dit/sana_wm_1600m_720p.safetensors``): NVlabs parameter names;
- the NVlabs streaming training checkpoint (``SANA-WM_streaming/sana_dit/model.pt``): a torch pickle whose
  ``"generator"`` entry holds the weights under a ``model.`` prefix (a plain state dict is accepted too);
- a diffusers-layout folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, or sharded with a
  ``*.safetensors.index.json``), as written by diffusers' ``save_pretrained`` or :func:`save_transformer`.

Names: NVlabs and diffusers differ only in the timestep MLP (``t_embedder.mlp.0`` / ``.mlp.2`` are diffusers'
``t_embedder.linear_1`` / ``.linear_2``); NVlabs files also hold ``pos_embed`` (unused: the model uses RoPE) and
``y_embedder.y_embedding`` (the null caption of classifier-free-guidance training; inference encodes the negative
prompt instead), which are dropped. Which naming a file uses is read from its keys.

Configuration: a ``config.json`` beside the weights (diffusers ``SanaWMTransformer3DModel`` format) when there is
one, otherwise inferred from tensor shapes (:func:`infer_config`). Variant: ``variant=`` when given, else the
``_sana_wm_variant`` entry of a ``config.json`` written by :func:`save_transformer`, else the format's
(streaming ``.pt`` -> ``"streaming"``, everything else -> ``"bidirectional"``).

The model is built on the ``meta`` device and its tensors assigned from the memory-mapped file one by one (cast to
``dtype`` and moved to ``device`` as they go), so at most one full copy of the weights is ever resident.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import SanaWMConfig
from .transformer import SanaWMTransformer
from .weights import TORCH_SUFFIXES, load_into, read_state_dict

__all__ = [
    "UNUSED_NVLABS_KEYS",
    "diffusers_to_nvlabs_name",
    "infer_config",
    "load_transformer",
    "nvlabs_to_diffusers_name",
    "save_transformer",
]

# (NVlabs prefix, diffusers prefix): the only names that differ between the two layouts.
_RENAMES = (("t_embedder.mlp.0.", "t_embedder.linear_1."), ("t_embedder.mlp.2.", "t_embedder.linear_2."))
# Keys of NVlabs checkpoints the model does not use; dropped when present.
UNUSED_NVLABS_KEYS = ("pos_embed", "y_embedder.y_embedding")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
DIFFUSERS_CLASS = "SanaWMTransformer3DModel"
DIFFUSERS_VERSION = "0.42.1"  # the diffusers release whose parameter layout and config format this mirrors
VARIANT_KEY = "_sana_wm_variant"
# Sub-paths of the released repositories tried when a folder holds no weights itself.
_REPO_WEIGHTS = ("transformer", "dit", "sana_dit/model.pt")


def nvlabs_to_diffusers_name(name: str) -> str:
    """Diffusers (== :class:`SanaWMTransformer`) name of an NVlabs parameter name."""
    for nv, df in _RENAMES:
        if name.startswith(nv):
            return df + name[len(nv) :]
    return name


def diffusers_to_nvlabs_name(name: str) -> str:
    """NVlabs name of a diffusers (== :class:`SanaWMTransformer`) parameter name."""
    for nv, df in _RENAMES:
        if name.startswith(df):
            return nv + name[len(df) :]
    return name


def _to_model_names(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Drop unused NVlabs keys and rename NVlabs names to the model's (names are detected from the keys)."""
    state = {k: v for k, v in state.items() if k not in UNUSED_NVLABS_KEYS}
    nvlabs = sorted(k for k in state if any(k.startswith(nv) for nv, _ in _RENAMES))
    diffusers = sorted(k for k in state if any(k.startswith(df) for _, df in _RENAMES))
    if nvlabs and diffusers:
        raise ValueError(
            f"{source} mixes NVlabs names ({', '.join(nvlabs)}) and diffusers names ({', '.join(diffusers)})"
        )
    return {nvlabs_to_diffusers_name(k): v for k, v in state.items()} if nvlabs else state


def _strip_model_prefix(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    prefixed = [k for k in state if k.startswith("model.")]
    if not prefixed:
        return state
    if len(prefixed) != len(state):
        plain = sorted(set(state) - set(prefixed))[:10]
        raise ValueError(f"{source}: some keys have the 'model.' prefix and some do not (e.g. {', '.join(plain)})")
    return {k[len("model.") :]: v for k, v in state.items()}


def _shape(state: Mapping[str, torch.Tensor], key: str, source: str) -> tuple[int, ...]:
    if key not in state:
        raise ValueError(f"cannot infer the model configuration from {source}: it has no tensor {key!r}")
    return tuple(state[key].shape)


def infer_config(state: Mapping[str, torch.Tensor], *, variant: str, source: str = "the state dict") -> SanaWMConfig:
    """Configuration of a state dict with model (diffusers) names, read from its tensor shapes.

    Works on meta tensors. Self-attention heads = ``len(A_log)``; cross-attention heads are taken equal to them (as
    in every released model; their count is not visible in the shapes). Softmax blocks are those without
    ``attn.conv_k``; they must be every n-th block. Raises ValueError (naming ``source``) when the shapes do not
    describe a supported SANA-WM transformer.
    """
    hidden, in_channels, *patch = _shape(state, "x_embedder.proj.weight", source)
    if patch != [1, 1, 1]:
        raise ValueError(f"{source}: x_embedder.proj.weight has patch {patch}; only patch size (1, 1, 1) is supported")
    out_channels = _shape(state, "final_layer.linear.weight", source)[0]
    if out_channels != in_channels:
        raise ValueError(f"{source}: {out_channels} output channels for {in_channels} input channels (pred_sigma?)")
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if not blocks or blocks != list(range(len(blocks))):
        raise ValueError(f"{source}: transformer blocks must be numbered 0..n-1, found {blocks[:5]}...")
    depth = len(blocks)
    heads = _shape(state, "blocks.0.attn.A_log", source)[0]
    if hidden % heads:
        raise ValueError(f"{source}: hidden size {hidden} is not a multiple of {heads} heads (blocks.0.attn.A_log)")
    softmax = [i for i in blocks if f"blocks.{i}.attn.conv_k.weight" not in state]
    every_n = softmax[0] + 1 if softmax else 0
    if softmax != [i for i in blocks if every_n and (i + 1) % every_n == 0]:
        raise ValueError(f"{source}: softmax blocks (those without attn.conv_k) {softmax} are not every n-th block")
    gdn = next((i for i in blocks if i not in softmax), None)
    conv_kernel = _shape(state, f"blocks.{gdn}.attn.conv_k.weight", source)[-1] if gdn is not None else 4
    with_plucker = [i for i in blocks if f"blocks.{i}.plucker_proj.weight" in state]
    if with_plucker != list(range(len(with_plucker))):
        raise ValueError(f"{source}: blocks with a plucker_proj {with_plucker} are not the first n blocks")
    glu_width = _shape(state, "blocks.0.mlp.inverted_conv.conv.weight", source)[0]
    cam_dim = _shape(state, "blocks.0.attn.q_proj_cam.weight", source)[0]
    if cam_dim != hidden:
        raise ValueError(f"{source}: camera branch width {cam_dim} != hidden {hidden}; only cam_attn_compress 1")
    return SanaWMConfig(
        in_channels=in_channels,
        num_layers=depth,
        hidden_size=hidden,
        num_attention_heads=heads,
        linear_head_dim=hidden // heads,
        softmax_every_n=every_n,
        caption_channels=_shape(state, "y_embedder.y_proj.fc1.weight", source)[1],
        mlp_ratio=glu_width / (2 * hidden),
        t_kernel_size=_shape(state, "blocks.0.mlp.t_conv.weight", source)[2],
        conv_kernel_size=conv_kernel,
        chunk_plucker_channels=_shape(state, "plucker_embedder.proj.weight", source)[1],
        chunk_plucker_post_attn_blocks=len(with_plucker),
        variant=variant,
    )


def _resolve(path: Path) -> Path:
    """A released repository's root folder -> the transformer weights inside it; other paths unchanged."""
    if not path.is_dir() or any(p.name.endswith((".safetensors", ".index.json")) for p in path.iterdir()):
        return path
    for sub in _REPO_WEIGHTS:
        if (path / sub).exists():
            return _resolve(path / sub)
    return path


def _read_config_json(folder: Path) -> dict | None:
    file = folder / CONFIG_NAME
    if not file.is_file():
        return None
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from e
    if not isinstance(config, dict) or config.get("_class_name", DIFFUSERS_CLASS) != DIFFUSERS_CLASS:
        found = config.get("_class_name") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{file} is not a {DIFFUSERS_CLASS} config (found {found!r})")
    return config


def load_transformer(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    variant: str | None = None,
    *,
    config: SanaWMConfig | None = None,
) -> SanaWMTransformer:
    """Load a SANA-WM transformer from any released layout (see the module docstring) in eval mode.

    ``path``: an NVlabs ``.safetensors`` file, an NVlabs streaming ``.pt``, a diffusers-layout folder (or its
    index / weights file), or a released repository's root folder (``transformer/``, ``dit/`` or
    ``sana_dit/model.pt`` inside is used). ``variant``: ``"bidirectional"`` or ``"streaming"`` (default: from the
    format). ``config``: use this configuration instead of ``config.json`` / shape inference.

    Raises FileNotFoundError for a missing path; ValueError naming the file for a corrupt or truncated file, a
    pickle holding non-tensor objects, or missing / unexpected / wrongly shaped weights (listed by name).
    """
    path = _resolve(Path(path))
    source = str(path)
    state = read_state_dict(path, key="generator")
    is_pickle = path.suffix in TORCH_SUFFIXES
    if is_pickle:
        state = _strip_model_prefix(state, source)
    state = _to_model_names(state, source)

    folder = path if path.is_dir() else path.parent
    json_config = _read_config_json(folder)
    if variant is None:
        if config is not None:
            variant = config.variant
        elif json_config is not None and VARIANT_KEY in json_config:
            variant = json_config[VARIANT_KEY]
        else:
            variant = "streaming" if is_pickle else "bidirectional"
    if config is not None:
        if config.variant != variant:
            raise ValueError(f"variant={variant!r} contradicts config.variant={config.variant!r}")
        cfg = config
    elif json_config is not None:
        cfg = SanaWMConfig.from_diffusers_config(
            {k: v for k, v in json_config.items() if k != VARIANT_KEY}, variant=variant
        )
    else:
        cfg = infer_config(state, variant=variant, source=source)

    with torch.device("meta"):
        model = SanaWMTransformer(cfg)
    load_into(model, state, source=source, device=device, dtype=dtype)
    return model.eval()


def _atomic_write(target: Path, write) -> None:
    """Write through a temporary file and rename, so that memory maps of an older ``target`` stay valid."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def save_transformer(model: SanaWMTransformer, folder: str | Path, *, max_shard_bytes: int | None = None) -> Path:
    """Write ``model`` as a diffusers-layout folder (``config.json`` + safetensors), readable by
    :func:`load_transformer` and by diffusers' ``SanaWMTransformer3DModel.from_pretrained``.

    ``max_shard_bytes``: split the weights into ``diffusion_pytorch_model-0000i-of-0000n.safetensors`` shards of at
    most this size (a single tensor larger than it gets a shard of its own) with a
    ``diffusion_pytorch_model.safetensors.index.json``. The variant is recorded as ``_sana_wm_variant`` (diffusers
    ignores ``_``-prefixed config keys). Returns the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if any(t.is_meta for t in state.values()):
        raise ValueError("save_transformer: the model still has tensors on the meta device")
    stem = WEIGHTS_NAME.removesuffix(".safetensors")
    for stale in folder.glob(f"{stem}*.safetensors*"):  # weights of an earlier save in the other layout
        stale.unlink()
    config = {
        "_class_name": DIFFUSERS_CLASS,
        "_diffusers_version": DIFFUSERS_VERSION,
        VARIANT_KEY: model.config.variant,
        **model.config.to_diffusers_config(),
    }
    _atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))

    if max_shard_bytes is None:
        shards = [list(state)]
    else:
        shards, size = [[]], 0
        for name, t in state.items():
            nbytes = t.numel() * t.element_size()
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(name)
            size += nbytes
    names = (
        [WEIGHTS_NAME]
        if max_shard_bytes is None
        else [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for file, keys in zip(names, shards):
        part = {k: state[k] for k in keys}
        _atomic_write(folder / file, lambda tmp, part=part: save_file(part, tmp, metadata={"format": "pt"}))
    if max_shard_bytes is not None:
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": {k: f for f, ks in zip(names, shards) for k in ks}}
        _atomic_write(
            folder / f"{WEIGHTS_NAME}.index.json", lambda tmp: Path(tmp).write_text(json.dumps(index, indent=2) + "\n")
        )
    return folder
