"""Prompt embeddings for SANA-WM: Gemma-2 last hidden states with SANA's instruction prefix (:class:`PromptEncoder`).

The prompt window (identical to diffusers' ``SanaWMPipeline.encode_prompt`` and NVlabs' inference script):
the instruction prefix ``CHI_PROMPT`` is prepended to the prompt; the text is tokenised (BOS added, right padding,
truncation) to ``len(tokens(CHI_PROMPT)) + 300 - 2`` tokens; the whole sequence runs through Gemma-2 so every
prompt token attends to the prefix; then token 0 (BOS) and the last 299 tokens are kept, hidden states and
attention mask alike -> 300 tokens.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["CHI_PROMPT", "MAX_LENGTH", "PromptEncoder", "tiny_tokenizer"]

MAX_LENGTH = 300
# SANA-WM's instruction prefix ("chi prompt"), the 8 lines of the release config joined by newlines.
CHI_PROMPT = "\n".join(
    [
        (
            'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions suitable '
            "for image generation. Evaluate the level of detail in the user prompt:"
        ),
        (
            "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial "
            "relationships to create vivid and concrete scenes."
        ),
        (
            "- If the prompt is already detailed, refine and enhance the existing details slightly without "
            "overcomplicating."
        ),
        "Here are examples of how to transform or refine prompts:",
        (
            "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, "
            "sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers."
        ),
        (
            "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing "
            "street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by "
            "towering glass skyscrapers."
        ),
        (
            "Please generate only the enhanced description for the prompt below and avoid including any additional "
            "commentary or evaluations:"
        ),
        "User Prompt: ",
    ]
)


def tiny_tokenizer():
    """A byte-level tokenizer built in code (no download): ids 0..3 = ``<pad> <eos> <bos> <unk>`` (Gemma's order
    for the first three), then the 256 bytes; BOS is prepended like Gemma's tokenizer does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        padding_side="right",
    )


