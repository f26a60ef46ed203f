"""``World``: the SANA-WM networks (transformer, VAE, prompt encoder) loaded once; starts sessions and renders.

Checkpoint folders (``World.load``):
- streaming release (``SANA-WM_streaming``): ``sana_dit/model.pt``, ``ltx2_causal_vae/``;
- bidirectional release (``SANA-WM_bidirectional``): ``dit/*.safetensors``, ``vae/``;
- diffusers layout: ``transformer/``, ``vae/``;
plus a Gemma-2-2B-IT folder: ``gemma-2-2b-it/`` or ``text_encoder/`` inside the folder, or ``text_encoder=``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

import controllers
import sana_wm
from controllers.conventions import check_poses
from sana_wm.image import default_intrinsics, prepare_image

from .graphs import ChunkGraphs
from .sampler import (
    DEFAULT_FLOW_SHIFT,
    DEFAULT_STEPS,
    StreamingSampler,
    chunk_noise,
    flow_match_sigmas,
    host_to_device,
    sample_bidirectional,
    validate_steps,
)
from .session import LATENT_STRIDE, Session, to_uint8
from .state import SessionSetup, SessionState

DEFAULT_MAPPING = "sana-wm-v2"
"""Key mapping of sessions: NVlabs' streaming layout (a/d yaw, j/l strafe, velocity smoothing)."""

_GEMMA_DIRS = ("gemma-2-2b-it", "text_encoder")
_LAYOUTS = (  # (variant, transformer path, VAE folder)
    ("streaming", "sana_dit/model.pt", "ltx2_causal_vae"),
    ("bidirectional", "dit", "vae"),
    ("bidirectional", "transformer", "vae"),
)


