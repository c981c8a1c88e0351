"""``kind: distill`` on real Ray, Ray Train and DeepSpeed (CPU, gloo) with tiny Llamas built from configs.

Job-file mistakes as one line; then two real runs through ``run_job`` (one module fixture, the module's
only two ``TorchTrainer.fit()`` calls): summary.json, a ``save_pretrained`` student, every step once; the
loss trajectory of 1 worker x 2 accumulation steps (teacher from the top-k table, k = V) against
2 workers (ZeRO-2, online teacher) on the same global batch; and data curation in Ray tasks (the
same seed gives the same pairs for 1 or 2 tasks, the cache answers, the fingerprint moves with every
input)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dist_core import spec
from dist_core.errors import SpecError
from dist_core.runner import run_job

ROOT = Path(__file__).resolve().parent.parent
TOK = ROOT / "data/synthlang/tokenizer"
TEACHER = ("{model_type: llama, hidden_size: 48, intermediate_size: 96, num_hidden_layers: 2, num_attention_heads: 2,"
           " num_key_value_heads: 1, max_position_embeddings: 64, tie_word_embeddings: false}")
STUDENT = ("{model_type: llama, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2,"
           " num_key_value_heads: 1, max_position_embeddings: 64, tie_word_embeddings: false}")

JOB = """\
kind: distill
name: {name}
seed: 0
teacher:
  config: {teacher}
student:
  config: {student}
tokenizer: {{path: {tok}}}
data:
  {data}
  max_length: 40
  eval_rows: 16
generation: {{max_new_tokens: 6, actors: 2}}
loss:
  name: distillm_v2
  alpha: 0.1
epochs: 2
optim: {{lr: 0.003}}
deepspeed:
  train_batch_size: 16
  train_micro_batch_size_per_gpu: 8
  gradient_accumulation_steps: 1
  zero_optimization: {{stage: 2}}
workers: 2
eval_every: 2
checkpoint_every: 0
"""


def job_text(name="d", data=None, teacher=TEACHER, student=STUDENT):
    data = data or f"prompts: {{train: {ROOT}/data/synthlang/sft_train.jsonl}}"
    return JOB.format(name=name, teacher=teacher, student=student, tok=TOK, data=data)


def line_of(text, needle):
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# ------------------------------------------------------------ job-file errors, one line each
def test_vocabulary_mismatch_names_both_sizes():
    text = job_text(student=STUDENT.replace("llama,", "llama, vocab_size: 500,"))
    with pytest.raises(SpecError) as e:
        spec.load_text(text, "d.yaml")
    assert str(e.value) == (f"d.yaml:{line_of(text, 'student:')}: student: vocabulary of 500 tokens, but the "
                            "teacher's has 384: teacher and student must share one vocabulary")


def test_pair_row_without_rejected_is_reported_at_its_line(tmp_path):
    rows = [{"prompt": "Q: a?\nA:", "chosen": " a.", "rejected": " b."}] * 2 + [{"prompt": "Q: c?\nA:", "chosen": " c."}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = job_text(data=f"pairs: {{train: {tmp_path}/pairs.jsonl}}")
    with pytest.raises(SpecError) as e:
        spec.load_text(text, "d.yaml")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path}/pairs.jsonl:3: rejected: required field missing") and "\n" not in msg


def test_topk_larger_than_the_vocabulary():
    text = job_text() + "teacher_cache: topk\ntopk_k: 1000\n"
    with pytest.raises(SpecError) as e:
        spec.load_text(text, "d.yaml")
    assert str(e.value) == f"d.yaml:{line_of(text, 'topk_k')}: topk_k: must be <= the vocabulary size 384, got 1000"


@pytest.mark.parametrize("alpha", [0, 1.5, -0.1])
def test_alpha_outside_zero_one(alpha):
    text = job_text().replace("alpha: 0.1", f"alpha: {alpha}")
    with pytest.raises(SpecError) as e:
        spec.load_text(text, "d.yaml")
    msg = str(e.value)
    assert msg.startswith(f"d.yaml:{line_of(text, 'alpha:')}: loss.alpha: must be ") and str(alpha) in msg
    assert spec.load_text(job_text().replace("alpha: 0.1", "alpha: 1"), "d.yaml").loss.alpha == 1.0


def test_curriculum_is_a_distillm_v2_option():
    text = job_text().replace("name: distillm_v2", "name: kd\n  curriculum: true")
    with pytest.raises(SpecError, match=r"loss: .*curriculum is a distillm_v2 option; loss kd has none"):
        spec.load_text(text, "d.yaml")


# ------------------------------------------------------------ two real runs, shared by the tests below
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A teacher and a student directory (save_pretrained from tiny configs), and 32/16 prompts."""
    import yaml

    from dist_core.posttrain.init_model import build_model_dir

    d = tmp_path_factory.mktemp("models")
    out = {side: build_model_dir(yaml.safe_load(conf), TOK, d / side, seed=0)
           for side, conf in (("teacher", TEACHER), ("student", STUDENT))}
    lines = (ROOT / "data/synthlang/sft_train.jsonl").read_text().splitlines()
    (d / "train.jsonl").write_text("\n".join(lines[:32]) + "\n")
    (d / "eval.jsonl").write_text("\n".join((ROOT / "data/synthlang/sft_eval.jsonl").read_text().splitlines()[:16]) + "\n")
    out.update(root=d, train=d / "train.jsonl", eval=d / "eval.jsonl")
    return out


