"""Prompt -> caption features: Qwen3's hidden_states[-2] for the real tokens of the chat-templated prompt.

transformers runs Qwen3 and the tokenizer; this module owns the template, the 512-token limit and
the embedding cache. Only the real tokens are run: with right padding and causal attention the
padded run that diffusers does gives the same features for them, so padding is wasted work.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch

log = logging.getLogger(__name__)

MAX_TOKENS = 512


def template(tokenizer, prompt: str) -> str:
    """The tokenizer's own chat template, as the reference pipeline applies it."""
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=True
    )


class TextEncoder:
    """Encodes prompts, keeping the last `cache_size` results (a repeated prompt skips Qwen3)."""

    def __init__(self, tokenizer, model, cache_size: int = 32):
        self.tokenizer = tokenizer
        self.model = model
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.runs = 0  # how often Qwen3 actually ran; the cache's effect is visible in tests

    def token_ids(self, prompt: str) -> list[int]:
        text = template(self.tokenizer, prompt)
        ids = self.tokenizer(text)["input_ids"]
        if len(ids) > MAX_TOKENS:
            log.warning(
                "prompt is %d tokens long with its template; only the first %d are used",
                len(ids), MAX_TOKENS,
            )
            ids = self.tokenizer(text, truncation=True, max_length=MAX_TOKENS)["input_ids"]
        return ids

    @torch.no_grad()
    def encode(self, prompt: str) -> torch.Tensor:
        """[L, hidden] features on the model's device and dtype."""
        cached = self._cache.get(prompt)
        if cached is not None:
            self._cache.move_to_end(prompt)
            return cached
        device = next(self.model.parameters()).device
        ids = torch.tensor([self.token_ids(prompt)], device=device)
        out = self.model(input_ids=ids, output_hidden_states=True)
        features = out.hidden_states[-2][0]
        self.runs += 1
        if self.cache_size > 0:
            self._cache[prompt] = features
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return features

    def clear_cache(self) -> None:
        self._cache.clear()
