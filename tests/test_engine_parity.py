"""The offline bidirectional sampler (``World.render_path(sampler="bidirectional")``) against diffusers 0.42.1
``SanaWMPipeline`` built from the same tiny networks (CPU, fp32): same prompt, negative prompt, guidance, flow
shift, step count, camera path, intrinsics and noise (the pipeline gets the engine's noise generator).

diffusers casts fp32 q/k/v to bf16 right before its softmax SDPA (a FlashAttention workaround, a no-op in bf16
inference); the reference runs with ``Tensor.bfloat16`` made an identity so both sides compute in fp32.
"""

import numpy as np
import torch
from diffusers import AutoencoderKLLTX2Video, FlowMatchEulerDiscreteScheduler
from diffusers.models.transformers.transformer_sana_wm import SanaWMTransformer3DModel
from diffusers.pipelines.sana_wm.pipeline_sana_wm import SanaWMPipeline
from PIL import Image

import controllers
from engine import World
from engine.sampler import noise_generator

H, W = 64, 64


def test_bidirectional_render_path_equals_diffusers_pipeline(monkeypatch):
    world = World.demo(height=H, width=W, seed=0, variant="bidirectional")
    transformer = SanaWMTransformer3DModel(**world.transformer.config.to_diffusers_config()).eval()
    transformer.load_state_dict(world.transformer.state_dict(), strict=True)
    vae = AutoencoderKLLTX2Video(**world.vae.config.to_diffusers_config()).eval()
    vae.load_state_dict(world.vae.state_dict(), strict=True)
    encoder = world.prompt_encoder
    pipe = SanaWMPipeline(tokenizer=encoder.tokenizer, text_encoder=encoder.model, vae=vae, transformer=transformer,
                          scheduler=FlowMatchEulerDiscreteScheduler(shift=9.8))

    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (72, 90, 3), dtype=np.uint8))
    c2w = controllers.actions_to_poses("w-10,a-6", mapping="sana-wm-v1")  # 17 poses = 3 latent frames
    intrinsics = [60.0, 62.0, 45.0, 36.0]
    kwargs = {"num_inference_steps": 4, "guidance_scale": 3.0, "negative_prompt": "blurry"}
    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "bfloat16", lambda self, *args, **kw: self)
        out = pipe(image, "a red lighthouse", c2w=c2w, intrinsics=intrinsics, height=H, width=W, num_frames=17,
                   generator=noise_generator(5, 0), output_type="np", **kwargs)
    ref = (out.frames * 255).round().astype(np.uint8)[1:]  # the engine does not return the conditioning frame

    ours = world.render_path(image, "a red lighthouse", c2w, intrinsics=intrinsics, seed=5, num_steps=4,
                             guidance_scale=3.0, negative_prompt="blurry", flow_shift=9.8, progress=False)
    assert ours.shape == ref.shape == (16, H, W, 3)
    diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
