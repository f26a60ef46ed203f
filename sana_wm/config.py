"""Configuration of the SANA-WM transformer (:class:`SanaWMConfig`).

Field names follow diffusers' ``SanaWMTransformer3DModel`` config where a field exists there; the fields after
``chunk_plucker_post_attn_blocks`` are ours and describe the variant and the streaming geometry:

- ``variant``: ``"bidirectional"`` (the diffusers / NVlabs bidirectional release) or ``"streaming"`` (the NVlabs
  distilled chunk-causal student).
- ``post_ucpe_rms_downscale``: scale the UCPE-transformed camera q/k/v back to their pre-UCPE per-token RMS before
  the scan / SDPA (diffusers does, so ``True`` for bidirectional; NVlabs' streaming kernels do not, ``False``).
- ``softmax_scale``: scale of the main softmax branch. Bidirectional: ``1/sqrt(head_dim)`` (diffusers). Streaming:
  ``padded_softmax_scale(head_dim)`` = ``1/sqrt(128)`` for head_dim 112 (NVlabs zero-pads 112 -> 128 before SDPA).
  The camera softmax branch always uses ``padded_softmax_scale(head_dim)`` (diffusers pads it too).
- ``cam_conv_cross_chunk``: in chunk-causal forwards, whether the camera K short conv sees previous chunks (like the
  main K conv) or only the current chunk. ``True`` bidirectional (chunk-causal training), ``False`` streaming
  (NVlabs' cached camera branch has no cross-chunk tail).
- ``chunk_size``: latent frames per autoregressive chunk (the first chunk has ``chunk_size + 1``: the image latent).
- ``window_chunks``: softmax K/V window in chunks besides the sink chunk 0 (1 = NVlabs ``num_cached_blocks=2`` with
  ``sink_token``).
- ``rope_theta``: RoPE base; ``extra_diffusers_fields``: diffusers keys without effect here, kept for round trips.

Supported layout: patch (1, 1, 1), GLUMBConvTemp FFN with a 3-frame temporal conv, K-only short convs, q/k/cross/y
norms, ``cam_attn_compress`` 1 (what every released checkpoint uses); other diffusers values raise ``ValueError``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SanaWMConfig", "padded_softmax_scale"]

_VARIANTS = ("bidirectional", "streaming")

# Diffusers config keys that must hold exactly these values: the released checkpoints use them and this
# implementation does not support alternatives.
_FIXED_DIFFUSERS_FIELDS: dict[str, Any] = {
    "patch_size": [1, 1, 1],
    "ffn_type": "GLUMBConvTemp",
    "k_conv_only": True,
    "pos_embed_type": "wan_rope",
    "qk_norm": True,
    "cross_norm": True,
    "y_norm": True,
    "cam_attn_compress": 1,
    "use_chunk_plucker_post_attn": True,
    "mlp_acts": ["silu", "silu", None],
    "use_pe": True,
    "pred_sigma": False,
}
# Diffusers config keys with no effect on the computation (kept for round trips).
_IGNORED_DIFFUSERS_FIELDS = (
    "init_cam_from_base",
    "fp32_attention",
    "image_size",
    "learn_sigma",
    "mixed_precision",
)  # plus diffusers' own "_"-prefixed metadata keys


def padded_softmax_scale(head_dim: int) -> float:
    """Softmax scale of an SDPA whose head dim was zero-padded to a FlashAttention size (NVlabs / diffusers).

    Head dims 32/64/128/256 (and >= 256) are not padded; others are padded to 128 (or 256), so SDPA's default scale
    becomes ``1/sqrt(128)``. For SANA-WM's head_dim 112 this is ``1/sqrt(128)``, not ``1/sqrt(112)``.
    """
    if head_dim in (32, 64, 128, 256) or head_dim >= 256:
        return head_dim**-0.5
    return (128 if head_dim <= 128 else 256) ** -0.5


@dataclass
class SanaWMConfig:
    """SANA-WM DiT hyper-parameters. Build with :meth:`preset` or :meth:`from_diffusers_config`.

    ``None`` in a variant-dependent field (``post_ucpe_rms_downscale``, ``softmax_scale``, ``cam_conv_cross_chunk``)
    means "the variant's default" and is resolved in ``__post_init__``.
    """

    in_channels: int = 128
    num_layers: int = 20
    hidden_size: int = 2240
    num_attention_heads: int = 20  # cross-attention heads
    linear_head_dim: int = 112  # self-attention head dim (GDN and softmax blocks); heads = hidden / head_dim
    softmax_every_n: int = 4  # block i is softmax iff (i + 1) % n == 0 (n = 0: no softmax blocks)
    caption_channels: int = 2304
    mlp_ratio: float = 3.0
    t_kernel_size: int = 3
    conv_kernel_size: int = 4
    chunk_plucker_channels: int = 48
    chunk_plucker_post_attn_blocks: int = 20  # blocks [0, n) get a plucker_proj; -1 = all
    variant: str = "bidirectional"
    post_ucpe_rms_downscale: bool | None = None
    softmax_scale: float | None = None
    cam_conv_cross_chunk: bool | None = None
    chunk_size: int = 3
    window_chunks: int = 1
    rope_theta: float = 10000.0
    extra_diffusers_fields: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.variant not in _VARIANTS:
            raise ValueError(f"SanaWMConfig.variant must be one of {_VARIANTS}, got {self.variant!r}.")
        streaming = self.variant == "streaming"
        if self.post_ucpe_rms_downscale is None:
            self.post_ucpe_rms_downscale = not streaming
        if self.cam_conv_cross_chunk is None:
            self.cam_conv_cross_chunk = not streaming
        if self.hidden_size % self.linear_head_dim:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of linear_head_dim ({self.linear_head_dim})."
            )
        if self.linear_head_dim % 8:
            raise ValueError(
                f"linear_head_dim must be a multiple of 8 (UCPE 4x4 groups on half the head), got {self.linear_head_dim}."
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_attention_heads})."
            )
        if self.softmax_scale is None:
            self.softmax_scale = padded_softmax_scale(self.linear_head_dim) if streaming else self.linear_head_dim**-0.5
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}.")
        if self.window_chunks < 0:
            raise ValueError(f"window_chunks must be >= 0, got {self.window_chunks}.")
        if self.conv_kernel_size < 1 or self.t_kernel_size != 3:
            raise ValueError(
                f"conv_kernel_size must be >= 1 and t_kernel_size 3, got {self.conv_kernel_size}, {self.t_kernel_size}."
            )

    # ------------------------------------------------------------------ derived geometry
    @property
    def num_heads(self) -> int:
        """Self-attention heads (main and camera branch)."""
        return self.hidden_size // self.linear_head_dim

    @property
    def head_dim(self) -> int:
        return self.linear_head_dim

    @property
    def cam_softmax_scale(self) -> float:
        """Scale of the camera softmax branch (head dim zero-padded like NVlabs / diffusers)."""
        return padded_softmax_scale(self.linear_head_dim)

    @property
    def first_chunk_size(self) -> int:
        """Latent frames in chunk 0 (the image latent + ``chunk_size``)."""
        return self.chunk_size + 1

    def is_softmax_block(self, index: int) -> bool:
        return self.softmax_every_n > 0 and (index + 1) % self.softmax_every_n == 0

    @property
    def softmax_blocks(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_layers) if self.is_softmax_block(i))

    def has_plucker_proj(self, index: int) -> bool:
        n = self.chunk_plucker_post_attn_blocks
        return n < 0 or index < n

    def chunk_bounds(self, num_frames: int) -> list[tuple[int, int]]:
        """Chunks ``[(start, end), ...]`` of a clip of ``num_frames`` latent frames ("first_chunk_plus_one").

        Chunk 0 = frames ``[0, chunk_size + 1)``, then ``chunk_size`` frames each; a short remainder is merged into the
        last chunk (so ``num_frames`` = 1 + 3k gives chunks 4, 3, 3, ...).
        """
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}.")
        starts = [0, *range(self.chunk_size + 1, num_frames, self.chunk_size)]
        if len(starts) > 1 and num_frames - starts[-1] < self.chunk_size:
            starts.pop()
        return [(s, e) for s, e in zip(starts, [*starts[1:], num_frames])]

    # ------------------------------------------------------------------ constructors
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SanaWMConfig:
        """``"bidirectional-2.6b"``, ``"streaming-2.6b"`` or ``"tiny"`` (a small random-weight model: in_channels 16,
        hidden 64, 2 heads x 32, 4 blocks with block 3 softmax, caption_channels 64; streaming variant by default).
        Keyword overrides replace fields (e.g. ``preset("tiny", variant="bidirectional")``)."""
        presets = {
            "bidirectional-2.6b": {"variant": "bidirectional"},
            "streaming-2.6b": {"variant": "streaming"},
            "tiny": {
                "variant": "streaming",
                "in_channels": 16,
                "num_layers": 4,
                "hidden_size": 64,
                "num_attention_heads": 2,
                "linear_head_dim": 32,
                "softmax_every_n": 4,
                "caption_channels": 64,
                "chunk_plucker_post_attn_blocks": -1,
            },
        }
        if name not in presets:
            raise ValueError(f"Unknown SanaWMConfig preset {name!r}; expected one of {sorted(presets)}.")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"Unknown SanaWMConfig field(s) {sorted(unknown)} in preset overrides.")
        return cls(**{**presets[name], **overrides})

    @classmethod
    def from_diffusers_config(cls, config: dict[str, Any], **overrides: Any) -> SanaWMConfig:
        """Read a diffusers ``SanaWMTransformer3DModel`` ``config.json`` dict.

        Our own fields (``variant``, ``window_chunks``, ...) are not in diffusers configs: pass them as overrides.
        Raises ``ValueError`` for a key/value this implementation does not support (naming it).
        """
        if not isinstance(config, dict):
            raise TypeError(
                f"from_diffusers_config expects a dict (config.json contents), got {type(config).__name__}."
            )
        own = {f.name for f in dataclasses.fields(cls)} - {"extra_diffusers_fields"}
        mapped = {
            "in_channels",
            "num_layers",
            "hidden_size",
            "num_attention_heads",
            "linear_head_dim",
            "softmax_every_n",
            "caption_channels",
            "mlp_ratio",
            "t_kernel_size",
            "conv_kernel_size",
            "chunk_plucker_channels",
            "chunk_plucker_post_attn_blocks",
        }
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in config.items():
            if key in mapped:
                kwargs[key] = value
            elif key in _FIXED_DIFFUSERS_FIELDS:
                expected = _FIXED_DIFFUSERS_FIELDS[key]
                got = list(value) if isinstance(value, (list, tuple)) else value
                if got != expected:
                    raise ValueError(
                        f"diffusers config field {key!r} = {value!r} is not supported (expected {expected!r})."
                    )
            elif key in _IGNORED_DIFFUSERS_FIELDS or key.startswith("_"):
                extra[key] = value
            else:
                raise ValueError(f"Unknown diffusers SanaWMTransformer3DModel config field {key!r} = {value!r}.")
        unknown = set(overrides) - own
        if unknown:
            raise TypeError(f"Unknown SanaWMConfig field(s) {sorted(unknown)} in overrides.")
        return cls(**kwargs, **overrides, extra_diffusers_fields=extra)

    def to_diffusers_config(self) -> dict[str, Any]:
        """A diffusers ``SanaWMTransformer3DModel`` config dict (``SanaWMTransformer3DModel(**cfg)`` builds the same
        parameter layout)."""
        out: dict[str, Any] = {
            "in_channels": self.in_channels,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads,
            "linear_head_dim": self.linear_head_dim,
            "softmax_every_n": self.softmax_every_n,
            "caption_channels": self.caption_channels,
            "mlp_ratio": self.mlp_ratio,
            "t_kernel_size": self.t_kernel_size,
            "conv_kernel_size": self.conv_kernel_size,
            "chunk_plucker_channels": self.chunk_plucker_channels,
            "chunk_plucker_post_attn_blocks": self.chunk_plucker_post_attn_blocks,
        }
        out.update({k: (list(v) if isinstance(v, list) else v) for k, v in _FIXED_DIFFUSERS_FIELDS.items()})
        out["patch_size"] = tuple(out["patch_size"])
        out["mlp_acts"] = tuple(out["mlp_acts"])
        out.update({k: v for k, v in self.extra_diffusers_fields.items() if not k.startswith("_")})
        return out
