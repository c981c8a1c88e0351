"""Data curation as in DistiLLM-2 (``generate/generate_vllm.py``, ``reformat.py``): per prompt one
response sampled from the teacher (TGO, stored as ``chosen``) and one from the student (SGO,
``rejected``), at temperature 0.8, seeded.

Sampling runs as ``generation.actors`` Ray tasks spread over the cluster's CPUs, each with a share of
the prompts. A response depends only on (model, prompt, seed): every prompt reseeds torch from
``(seed, prompt text, model)`` and each task runs one thread, so the same seed gives the same pairs for
any number of tasks. The pairs are written as JSONL under a fingerprint of the model weights, the tokenizer,
the prompts and the sampling settings; a second run with the same inputs reads them back.

The same tasks greedy-decode held-out prompts for exact-match accuracy (``answers``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import ray

from ..posttrain.reference import fingerprint
from ..posttrain.rows import read_rows
from .config import Generation

TEACHER, STUDENT = 0, 1


def _seed(seed: int, prompt: Any, role: int) -> int:
    """The torch seed of one response: a function of the job's seed, the prompt's text and the model."""
    import numpy as np

    digest = hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).digest()
    return int(np.random.default_rng([seed, role, *np.frombuffer(digest[:16], dtype=np.uint32)]).integers(2**31 - 1))


class Sampler:
    """Models loaded with ``from_pretrained``; samples or greedy-decodes prompts one at a time."""

    def __init__(self, model_dirs: list[str], tokenizer_dir: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(1)  # one thread: the sums, hence the samples, do not depend on the worker's CPUs
        self.tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.models = [AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval() for d in model_dirs]

    def _prompt_ids(self, prompt: Any) -> list[int]:
        if isinstance(prompt, list):  # a chat: the template up to the assistant's turn
            return self.tok.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)
        return self.tok(prompt, add_special_tokens=False)["input_ids"]

    def generate(self, model: int, prompt: Any, max_new_tokens: int, temperature: float, top_p: float,
                 seed: int | None) -> str:
        import torch

        ids = torch.tensor([self._prompt_ids(prompt)])
        sample = temperature > 0
        if sample:
            torch.manual_seed(seed)
        kw = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if sample else dict(do_sample=False)
        with torch.no_grad():
            out = self.models[model].generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                eos_token_id=self.tok.eos_token_id, pad_token_id=self.tok.pad_token_id or self.tok.eos_token_id,
                **kw)
        return self.tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    def pairs(self, rows: list[tuple[int, Any]], gen: dict[str, Any], seed: int) -> list[tuple[int, str, str]]:
        """(row, teacher response, student response) for each (row, prompt)."""
        out = []
        for row, prompt in rows:
            chosen, rejected = (self.generate(m, prompt, gen["max_new_tokens"], gen["temperature"], gen["top_p"],
                                              _seed(seed, prompt, m)) for m in (TEACHER, STUDENT))
            out.append((row, chosen, rejected))
        return out

    def greedy(self, model: int, rows: list[tuple[int, Any]], max_new_tokens: int) -> list[tuple[int, str]]:
        return [(row, self.generate(model, p, max_new_tokens, 0.0, 1.0, None)) for row, p in rows]


# Ray tasks rather than actors: a task's worker process stays up between calls, so sampling, exact match
# and the top-k table of one Ray session pay Python's torch/transformers import once per process, where
# each new actor is a new process (seconds each on a small machine).
@ray.remote
def _sample(model_dirs: list[str], tokenizer_dir: str, rows: list[tuple[int, Any]], gen: dict[str, Any],
            seed: int) -> list[tuple[int, str, str]]:
    return Sampler(model_dirs, tokenizer_dir).pairs(rows, gen, seed)


@ray.remote
def _greedy(model_dirs: list[str], tokenizer_dir: str, rows: list[tuple[int, Any]],
            max_new_tokens: int) -> list[list[tuple[int, str]]]:
    sampler = Sampler(model_dirs, tokenizer_dir)
    return [sampler.greedy(m, rows, max_new_tokens) for m in range(len(model_dirs))]


def sampling_key(teacher_dir: Path, student_dir: Path, tokenizer_dir: Path, prompts: Path, gen: Generation,
                 seed: int) -> str:
    """The cache key of one split's pairs: every input that changes a sampled response."""
    settings = {"temperature": gen.temperature, "top_p": gen.top_p, "max_new_tokens": gen.max_new_tokens,
                "seed": seed, "format": 1}
    return fingerprint([Path(teacher_dir), Path(student_dir), Path(tokenizer_dir), Path(prompts)], settings)


