"""A shipped post-training task whose two objectives pull apart, and its offline BPE tokenizer.

The language: questions about small sums, colours and opposites. SFT rows answer **tersely**
(" 7."), while the preference rows favour a **verbose** answer (" sure! the answer is 7.") over
the terse one — or over a verbose *wrong* one. SFT therefore raises the probability of exactly
the answers DPO pushes down, which is the trade-off the joint methods balance.

``python -m dist_core.posttrain.synthetic --out data/synthlang`` regenerates the shipped files:
``{sft,pref}_{train,eval}.jsonl`` (TRL's ``prompt``/``completion`` and ``prompt``/``chosen``/
``rejected`` rows) and ``tokenizer/`` (a byte-level BPE saved as a Hugging Face tokenizer).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Iterator

NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"]
COLOURS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "sun": "yellow",
           "blood": "red", "orange": "orange", "plum": "purple", "sea": "blue", "leaf": "green"}
OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "old": "new", "dark": "light",
             "early": "late", "full": "empty", "hard": "soft", "near": "far"}
EOS, PAD = "<eos>", "<pad>"
CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}Q: {{ m['content'] }}\nA:"
                 "{% else %} {{ m['content'] }}" + EOS + "{% endif %}{% endfor %}")


def _question(rng: random.Random) -> tuple[str, str, str]:
    """(prompt, correct answer, a plausible wrong answer)."""
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randrange(10), rng.randrange(9)
        wrong = (a + b + rng.choice([1, 2, 3])) % len(NUMBERS)
        return f"Q: what is {NUMBERS[a]} plus {NUMBERS[b]}?\nA:", NUMBERS[a + b], NUMBERS[wrong]
    if kind == 1:
        thing = rng.choice(sorted(COLOURS))
        wrong = rng.choice(sorted(set(COLOURS.values()) - {COLOURS[thing]}))
        return f"Q: what colour is the {thing}?\nA:", COLOURS[thing], wrong
    word = rng.choice(sorted(OPPOSITES))
    wrong = rng.choice(sorted(set(OPPOSITES.values()) - {OPPOSITES[word]}))
    return f"Q: what is the opposite of {word}?\nA:", OPPOSITES[word], wrong


def terse(answer: str) -> str:
    return f" {answer}."


def verbose(answer: str) -> str:
    return f" sure! the answer is {answer}."


def sft_rows(n: int, seed: int) -> Iterator[dict[str, str]]:
    rng = random.Random(seed)
    for _ in range(n):
        prompt, right, _ = _question(rng)
        yield {"prompt": prompt, "completion": terse(right)}


def preference_rows(n: int, seed: int) -> Iterator[dict[str, str]]:
    """Chosen: verbose and right. Rejected: terse and right (2/3), or verbose and wrong (1/3)."""
    rng = random.Random(seed)
    for _ in range(n):
        prompt, right, wrong = _question(rng)
        rejected = terse(right) if rng.random() < 2 / 3 else verbose(wrong)
        yield {"prompt": prompt, "chosen": verbose(right), "rejected": rejected}


def write_jsonl(path: Path, rows: Iterator[dict[str, str]]) -> None:
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def train_tokenizer(texts: list[str], out_dir: Path, vocab_size: int = 384) -> None:
    """A byte-level BPE trained offline, saved so ``AutoTokenizer.from_pretrained(out_dir)`` loads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=EOS)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))


def generate(out: Path, n_train: int = 1024, n_eval: int = 128, seed: int = 0) -> dict[str, Path]:
    """Write the four JSONL files and the tokenizer directory under ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "sft_train": out / "sft_train.jsonl", "sft_eval": out / "sft_eval.jsonl",
        "pref_train": out / "pref_train.jsonl", "pref_eval": out / "pref_eval.jsonl",
        "tokenizer": out / "tokenizer",
    }
    write_jsonl(paths["sft_train"], sft_rows(n_train, seed))
    write_jsonl(paths["sft_eval"], sft_rows(n_eval, seed + 1))
    write_jsonl(paths["pref_train"], preference_rows(n_train, seed + 2))
    write_jsonl(paths["pref_eval"], preference_rows(n_eval, seed + 3))
    texts = []
    for key in ("sft_train", "pref_train"):
        for line in paths[key].read_text().splitlines():
            texts.extend(v for v in json.loads(line).values())
    train_tokenizer(texts, paths["tokenizer"])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/synthlang"))
    parser.add_argument("--n-train", type=int, default=1024)
    parser.add_argument("--n-eval", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = generate(args.out, args.n_train, args.n_eval, args.seed)
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))


if __name__ == "__main__":
    main()
