"""sana_wm.text_encoder: the prompt window equals diffusers' SanaWMPipeline.encode_prompt; caching; errors."""

import pytest
import torch

pytest.importorskip("transformers")  # optional on a bare GPU box: skip cleanly rather than error

from sana_wm.text_encoder import CHI_PROMPT, PromptEncoder


@pytest.fixture(scope="module")
def enc():
    return PromptEncoder.tiny(hidden_size=64, seed=0)


def _count_forwards(encoder):
    calls = []
    encoder.model.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_shapes_and_mask_semantics(enc):
    prompts = ["a harbour at dusk", "x"]
    emb, mask = enc.encode(prompts)
    assert emb.shape == (2, 300, 64) and emb.dtype == torch.float32
    assert mask.shape == (2, 300) and mask.dtype == torch.bool
    for row, prompt in zip(mask, prompts):
        # BOS, the last token of the instruction prefix, then one byte-token per prompt byte, then padding
        n = 2 + len(prompt.encode())
        assert row[:n].all() and not row[n:].any()
    # a prompt longer than the window fills it: truncated on the right, no padding
    _, full = enc.encode("a very long prompt " * 30)
    assert full.all()


def test_window_matches_diffusers_encode_prompt(enc):
    from diffusers.pipelines.sana_wm.pipeline_sana_wm import DEFAULT_CHI_PROMPT, SanaWMPipeline

    assert CHI_PROMPT == "\n".join(DEFAULT_CHI_PROMPT)
    pipe = SanaWMPipeline(tokenizer=enc.tokenizer, text_encoder=enc.model, vae=None, transformer=None, scheduler=None)
    prompts = ["a harbour at dusk", "a red lighthouse on a cliff, waves below " * 12]
    ours, ours_mask = enc.encode(prompts)  # batched: must equal diffusers' one-at-a-time encoding
    for i, prompt in enumerate(prompts):
        ref, ref_mask, _, _ = pipe.encode_prompt(prompt, device=torch.device("cpu"), chi_prompt=DEFAULT_CHI_PROMPT)
        assert ref.shape == (1, 1, 300, 64)
        torch.testing.assert_close(ours[i], ref[0, 0], rtol=0, atol=1e-6)
        assert torch.equal(ours_mask[i], ref_mask[0].bool())


def test_negative_prompt_matches_diffusers(enc):
    from diffusers.pipelines.sana_wm.pipeline_sana_wm import SanaWMPipeline

    pipe = SanaWMPipeline(tokenizer=enc.tokenizer, text_encoder=enc.model, vae=None, transformer=None, scheduler=None)
    negatives = ["", "blurry, low quality " * 20]
    ours, ours_mask = enc.encode_negative(negatives)
    assert ours.shape == (2, 300, 64) and ours_mask[0].sum() == 1  # "" -> BOS only
    for i, negative in enumerate(negatives):
        _, _, ref, ref_mask = pipe.encode_prompt("unused", negative, device=torch.device("cpu"))
        torch.testing.assert_close(ours[i], ref[0, 0], rtol=0, atol=1e-6)
        assert torch.equal(ours_mask[i], ref_mask[0].bool())
    with pytest.raises(TypeError, match="prompt 0 is a NoneType"):
        enc.encode_negative([None])


def test_memory_and_disk_cache(tmp_path):
    enc = PromptEncoder.tiny(cache_size=2, cache_dir=tmp_path)
    calls = _count_forwards(enc)
    a, a_mask = enc.encode("a harbour at dusk")
    enc.encode(["a harbour at dusk", "a harbour at dusk"])
    assert len(calls) == 1
    enc.encode(["b", "c"])  # one batched run for both; "a harbour at dusk" is evicted from memory
    assert len(calls) == 2 and len(enc._cache) == 2

    fresh = PromptEncoder.tiny(cache_dir=tmp_path)  # same model id: served from disk without running the model
    fresh_calls = _count_forwards(fresh)
    b, b_mask = fresh.encode("a harbour at dusk")
    assert not fresh_calls
    assert torch.equal(a, b) and torch.equal(a_mask, b_mask)

    other = PromptEncoder.tiny(seed=1, cache_dir=tmp_path)  # a different model never reads these files
    other_calls = _count_forwards(other)
    other.encode("a harbour at dusk")
    assert len(other_calls) == 1


def test_bad_prompts_are_rejected(enc):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        enc.encode(["ok", "  "])
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        enc.encode("")
    with pytest.raises(ValueError, match="no prompts"):
        enc.encode([])
    with pytest.raises(TypeError, match="prompt 0 is a int"):
        enc.encode([3])


def test_load_from_local_folder_and_offload(tmp_path, enc):
    enc.model.save_pretrained(tmp_path)
    enc.tokenizer.save_pretrained(tmp_path)
    loaded = PromptEncoder.load(tmp_path, device="cpu", dtype=torch.float32)
    assert loaded.hidden_size == 64
    emb, mask = loaded.encode("a harbour at dusk")
    ref, ref_mask = enc.encode("a harbour at dusk")
    assert torch.equal(emb, ref) and torch.equal(mask, ref_mask)
    loaded.offload()
    assert next(loaded.model.parameters()).device.type == "cpu"
    assert torch.equal(loaded.encode("another prompt")[0], enc.encode("another prompt")[0])

    with pytest.raises(FileNotFoundError, match="no_gemma_here"):
        PromptEncoder.load(tmp_path / "no_gemma_here")


@pytest.mark.gpu
def test_offload_frees_the_gpu():
    tiny = PromptEncoder.tiny()
    enc = PromptEncoder(tiny.model, tiny.tokenizer, model_id=tiny.model_id, device="cuda")
    emb, mask = enc.encode("a harbour at dusk")
    assert emb.device.type == "cuda" and mask.device.type == "cuda"
    enc.offload()
    assert next(enc.model.parameters()).device.type == "cpu"
    again, _ = enc.encode("something new")
    assert again.device.type == "cuda"
