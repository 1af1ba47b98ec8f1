"""Textual Inversion (Gal et al. 2023): the model stays frozen; only the new word's vectors S* learn.

The vectors live in their own small parameter, spliced into the token embedding by a wrapper module,
so every existing embedding row stays bit-identical by construction and the optimizer state is tiny.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..safeio import atomic_save_safetensors
from .base import Method

TEMPLATES = [
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a close-up photo of a {}", "a bright photo of the {}", "a good photo of a {}",
]


class PlaceholderEmbedding(torch.nn.Module):
    """The text encoder's token embedding, plus trainable rows for token ids at or past `first_id`."""

    def __init__(self, base: torch.nn.Embedding, first_id: int, init: torch.Tensor):
        super().__init__()
        self.base, self.first_id = base, first_id
        self.vectors = torch.nn.Parameter(init.detach().clone().float())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        new = ids >= self.first_id
        out = self.base(ids.clamp(max=self.first_id - 1))
        learned = self.vectors[(ids - self.first_id).clamp(min=0, max=len(self.vectors) - 1)].to(out.dtype)
        return torch.where(new.unsqueeze(-1), learned, out)


def placeholder_tokens(token: str, num_vectors: int) -> list[str]:
    """diffusers' naming for a multi-vector embedding: '<s*>', '<s*>_1', '<s*>_2', ..."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def add_new_words(tokenizer, tokens: list[str], token: str) -> None:
    """Add the placeholder tokens; a one-line error if one is already a word, in either spelling: as given or as
    CLIP's BPE stores a whole (lower-cased) word, 'dog</w>', which add_tokens does not see (it would take over
    every 'dog' in every prompt)."""
    vocab = tokenizer.get_vocab()
    taken = [t for t in tokens if f"{t.lower()}</w>" in vocab]
    if taken or tokenizer.add_tokens(tokens) != len(tokens):
        raise UserError(f"token '{token}' is already a word of the tokenizer; pick a new one with --token")


class TextualInversion(Method):
    """New word vectors S* in each frozen text encoder's embedding (one table per encoder: SDXL has two);
    saved in diffusers' and A1111's formats."""

    run_file = "learned_embeds.safetensors"

    def choose_token(self) -> str:
        return self.cfg.token or "<s*>"

    def setup(self) -> None:
        c = self.components
        self.tokens = placeholder_tokens(self.token, self.cfg.num_vectors)
        for tokenizer in {id(t): t for t in c.tokenizers}.values():
            add_new_words(tokenizer, self.tokens, self.token)
        for name, tokenizer in zip(c.backbone.text_encoders, c.tokenizers):
            encoder = c.parts[name]
            first_id = tokenizer.convert_tokens_to_ids(self.tokens[0])
            base = encoder.get_input_embeddings()
            init = self.init_vector(tokenizer, base).expand(len(self.tokens), -1)
            encoder.set_input_embeddings(PlaceholderEmbedding(base, first_id, init))

    def init_vector(self, tokenizer, table: torch.nn.Embedding) -> torch.Tensor:
        """The mean embedding of the init word's tokens (default: the class noun)."""
        word = self.cfg.init_word or self.subject.class_noun
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if not ids:
            raise UserError(f"--init-word '{word}' has no tokens; give a word such as the class noun")
        return table.weight[torch.tensor(ids)].mean(0)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {name: self.components.parts[name] for name in self.components.backbone.text_encoders}

    def instance_prompts(self) -> list[str]:
        return [template.format(self.subject_phrase) for template in TEMPLATES]

    def vectors(self, text_encoder: str = "text_encoder") -> torch.Tensor:
        return self.components.parts[text_encoder].get_input_embeddings().vectors

    def save(self, run_dir: Path) -> list[str]:
        names = self.components.backbone.embedding_names()
        vectors = {key: self.vectors(name).detach().float().cpu() for name, key in names.items()}
        # SD: diffusers' {token: (N, D)} and A1111's {"emb_params": (N, D)}; SDXL: {"clip_l": ..., "clip_g": ...}
        # in both files (A1111's and ComfyUI's SDXL format; diffusers loads each key into its encoder)
        own = {self.token: vectors["emb_params"]} if list(vectors) == ["emb_params"] else vectors
        atomic_save_safetensors(run_dir / "learned_embeds.safetensors", own)
        atomic_save_safetensors(run_dir / "embedding_a1111.safetensors", vectors, metadata={"name": self.token})
        return ["learned_embeds.safetensors", "embedding_a1111.safetensors"]

    def manifest(self) -> dict:
        return {**super().manifest(), "placeholder_tokens": self.tokens, "num_vectors": len(self.tokens)}

    @classmethod
    def prompt_for_run(cls, manifest: dict, prompt: str) -> str:
        """The placeholder becomes all its vectors' tokens ('<s*>' -> '<s*> <s*>_1 <s*>_2')."""
        tokens = manifest.get("placeholder_tokens")
        return prompt.replace(tokens[0], " ".join(tokens)) if tokens else prompt

    @classmethod
    def load_run(cls, run_dir: Path, manifest: dict, allow_pickle: bool, lora_scale: float):
        from ..adapters import Run
        from ..models import load_model

        components = load_model(manifest["model"], allow_pickle)
        pipe, path = components.pipeline(), run_dir / "learned_embeds.safetensors"
        names = components.backbone.embedding_names()
        if list(names.values()) == ["emb_params"]:
            pipe.load_textual_inversion(str(path))
            return Run(manifest, components)
        from safetensors.torch import load_file

        vectors = load_file(path)
        for (name, key), tokenizer in zip(names.items(), components.backbone.tokenizers):
            pipe.load_textual_inversion(vectors[key], token=manifest["token"], text_encoder=components.parts[name],
                                        tokenizer=components.parts[tokenizer])
        return Run(manifest, components)