def valid_text(text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A session's prompt without its padding: (1, L, D) embeddings and (1, L) mask -> the (1, n, D) valid prefix and
    None (no mask) when the mask is n ones then zeros (the prompt encoder pads on the right); else both unchanged.

    The cross-attention then runs unmasked over n keys instead of masked over L (same result: masked keys weigh
    zero). Reads the mask on the host: once per session, never per chunk."""
    flags = mask.detach().to("cpu", torch.bool)
    n = int(flags.sum())
    if text.shape[0] != 1 or n == 0 or not bool(flags[0, :n].all()):
        return text, mask
    return text[:, :n].contiguous(), None


class World:
    """Networks loaded once; any number of sessions.

    ``height``/``width`` (multiples of 32) are the default frame size of sessions and renders; each call may
    override them. ``variant`` (the transformer's): ``"streaming"`` worlds run sessions and streaming renders,
    ``"bidirectional"`` worlds run the offline multi-step sampler.
    """

    spatial_stride = 32
    overlap_decode: bool = True
    """CUDA worlds: sessions decode on a side stream while the main stream runs the cache-writing pass and (in
    ``Session.pipeline`` / ``render_path``) the next chunk; False decodes inline after each chunk's transformer work
    (the same frames). Read when a session makes its first chunk. No effect on the CPU (always sequential)."""

    def __init__(self, transformer: torch.nn.Module, vae, prompt_encoder, *, height: int = 704, width: int = 1280,
                 name: str = "sana-wm", compile: bool = False) -> None:
        self.transformer = transformer.eval().requires_grad_(False).prepare_inference()
        self.compiled = bool(compile)
        if self.compiled:  # compiled lazily at the first forward (tens of seconds), then captured in the graphs
            for block in self.transformer.blocks:
                block.compile(dynamic=False)
        self._chunk_graphs: dict[tuple[int, ...], ChunkGraphs] = {}
        # speed switches of the sessions' streaming decoders (sana_wm.STREAMING_DEFAULTS: frames_per_pass,
        # channels_last, cuda_graph, ...; every combination gives the same frames); read when a session starts
        self.decoder_options: dict = {}
        self.vae = vae.eval().requires_grad_(False)
        self.prompt_encoder = prompt_encoder
        self.config = transformer.config
        self.variant = self.config.variant
        self.name = name
        param = next(transformer.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.height, self.width = self._size(height, width)
        if vae.config.latent_channels != self.config.in_channels:
            raise ValueError(f"VAE latent channels ({vae.config.latent_channels}) != transformer in_channels "
                             f"({self.config.in_channels})")
        if prompt_encoder.hidden_size != self.config.caption_channels:
            raise ValueError(f"prompt encoder width ({prompt_encoder.hidden_size}) != transformer caption_channels "
                             f"({self.config.caption_channels})")

    # ------------------------------------------------------------------ construction
    @classmethod
    def demo(cls, height: int = 128, width: int = 224, seed: int = 0, *, variant: str = "streaming",
             device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, compile: bool = False) -> World:
        """Tiny random transformer + tiny random VAE + tiny prompt encoder (smoke runs and tests); the weights are
        a function of ``seed``."""
        cfg = sana_wm.SanaWMConfig.preset("tiny", variant=variant)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            transformer = sana_wm.SanaWMTransformer(cfg)
            vae = sana_wm.LTX2VAE(sana_wm.LTX2VAEConfig.preset("tiny"))
        encoder = sana_wm.PromptEncoder.tiny(hidden_size=cfg.caption_channels, seed=seed, device=device)
        return cls(transformer.to(device, dtype), vae.to(device, dtype), encoder, height=height, width=width,
                   name=f"demo-{variant}-seed{seed}", compile=compile)

    @classmethod
    def load(cls, folder: str | Path, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
             text_encoder: str | Path | None = None, height: int = 704, width: int = 1280,
             compile: bool = False) -> World:
        """Load a downloaded SANA-WM release folder (see the module docstring). Default device: CUDA if present,
        else CPU; default dtype: bf16 on CUDA, fp32 on CPU. A missing part raises FileNotFoundError naming the
        folder and the part. ``compile``: ``torch.compile`` the transformer blocks (slower start: the first chunk
        compiles for tens of seconds; faster chunks after)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"SANA-WM folder {folder} does not exist (or is not a folder)")
        device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        layout = next(((v, t, vae) for v, t, vae in _LAYOUTS if (folder / t).exists()), None)
        if layout is None:
            wanted = " or ".join(f"{t} ({v})" for v, t, _ in _LAYOUTS)
            raise FileNotFoundError(f"SANA-WM folder {folder} has no transformer weights: expected {wanted}")
        variant, dit, vae_dir = layout
        if not (folder / vae_dir).is_dir():
            raise FileNotFoundError(f"SANA-WM folder {folder} has {dit} but no VAE folder {vae_dir}/")
        if text_encoder is None:
            text_encoder = next((folder / d for d in _GEMMA_DIRS if (folder / d).is_dir()), None)
            if text_encoder is None:
                raise FileNotFoundError(
                    f"SANA-WM folder {folder} has no Gemma-2-2B-IT text encoder: expected "
                    f"{' or '.join(d + '/' for d in _GEMMA_DIRS)} inside it, or pass text_encoder=<folder>"
                )
        elif not Path(text_encoder).is_dir():
            raise FileNotFoundError(f"text_encoder folder {text_encoder} does not exist")
        transformer = sana_wm.load_transformer(folder / dit, device=device, dtype=dtype, variant=variant)
        vae = sana_wm.load_vae(folder / vae_dir, device=device, dtype=dtype)
        encoder = sana_wm.PromptEncoder.load(text_encoder, device=device, dtype=dtype)
        return cls(transformer, vae, encoder, height=height, width=width, name=f"{folder.resolve()}:{variant}",
                   compile=compile)

    # ------------------------------------------------------------------ helpers
    def chunk_graphs(self, steps: Sequence[int]) -> ChunkGraphs:
        """The world's ``engine.graphs.ChunkGraphs`` for a step list (one per list, shared by all sessions; CUDA
        graphs on a CUDA world, the eager sampler otherwise)."""
        steps = tuple(steps)
        if steps not in self._chunk_graphs:
            self._chunk_graphs[steps] = ChunkGraphs(self.transformer, steps)
        return self._chunk_graphs[steps]

    def _size(self, height: int | None, width: int | None) -> tuple[int, int]:
        height = getattr(self, "height", None) if height is None else height
        width = getattr(self, "width", None) if width is None else width
        for name, v in (("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0 or v % self.spatial_stride:
                raise ValueError(f"{name} must be a positive multiple of {self.spatial_stride}, got {v!r}")
        return int(height), int(width)

    def _require(self, variant: str, what: str) -> None:
        if self.variant != variant:
            raise ValueError(f"{what} needs a {variant} checkpoint; this world holds the {self.variant} model")

    @staticmethod
    def _check_prompt(prompt, name: str = "prompt") -> str:
        if not isinstance(prompt, str):
            raise TypeError(f"{name} must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise ValueError(f"{name} is empty; SANA-WM needs a text prompt describing the scene")
        return prompt

    @staticmethod
    def _check_seed(seed) -> int:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {seed!r}")
        return int(seed)

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(1,L,caption_channels) embeddings in the transformer's dtype and (1,L) bool mask, on the device;
        cached per prompt by the prompt encoder."""
        emb, mask = self.prompt_encoder.encode([self._check_prompt(prompt)])
        return emb.to(self.device, self.dtype), mask.to(self.device)

    def _negative(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of a negative prompt ("" allowed) for guidance: no instruction prefix (NVlabs / diffusers)."""
        emb, mask = self.prompt_encoder.encode_negative(prompt)
        return emb.to(self.device, self.dtype), mask.to(self.device)

    def _prepare(self, image, intrinsics, fov_deg, size: tuple[int, int]) -> tuple[torch.Tensor, np.ndarray,
                                                                                   np.ndarray]:
        """The first image -> (latent (1,C,1,h,w) fp32 on the device, frame (H,W,3) uint8, frame intrinsics (4,)).

        ``sana_wm.image.prepare_image``: resize + centre crop; intrinsics (or ``fov_deg``, or its default) of the
        source image follow the crop."""
        pixels, k = prepare_image(image, size=size, intrinsics=intrinsics, fov_deg=fov_deg)
        latent = self.vae.encode(host_to_device(pixels[None, :, None], self.device, self.vae.dtype)).float()
        return latent, to_uint8(pixels[None, :, None])[0], k

    def frame_intrinsics(self, image, intrinsics: Sequence[float] | None = None, fov_deg: float | None = None, *,
                         height: int | None = None, width: int | None = None) -> np.ndarray:
        """``[fx, fy, cx, cy]`` (4,) float64 in pixels of the ``height`` x ``width`` frame (default: the world's)
        for a first image, exactly as ``start`` / ``render_path`` derive them (see ``start`` for ``intrinsics`` and
        ``fov_deg``); no network runs."""
        return prepare_image(image, size=self._size(height, width), intrinsics=intrinsics, fov_deg=fov_deg)[1]

    def streaming_decoder(self):
        """A new VAE streaming decoder for a session (``vae.streaming_decoder`` with ``decoder_options``)."""
        return self.vae.streaming_decoder(**self.decoder_options)

    def vae_decoder_step(self, decoder, latents: torch.Tensor) -> torch.Tensor:
        """Decode latent frames (1,C,n,h,w) with a streaming decoder -> pixels (1,3,N,H,W) in [-1,1]. The one call
        site of session decoding (``Session`` runs it through ``engine.graphs.FramePipe``, per decode part:
        ``engine.session.LATENTS_PER_PART`` latent frames)."""
        return decoder.decode(latents.to(self.vae.dtype))

    # ------------------------------------------------------------------ sessions
    @torch.no_grad()
    def start(self, image, prompt: str, *, seed: int = 0, intrinsics: Sequence[float] | None = None,
              fov_deg: float | None = None, height: int | None = None, width: int | None = None,
              steps: Sequence[int] | None = None, mapping: str = DEFAULT_MAPPING,
              on_chunk: Callable | None = None) -> Session:
        """Start a streaming ``Session`` from a first image (PIL | (H,W,3) uint8 | encoded bytes | path).

        The image is resized and centre-cropped to ``height`` x ``width`` and VAE-encoded into latent frame 0.
        ``intrinsics`` ``[fx, fy, cx, cy]`` (or a 3x3 K) in pixels of the source image, or ``fov_deg`` its
        horizontal field of view; default: focal ``0.8 * max(W, H)`` of the source (``sana_wm.image``); they
        follow the resize + crop. ``steps``: the streaming step list (default ``DEFAULT_STEPS``); ``mapping``: the
        key mapping of action strings, keys and live control; ``on_chunk(chunk)``: a per-chunk progress hook.
        """
        self._require("streaming", "a streaming session")
        controller = controllers.LiveController(mapping=mapping)
        setup = self._setup(image, prompt, seed, intrinsics, fov_deg, height, width, steps, mapping)
        h, w = setup.height // self.spatial_stride, setup.width // self.spatial_stride
        cache = self.transformer.new_cache(1, height=h, width=w)
        state = SessionState(setup, cache, self.streaming_decoder(), controller)
        return Session(self, state, on_chunk)

    def _setup(self, image, prompt, seed, intrinsics, fov_deg, height, width, steps, mapping) -> SessionSetup:
        prompt = self._check_prompt(prompt)
        seed = self._check_seed(seed)
        size = self._size(height, width)
        steps = validate_steps(DEFAULT_STEPS if steps is None else steps)
        text, mask = valid_text(*self.encode_prompt(prompt))
        latent, frame, k = self._prepare(image, intrinsics, fov_deg, size)
        return SessionSetup(prompt=prompt, seed=seed, height=size[0], width=size[1], text=text, text_mask=mask,
                            text_inputs=self.transformer.text_inputs(text, mask), first_latent=latent,
                            first_frame=frame, intrinsics=k, steps=steps, mapping=mapping, world=id(self))

    # ------------------------------------------------------------------ offline rendering
    @torch.no_grad()
    def render_path(self, image, prompt: str, c2w: np.ndarray, *, seed: int = 0,
                    intrinsics: Sequence[float] | None = None, fov_deg: float | None = None,
                    sampler: str | None = None, height: int | None = None, width: int | None = None,
                    steps: Sequence[int] | None = None, num_steps: int = 60, guidance_scale: float = 5.0,
                    negative_prompt: str = "", flow_shift: float = DEFAULT_FLOW_SHIFT,
                    progress: bool = True) -> np.ndarray:
        """Render a whole camera path offline; returns the frames for ``c2w[1:]``: (F-1,H,W,3) uint8.

        c2w (F,4,4) camera-to-world (OpenCV), F >= 2, made relative to ``c2w[0]`` (the first image's camera).
        ``sampler``: "streaming" (the chunked self-forcing rollout of a session; ``steps``) or "bidirectional"
        (multi-step flow matching over the whole clip: ``num_steps``, ``flow_shift``, ``guidance_scale`` with
        ``negative_prompt``; first frame pinned); default: the world's variant. A path whose length does not fill
        whole chunks (24k+1 frames streaming, 8k+1 bidirectional) is extended by holding its last pose; the extra
        frames are not returned. ``progress``: a tqdm bar over chunks / steps.
        """
        sampler = self.variant if sampler is None else sampler
        if sampler not in ("streaming", "bidirectional"):
            raise ValueError(f"sampler must be 'streaming' or 'bidirectional', got {sampler!r}")
        self._require(sampler, f"sampler={sampler!r}")
        poses = check_poses(c2w, name="c2w")
        if len(poses) < 2:
            raise ValueError(f"c2w must hold at least 2 poses (frame 0 = the image's camera), got {len(poses)}")
        poses = np.linalg.inv(poses[0]) @ poses
        poses[0] = np.eye(4)
        n_out = len(poses) - 1
        if sampler == "streaming":
            return self._render_streaming(image, prompt, poses, n_out, seed, intrinsics, fov_deg, height, width,
                                          steps, progress)
        return self._render_bidirectional(image, prompt, poses, n_out, seed, intrinsics, fov_deg, height, width,
                                          num_steps, guidance_scale, negative_prompt, flow_shift, progress)

    def _render_streaming(self, image, prompt, poses, n_out, seed, intrinsics, fov_deg, height, width, steps,
                          progress) -> np.ndarray:
        from tqdm.auto import tqdm

        session = self.start(image, prompt, seed=seed, intrinsics=intrinsics, fov_deg=fov_deg, height=height,
                             width=width, steps=steps)
        per = session.frames_per_chunk
        n_chunks = -(-n_out // per)
        padded = np.concatenate([poses[1:], np.broadcast_to(poses[-1], (n_chunks * per - n_out, 4, 4))])
        frames = np.empty((n_out, session.height, session.width, 3), np.uint8)
        with session, tqdm(total=n_chunks, desc="render", unit="chunk", disable=not progress) as bar:
            inputs = (padded[c * per : (c + 1) * per] for c in range(n_chunks))
            for c, chunk in enumerate(session.pipeline(inputs)):  # chunk c decodes while chunk c + 1 denoises
                keep = min(per, n_out - c * per)
                frames[c * per : c * per + keep] = chunk.frames[:keep]
                bar.update(1)
        return frames

    def _render_bidirectional(self, image, prompt, poses, n_out, seed, intrinsics, fov_deg, height, width,
                              num_steps, guidance_scale, negative_prompt, flow_shift, progress) -> np.ndarray:
        prompt = self._check_prompt(prompt)
        seed = self._check_seed(seed)
        size = self._size(height, width)
        n_lat = -(-n_out // LATENT_STRIDE) + 1
        n_px = 1 + LATENT_STRIDE * (n_lat - 1)
        poses = np.concatenate([poses, np.broadcast_to(poses[-1], (n_px - len(poses), 4, 4))])
        text, mask = self.encode_prompt(prompt)
        latent, _, k = self._prepare(image, intrinsics, fov_deg, size)
        frames = self._sample_offline(latent, poses, k, size, n_lat, seed, text, mask, num_steps, guidance_scale,
                                      negative_prompt, flow_shift, progress)
        return frames[1 : 1 + n_out]

    def _sample_offline(self, first_latent, poses, k, size, n_lat, seed, text, mask, num_steps, guidance_scale,
                        negative_prompt, flow_shift, progress) -> np.ndarray:
        """Bidirectional multi-step sampling of ``n_lat`` latent frames and a full decode -> (F,H,W,3) uint8."""
        if not isinstance(negative_prompt, str):
            raise TypeError(f"negative_prompt must be a string, got {type(negative_prompt).__name__}")
        raymap, plucker = controllers.camera_conditioning(poses, k, size, 0, n_lat)
        h, w = size[0] // self.spatial_stride, size[1] // self.spatial_stride
        noise = chunk_noise(seed, 0, (1, self.config.in_channels, n_lat, h, w), self.device)
        neg = self._negative(negative_prompt) if guidance_scale > 1 else (None, None)
        latents = sample_bidirectional(
            self.transformer, noise, first_latent, text=text, text_mask=mask,
            raymap=host_to_device(raymap[None], self.device, self.dtype),
            plucker=host_to_device(plucker[None], self.device, self.dtype),
            sigmas=flow_match_sigmas(num_steps, flow_shift), guidance_scale=guidance_scale, negative_text=neg[0],
            negative_mask=neg[1], progress=progress)
        return to_uint8(self.vae.decode(latents.to(self.vae.dtype)))

    # ------------------------------------------------------------------ stills
    @torch.no_grad()
    def render_image(self, prompt: str, *, seed: int = 0, image=None, pose: np.ndarray | None = None,
                     intrinsics: Sequence[float] | None = None, fov_deg: float | None = None,
                     height: int | None = None, width: int | None = None, num_steps: int = 60,
                     guidance_scale: float = 5.0, negative_prompt: str = "",
                     flow_shift: float = DEFAULT_FLOW_SHIFT) -> np.ndarray:
        """One still frame (H,W,3) uint8.

        Without ``image``: a one-latent-frame rollout from the prompt alone (identity camera). With ``image``: the
        frame a fresh session would show at ``pose`` ((4,4) c2w relative to the image's camera; default
        identity): streaming worlds generate one latent frame after the image with the camera held at ``pose``
        and return its last pixel frame (``Session.render_image``); bidirectional worlds sample a 4-latent-frame
        clip holding ``pose`` and return its last frame. Streaming worlds use the streaming step list;
        bidirectional worlds the multi-step sampler (``num_steps``, ``guidance_scale``, ``negative_prompt``,
        ``flow_shift``).
        """
        if pose is not None and image is None:
            raise ValueError("pose needs an image: a still from a prompt alone has no camera to move")
        if image is not None and self.variant == "streaming":
            with self.start(image, prompt, seed=seed, intrinsics=intrinsics, fov_deg=fov_deg, height=height,
                            width=width) as session:
                return session.render_image(np.eye(4) if pose is None else pose)
        prompt = self._check_prompt(prompt)
        seed = self._check_seed(seed)
        size = self._size(height, width)
        text, mask = self.encode_prompt(prompt)
        if image is None:
            if intrinsics is not None:
                raise ValueError("intrinsics need an image (they are given in its pixels); use fov_deg")
            first, n_lat, poses = None, 1, np.eye(4)[None]
            k = default_intrinsics(size[1], size[0], fov_deg)
        else:
            first, _, k = self._prepare(image, intrinsics, fov_deg, size)
            pose = np.eye(4) if pose is None else check_poses(np.asarray(pose)[None], name="pose")[0]
            n_lat, poses = 4, np.concatenate([np.eye(4)[None], np.broadcast_to(pose, (3 * LATENT_STRIDE, 4, 4))])
        if self.variant == "bidirectional":
            frames = self._sample_offline(first, poses, k, size, n_lat, seed, text, mask, num_steps, guidance_scale,
                                          negative_prompt, flow_shift, progress=False)
            return frames[-1]
        h, w = size[0] // self.spatial_stride, size[1] // self.spatial_stride
        raymap, plucker = controllers.camera_conditioning(poses, k, size, 0, 1)
        noise = chunk_noise(seed, 0, (1, self.config.in_channels, 1, h, w), self.device)
        latents = StreamingSampler(self.transformer).denoise(
            noise, pinned=None, text=text, text_mask=mask,
            raymap=host_to_device(raymap[None], self.device, self.dtype),
            plucker=host_to_device(plucker[None], self.device, self.dtype), cache=None, start_frame=0)
        return to_uint8(self.vae.decode(latents.to(self.vae.dtype)))[0]