def _run(text, name, out, overrides=()):
    job = spec.load_text(text, f"{name}.yaml", list(overrides))
    summary = run_job(job, out=out, progress=False, echo=lambda s: None)
    run_dir = Path(summary["checkpoint"]).parent
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, run_dir, records


def _main(records):
    return [r for r in records if r.get("phase") == "main" and "event" not in r]


@pytest.fixture(scope="module")
def runs(ray_session, models, tmp_path_factory):
    """Two runs through ``run_job`` on the same global batch of 16 (2 steps per epoch, 4 steps), the only
    two ``TorchTrainer.fit()`` calls of the module:

    - w2: 2 workers x micro 8, ZeRO-2, online teacher; pairs sampled from the prompts; exact match;
    - w1: 1 worker x micro 8 x 2 accumulation steps on w2's pairs given as ready pairs, the teacher from
      the top-k table with k = V (the k + 1 buckets are then the whole vocabulary and an empty rest).
    """
    d = tmp_path_factory.mktemp("runs")
    patch = pytest.MonkeyPatch()
    patch.setenv("DIST_CORE_CACHE", str(d / "cache"))
    try:
        two = _run(job_text(data=f"prompts: {{train: {models['train']}, eval: {models['eval']}}}"), "w2", d / "w2")
        pairs = two[0]["pairs"]
        one = _run(job_text(data=f"pairs: {{train: {pairs['train']}, eval: {pairs['eval']}}}"), "w1", d / "w1",
                   ["workers=1", "deepspeed.gradient_accumulation_steps=2", "teacher_cache=topk", "topk_k=384"])
        yield {"w2": two, "w1": one, "cache": d / "cache"}
    finally:
        patch.undo()


@pytest.mark.slow
def test_summary_export_and_every_step_once(runs):
    summary, run_dir, records = runs["w2"]
    assert summary["status"] == "succeeded"
    m = summary["metrics"]
    for key in ("eval_ll_teacher_before", "eval_ll_teacher_after", "eval_ll_student_before",
                "eval_ll_student_after", "tokens_per_s", "peak_rss_mb_by_rank", "exact_match_teacher",
                "exact_match_student_before", "exact_match_student_after", "loss"):
        assert key in m, key
    assert len(m["peak_rss_mb_by_rank"]) == 2 and m["steps"] == 4 and m["tokens_per_s"] > 0
    main = _main(records)
    assert [r["step"] for r in main] == [0, 1, 2, 3, 4], "every step recorded once"
    # Untrained tiny models: the teacher is near uniform, so only the loss itself must fall.
    assert main[-1]["loss"] < 0.8 * main[1]["loss"]
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(str(run_dir / "model"))
    assert (run_dir / "model" / "model.safetensors").exists() and student.config.hidden_size == 32
    assert (run_dir / "plots" / "distill.png").stat().st_size > 5_000
    assert [e["cache_hit"] for e in records if e.get("event") == "pairs"] == [False, False]
    # The top-k run built its table once, in the cache; ready pairs carry no answers: no exact match.
    one, _, one_records = runs["w1"]
    assert [e["cache_hit"] for e in one_records if e.get("event") == "topk_table"] == [False]
    assert len(list((runs["cache"] / "distill_topk").glob("*.safetensors"))) == 1
    assert one["status"] == "succeeded" and not any(k.startswith("exact_match") for k in one["metrics"])