class PromptEncoder:
    """Gemma-2 prompt encoder with SANA-WM's prompt window and an LRU cache (in memory, optionally on disk).

    ``PromptEncoder.load(folder, device, dtype)`` for the real ``gemma-2-2b-it`` folder (local files only);
    ``PromptEncoder.tiny()`` for a small random model with a tokenizer built in code (tests, demo world).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        model_id: str,
        device: torch.device | str = "cpu",
        max_length: int = MAX_LENGTH,
        chi_prompt: str = CHI_PROMPT,
        cache_size: int = 32,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = torch.device(device)
        self.max_length = max_length
        self.chi_prompt = chi_prompt
        self.cache_size = cache_size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        # length of the tokenised prefix (BOS included), as diffusers computes it
        self._prefix_tokens = len(tokenizer.encode(chi_prompt)) if chi_prompt else 0

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @classmethod
    def load(
        cls,
        folder: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        **kwargs,
    ) -> PromptEncoder:
        """Gemma-2 (e.g. ``gemma-2-2b-it``) from a local folder holding its config, weights and tokenizer; never
        downloads. ``kwargs`` go to the constructor (``cache_dir``, ``cache_size``, ...)."""
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} is not a local Gemma-2 folder (no config.json); download it first")
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=dtype)
        if model.config.model_type != "gemma2":
            raise ValueError(f"{folder} holds a {model.config.model_type!r} model, expected Gemma-2 ('gemma2')")
        model_id = f"{folder.resolve()}:{str(dtype).removeprefix('torch.')}"
        return cls(model.to(device), tokenizer, model_id=model_id, device=device, **kwargs)

    @classmethod
    def tiny(cls, hidden_size: int = 64, seed: int = 0, **kwargs) -> PromptEncoder:
        """A 2-layer random Gemma-2 of width ``hidden_size`` with :func:`tiny_tokenizer`, on the CPU in fp32."""
        from transformers import Gemma2Config, Gemma2Model

        tokenizer = tiny_tokenizer()
        config = Gemma2Config(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=hidden_size // 2,
            query_pre_attn_scalar=hidden_size // 2,
            max_position_embeddings=4096,
            sliding_window=4096,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Gemma2Model(config)
        return cls(model, tokenizer, model_id=f"tiny-gemma2-h{hidden_size}-seed{seed}", **kwargs)

    def offload(self) -> None:
        """Move the text model to the CPU (frees accelerator memory); the next uncached :meth:`encode` moves it back."""
        self.model.to("cpu")

    def _key(self, prompt: str, chi_prompt: str) -> str:
        text = "\0".join([self.model_id, str(self.max_length), chi_prompt, prompt])
        return hashlib.sha256(text.encode()).hexdigest()

    def _disk_get(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.cache_dir is None or not (file := self.cache_dir / f"{key}.safetensors").is_file():
            return None
        try:
            data = load_file(file)
        except SafetensorError as e:
            raise ValueError(f"prompt cache file {file} is corrupt ({e}); delete it") from e
        return data["embeddings"].to(self.device), data["mask"].to(self.device)

    def _disk_put(self, key: str, emb: torch.Tensor, mask: torch.Tensor) -> None:
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_dir / f".{key}.tmp"
        save_file({"embeddings": emb.cpu().contiguous(), "mask": mask.cpu()}, tmp)
        tmp.replace(self.cache_dir / f"{key}.safetensors")

    @torch.no_grad()
    def _run(self, prompts: list[str], chi_prompt: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(len(prompts), max_length, hidden) embeddings and (len(prompts), max_length) bool mask, uncached.

        ``chi_prompt``: the instruction prefix (default ``self.chi_prompt``); ``""`` = plain right-padded window.
        """
        chi = self.chi_prompt if chi_prompt is None else chi_prompt
        if chi:
            texts = [chi + p for p in prompts]
            prefix_tokens = self._prefix_tokens if chi == self.chi_prompt else len(self.tokenizer.encode(chi))
            length = prefix_tokens + self.max_length - 2
        else:
            texts, length = prompts, self.max_length
        tokens = self.tokenizer(
            texts, max_length=length, padding="max_length", padding_side="right", truncation=True, return_tensors="pt"
        ).to(self.device)
        self.model.to(self.device)
        hidden = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        keep = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(length - self.max_length + 1, length)])
        keep = keep.to(self.device)
        return hidden[:, keep], tokens.attention_mask[:, keep].bool()

    def _cached(self, prompts: list[str], chi_prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        unique = list(dict.fromkeys(prompts))
        keys = {p: self._key(p, chi_prompt) for p in unique}
        found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for p in unique:
            if keys[p] in self._cache:
                found[p] = self._cache[keys[p]]
            elif (hit := self._disk_get(keys[p])) is not None:
                found[p] = hit
        missing = [p for p in unique if p not in found]
        if missing:
            emb, mask = self._run(missing, chi_prompt)
            for i, p in enumerate(missing):
                found[p] = (emb[i], mask[i])
                self._disk_put(keys[p], emb[i], mask[i])
        for p in unique:
            self._cache[keys[p]] = found[p]
            self._cache.move_to_end(keys[p])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return torch.stack([found[p][0] for p in prompts]), torch.stack([found[p][1] for p in prompts])

    @staticmethod
    def _as_list(prompts: str | Sequence[str], *, allow_empty: bool) -> list[str]:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("PromptEncoder: no prompts given (expected a string or a list of strings)")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"PromptEncoder: prompt {i} is a {type(p).__name__}, expected a string")
            if not allow_empty and not p.strip():
                raise ValueError(f"PromptEncoder.encode: prompt {i} is empty; SANA-WM needs a text prompt")
        return prompts

    def encode(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings ``(B, 300, hidden)`` (model dtype) and padding mask ``(B, 300)`` bool, on ``self.device``,
        with the instruction prefix and the BOS + last-299 window.

        Mask semantics: True at BOS, at the kept prefix / prompt tokens, False at padding. Cached per prompt
        (LRU of ``cache_size`` prompts in memory; also ``cache_dir`` on disk when set). Raises ValueError for an
        empty prompt list or an empty (or all-whitespace) prompt, TypeError for a non-string.
        """
        return self._cached(self._as_list(prompts, allow_empty=False), self.chi_prompt)

    def encode_negative(self, prompts: str | Sequence[str] = "") -> tuple[torch.Tensor, torch.Tensor]:
        """Negative-prompt embeddings for classifier-free guidance, as NVlabs / diffusers build them: no instruction
        prefix, right-padded (or truncated) to 300 tokens, ``""`` allowed. Shapes, device and caching as
        :meth:`encode`."""
        return self._cached(self._as_list(prompts, allow_empty=True), "")
