"""SANA-WM networks with weights: the transformer, the LTX-2 VAE, the Gemma-2 prompt encoder, checkpoint I/O.

Public names (imported lazily so that ``import sana_wm`` stays cheap):

- ``SanaWMConfig``: model configuration, ``SanaWMConfig.preset("streaming-2.6b" | "bidirectional-2.6b" | "tiny")``.
- ``SanaWMTransformer``: the DiT; ``model(...)``, ``model.forward_chunk(...)``, ``model.new_cache(...)``.
- ``load_transformer(path, device=..., dtype=..., variant=...)``: NVlabs ``.safetensors`` / streaming ``.pt`` /
  diffusers folder.
- ``LTX2VAE``, ``load_vae(path)``: the LTX-2 video VAE with a streaming decoder.
- ``PromptEncoder``: Gemma-2 prompt embeddings with SANA-WM's instruction prefix.
"""

from importlib import import_module

_EXPORTS = {
    "SanaWMConfig": "sana_wm.config",
    "SanaWMTransformer": "sana_wm.transformer",
    "StreamingCache": "sana_wm.cache",
    "load_transformer": "sana_wm.checkpoint",
    "save_transformer": "sana_wm.checkpoint",
    "LTX2VAE": "sana_wm.vae",
    "LTX2VAEConfig": "sana_wm.vae",
    "load_vae": "sana_wm.vae",
    "PromptEncoder": "sana_wm.text_encoder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sana_wm' has no attribute {name!r}")