@pytest.mark.slow
def test_one_worker_with_accumulation_and_topk_teacher_follows_two_workers(runs):
    # Same global batch of 16 (1 x 8 x 2 against 2 x 8 x 1): fp32 sums in another order (gloo all-reduce),
    # and teacher log-probs from a forward over other batches (the table) in k + 1 buckets.
    rec1, rec2 = _main(runs["w1"][2]), _main(runs["w2"][2])
    for key in ("loss", "eval_ll_teacher", "eval_ll_student"):
        a = np.array([r[key] for r in rec1 if key in r])
        b = np.array([r[key] for r in rec2 if key in r])
        assert len(a) == len(b) >= 3
        np.testing.assert_allclose(a, b, rtol=1e-4, err_msg=key)


@pytest.mark.slow
def test_same_seed_same_pairs_and_the_fingerprint_moves_with_every_input(runs, models, tmp_path):
    from dist_core.distill.config import Generation
    from dist_core.distill.generate import _seed, curate, sampling_key

    gen = Generation(max_new_tokens=6, actors=2)  # the runs' generation section
    t, s = models["teacher"], models["student"]
    pairs = runs["w2"][0]["pairs"]
    # The runs' cache answers without sampling; 1 task samples what 2 tasks sampled in run w2.
    hit = curate(t, s, TOK, {"train": models["train"], "eval": models["eval"]}, gen, seed=0,
                 cache=runs["cache"] / "distill_pairs")
    assert hit == {"train": (Path(pairs["train"]), True), "eval": (Path(pairs["eval"]), True)}
    one = curate(t, s, TOK, {"eval": models["eval"]}, gen.model_copy(update={"actors": 1}), seed=0,
                 cache=tmp_path / "one")["eval"]
    assert not one[1]
    assert one[0].read_text() == Path(pairs["eval"]).read_text(), "same seed: the same pairs for 1 or 2 tasks"
    rows = [json.loads(x) for x in one[0].read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [json.loads(x)["prompt"] for x in models["eval"].read_text().splitlines()]
    assert all(set(r) == {"prompt", "chosen", "rejected"} for r in rows)
    assert len({_seed(seed, rows[0]["prompt"], role) for seed in (0, 1) for role in (0, 1)}) == 4

    few = models["eval"]
    key = sampling_key(t, s, TOK, few, gen, 0)
    tok2 = tmp_path / "tok2"
    shutil.copytree(TOK, tok2)
    conf = json.loads((tok2 / "tokenizer_config.json").read_text())
    (tok2 / "tokenizer_config.json").write_text(json.dumps({**conf, "model_max_length": 77}))
    prompts2 = tmp_path / "p2.jsonl"
    prompts2.write_text(few.read_text().replace("plus", "plus ", 1))
    changed = {
        "teacher weights": sampling_key(s, s, TOK, few, gen, 0),
        "student weights": sampling_key(t, t, TOK, few, gen, 0),
        "tokenizer": sampling_key(t, s, tok2, few, gen, 0),
        "prompts": sampling_key(t, s, TOK, prompts2, gen, 0),
        "temperature": sampling_key(t, s, TOK, few, gen.model_copy(update={"temperature": 0.7}), 0),
        "top_p": sampling_key(t, s, TOK, few, gen.model_copy(update={"top_p": 0.9}), 0),
        "max_new_tokens": sampling_key(t, s, TOK, few, gen.model_copy(update={"max_new_tokens": 7}), 0),
        "seed": sampling_key(t, s, TOK, few, gen, 1),
    }
    assert all(v != key for v in changed.values()), {k: v for k, v in changed.items() if v == key}
    assert sampling_key(t, s, TOK, few, gen.model_copy(update={"actors": 1}), 0) == key  # not an input of a response