def pairs_cache_dir() -> Path:
    return Path(os.environ.get("DIST_CORE_CACHE", Path.home() / ".cache" / "dist_core")) / "distill_pairs"


def _shards(n: int, cpus: float) -> tuple[int, float]:
    """(tasks, CPUs per task): at most as many tasks as the cluster runs at once, each loading the models once."""
    have = ray.cluster_resources().get("CPU", 0.0)
    return max(1, min(n, int(have // cpus) or 1)), min(cpus, have)


def _spread(items: list[Any], n: int) -> list[list[Any]]:
    return [items[i::n] for i in range(n)]


def curate(teacher_dir: Path, student_dir: Path, tokenizer_dir: Path, prompts: dict[str, Path], gen: Generation,
           seed: int, cache: Path | None = None) -> dict[str, tuple[Path, bool]]:
    """{split: (pairs JSONL, whether it came from the cache)} for each split's prompt file.

    Splits missing from the cache are sampled together by one set of tasks, then written as
    prompt/chosen/rejected rows in the prompts' order.
    """
    cache = cache or pairs_cache_dir()
    out = {split: (cache / f"{sampling_key(teacher_dir, student_dir, tokenizer_dir, p, gen, seed)}.jsonl", True)
           for split, p in prompts.items()}
    todo = {split: [r["prompt"] for r in read_rows(prompts[split])] for split, (path, _) in out.items()
            if not path.exists()}
    if not todo:
        return out
    items = [(split, i, p) for split, rows in todo.items() for i, p in enumerate(rows)]
    n, cpus = _shards(gen.actors, gen.cpus_per_actor)
    dirs = [str(teacher_dir), str(student_dir)]
    shards = _spread(list(enumerate(p for _, _, p in items)), n)
    done = ray.get([_sample.options(num_cpus=cpus).remote(dirs, str(tokenizer_dir), s, gen.model_dump(), seed)
                    for s in shards])
    by_item = {k: (c, r) for part in done for k, c, r in part}
    for split, rows in todo.items():
        path = out[split][0]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "w") as fh:
            for k, (s_, i, prompt) in enumerate(items):
                if s_ == split:
                    fh.write(json.dumps({"prompt": prompt, "chosen": by_item[k][0], "rejected": by_item[k][1]}) + "\n")
        os.replace(tmp, path)
        out[split] = (path, False)
    return out


def normalise(text: str) -> str:
    return " ".join(text.strip().split())


def exact_match(model_dirs: dict[str, Path], tokenizer_dir: Path, rows: list[dict[str, Any]], max_new_tokens: int,
                actors: int, cpus: float) -> dict[str, float]:
    """Share of ``rows`` whose greedy answer equals ``completion`` (whitespace-normalised), per model."""
    names = list(model_dirs)
    n, per = _shards(actors, cpus)
    dirs = [str(model_dirs[name]) for name in names]
    items = list(enumerate(r["prompt"] for r in rows))
    parts = ray.get([_greedy.options(num_cpus=per).remote(dirs, str(tokenizer_dir), s, max_new_tokens)
                     for s in _spread(items, n)])
    out = {}
    for m, name in enumerate(names):
        answers = dict(pair for part in parts for pair in part[m])
        hits = [normalise(answers[i]) == normalise(r["completion"]) for i, r in enumerate(rows)]
        out[name] = sum(hits) / len(hits)
    return out
