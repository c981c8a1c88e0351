"""Post-training math without Ray: losses against TRL and Hugging Face, the methods' choices,
the two-quadratic toy of RESEARCH.md §7.2, data checks and the reference cache."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_core.errors import SpecError
from dist_core.posttrain import data as D
from dist_core.posttrain import methods
from dist_core.posttrain.init_model import build_model_dir
from dist_core.posttrain.losses import dpo_loss, sequence_logps, sft_loss
from dist_core.posttrain.reference import cached_table, fingerprint

ROOT = Path(__file__).resolve().parent.parent
TOK = ROOT / "data/synthlang/tokenizer"
TINY = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_model_dir(TINY, TOK, tmp_path_factory.mktemp("m") / "model", seed=0)


# ---------------------------------------------------------------- losses
def test_dpo_is_ln2_with_slope_minus_beta_half_at_the_reference():
    beta = 0.3
    logps = torch.tensor([-12.0, -7.5, -30.0])
    chosen = logps.clone().requires_grad_(True)
    loss, r_c, r_r = dpo_loss(chosen, logps - 2.0, logps, logps - 2.0, beta=beta)
    assert float(loss) == pytest.approx(math.log(2), abs=1e-7)
    assert torch.all(r_c == 0) and torch.all(r_r == 0)
    loss.backward()
    # z moves one-for-one with log π(y_w); the loss is a mean over the 3 rows.
    np.testing.assert_allclose(chosen.grad.numpy() * 3, -beta / 2, atol=1e-7)


def test_label_smoothing_matches_the_cdpo_formula():
    pc, pr, rc, rr = (torch.tensor(v) for v in ([-3.0, -1.0], [-4.0, -0.5], [-3.5, -1.2], [-3.9, -0.7]))
    eps, beta = 0.2, 0.5
    loss, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps)
    z = (pc - pr) - (rc - rr)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    expected = np.mean(-(1 - eps) * np.log(sig(beta * z.numpy())) - eps * np.log(sig(-beta * z.numpy())))
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_sft_loss_equals_hugging_face_causal_lm_loss(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TOK))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    rows = D.read_rows(ROOT / "data/synthlang/sft_train.jsonl")[:6]
    enc = D.encode_sft(tok, rows, 48)
    batch = D.sft_batch(enc, np.arange(6), tok.pad_token_id)
    out = model(**batch)  # HF shifts and averages over labels != -100 itself
    ours = sft_loss(out.logits, batch["labels"])
    assert float(ours) == pytest.approx(float(out.loss), rel=1e-6)
    assert (batch["labels"][0] == -100).sum() > 0, "the prompt must be masked"


def test_dpo_loss_and_sequence_logps_equal_trl_on_identical_inputs(model_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(str(TOK))
    policy = AutoModelForCausalLM.from_pretrained(str(model_dir))
    torch.manual_seed(1)
    with torch.no_grad():  # a policy that differs from the reference, so z != 0
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref = AutoModelForCausalLM.from_pretrained(str(model_dir))
    rows = D.read_rows(ROOT / "data/synthlang/pref_train.jsonl")[:8]
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to=[], use_cpu=True,
                     beta=0.1, max_length=64)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, batch))
        trl_ref_c, trl_ref_r = trainer.compute_ref_log_probs(trainer.ref_model, batch)
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        pc, pr = sequence_logps(policy(**kw).logits, labels).chunk(2)
        rc, rr = sequence_logps(ref(**kw).logits, labels).chunk(2)
        ours, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.1)
    np.testing.assert_allclose(rc.numpy(), trl_ref_c.numpy(), rtol=1e-5)
    np.testing.assert_allclose(rr.numpy(), trl_ref_r.numpy(), rtol=1e-5)
    assert float(ours) == pytest.approx(trl_loss, rel=1e-5)
    assert abs(trl_loss - math.log(2)) > 1e-3, "the check needs pi != pi_ref"


# ---------------------------------------------------------------- methods
def test_alright_extremes_are_single_objective_step_for_step():
    one, zero = methods.Alright(1.0, seed=3), methods.Alright(0.0, seed=3)
    for step in range(200):
        assert one.pick(step, 0) == methods.DPO
        assert zero.pick(step, 0) == methods.SFT
    half = methods.Alright(0.3, seed=3)
    share = np.mean([half.pick(s, 0) == methods.DPO for s in range(4000)])
    assert share == pytest.approx(0.3, abs=0.03)
    assert [half.pick(s, 0) for s in range(50)] == [methods.Alright(0.3, seed=3).pick(s, 0) for s in range(50)]


def test_maxright_steps_on_the_larger_weighted_gap_with_stale_values():
    m = methods.Maxright(lam=0.25, opt_sft=1.0, opt_dpo=0.1, eval_every=10)
    m.refresh(sft=2.0, dpo=2.0)  # weighted gaps: 0.75·1.0 = 0.75 vs 0.25·1.9 = 0.475
    assert m.pick(1, 0) == methods.SFT
    m.observe(methods.SFT, sft=1.3, dpo=None)  # SFT gap now 0.225 < 0.475
    assert m.stale == [1.3, 2.0]
    assert m.pick(2, 0) == methods.DPO
    m.observe(methods.DPO, sft=9.9, dpo=0.5)  # only the chosen objective is refreshed
    assert m.stale == [1.3, 0.5]
    assert not m.needs_refresh(11) and m.needs_refresh(20)


def test_sequential_and_mix_weights():
    seq = methods.make("sequential", lam=0.5, epochs=6)
    assert [seq.pick(0, e) for e in range(6)] == [methods.SFT] * 3 + [methods.DPO] * 3
    assert methods.sft_epochs_for(0.25, 4) == 3 and methods.sft_epochs_for(0.99, 6) == 1
    assert methods.sft_epochs_for(0.5, 5) == 3 and methods.sft_epochs_for(0.5, 4) == 2  # halves round up
    assert methods.make("mix", lam=0.25, epochs=2).pick(0, 0) == (0.75, 0.25)


def _quadratics(seed=0, d=10):
    rng = np.random.default_rng(seed)
    qs, cs = [], []
    for _ in range(2):
        a = rng.normal(size=(d, d))
        qs.append(a @ a.T / d + 0.5 * np.eye(d))
        cs.append(rng.normal(size=d) * 2)
    return qs, cs


def _drive(method, qs, cs, steps, lr0, fstar=(0.0, 0.0)):
    """Gradient steps on whichever objective the method picks (the trainer's loop, on quadratics)."""
    f = [lambda t, i=i: 0.5 * (t - cs[i]) @ qs[i] @ (t - cs[i]) for i in range(2)]
    grad = [lambda t, i=i: qs[i] @ (t - cs[i]) for i in range(2)]
    theta = np.zeros(len(cs[0]))
    avg, n = np.zeros_like(theta), 0
    for step in range(steps):
        if isinstance(method, methods.Maxright) and method.needs_refresh(step):
            method.refresh(f[0](theta), f[1](theta))
        w = method.pick(step, 0)
        values = [f[0](theta), f[1](theta)]
        lr = lr0 / np.sqrt(1 + step / 100)
        theta = theta - lr * (w[0] * grad[0](theta) + w[1] * grad[1](theta))
        method.observe(w, values[0], values[1])
        if step >= steps // 2:  # averaging the second half removes the coin's noise floor
            avg, n = avg + theta, n + 1
    return avg / n


def test_alright_converges_to_the_lambda_optimum_and_maxright_to_the_chebyshev_point():
    from scipy.optimize import minimize

    qs, cs = _quadratics()
    lam = 0.25  # (at 0.4 these two quadratics happen to make θ_λ the Chebyshev point too)
    theta_lam = np.linalg.solve((1 - lam) * qs[0] + lam * qs[1], (1 - lam) * qs[0] @ cs[0] + lam * qs[1] @ cs[1])
    alright = _drive(methods.Alright(lam, seed=0), qs, cs, steps=20000, lr0=0.05)
    assert np.linalg.norm(alright - theta_lam) / np.linalg.norm(theta_lam) < 0.05

    # Chebyshev point: min t s.t. w_i f_i(θ) <= t (f* = 0 here), by SLSQP.
    w = np.array([1 - lam, lam])
    fs = [lambda x, i=i: 0.5 * (x - cs[i]) @ qs[i] @ (x - cs[i]) for i in range(2)]
    cons = [{"type": "ineq", "fun": lambda z, i=i: z[-1] - w[i] * fs[i](z[:-1])} for i in range(2)]
    x0 = np.append(theta_lam, max(w[i] * fs[i](theta_lam) for i in range(2)))
    ref = minimize(lambda z: z[-1], x0, constraints=cons, method="SLSQP", options={"ftol": 1e-12, "maxiter": 500})
    cheb = ref.x[:-1]
    maxright = _drive(methods.Maxright(lam, eval_every=1), qs, cs, steps=20000, lr0=0.05)
    assert np.linalg.norm(maxright - cheb) / np.linalg.norm(cheb) < 0.05
    # The two targets differ, so each test tells the methods apart.
    assert np.linalg.norm(cheb - theta_lam) / np.linalg.norm(cheb) > 0.05


def test_sequential_forgets_the_first_objective():
    qs, cs = _quadratics()
    seq = methods.Sequential(sft_epochs=1)
    theta = np.zeros(10)
    for epoch in range(2):
        for _ in range(3000):
            w = seq.pick(0, epoch)
            theta -= 0.05 * (w[0] * qs[0] @ (theta - cs[0]) + w[1] * qs[1] @ (theta - cs[1]))
    assert np.linalg.norm(theta - cs[1]) < 1e-3
    assert 0.5 * (theta - cs[0]) @ qs[0] @ (theta - cs[0]) > 1.0  # a trade-off gap that does not vanish


# ---------------------------------------------------------------- data
def test_a_row_missing_chosen_names_file_line_and_field(tmp_path):
    path = tmp_path / "pref.jsonl"
    rows = [{"prompt": "Q: a?\nA:", "chosen": " b.", "rejected": " c."}] * 3
    lines = [json.dumps(r) for r in rows] + ["", json.dumps({"prompt": "Q: x?\nA:", "rejected": " y."})]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpecError) as e:
        D.load_checked(path, "preference")
    assert str(e.value).startswith(f"{path}:5: chosen: required field missing")


def test_micro_batches_are_the_same_sets_for_any_worker_split():
    g = D.global_batch(100, 16, seed=0, epoch=1, step=2)
    one = [set(D.micro_slice(g, 4, a, 0, 1)) for a in range(4)]
    two = [set(D.micro_slice(g, 4, a, r, 2)) for a in range(2) for r in range(2)]
    four = [set(D.micro_slice(g, 4, 0, r, 4)) for r in range(4)]
    assert one == two == four
    assert set().union(*one) == set(g) and len(g) == 16


def test_chat_rows_tokenize_like_prompt_completion_rows():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TOK))
    chat = D.encode(tok, [{"role": "user", "content": "what colour is the sky?"}],
                    [{"role": "assistant", "content": "blue."}], 48)
    plain = D.encode(tok, "Q: what colour is the sky?\nA:", " blue.", 48)
    assert chat == plain


# ---------------------------------------------------------------- reference cache
def test_reference_tables_are_cached_by_fingerprint(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"a": 1}\n')
    key = fingerprint([data, TOK], {"max_length": 32})
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6.0).reshape(3, 2)

    first, hit1 = cached_table(tmp_path / "cache", key, compute, rank=0)
    second, hit2 = cached_table(tmp_path / "cache", key, compute, rank=0)
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    assert torch.equal(first, second)
    data.write_text('{"a": 2}\n')
    assert fingerprint([data, TOK], {"max_length": 32}) != key
    assert fingerprint([tmp_path / "cache"], {}) != fingerprint([tmp_path / "cache"], {"max_length": 1})


# ---------------------------------------------------------------- bad job files
ALRIGHT = (ROOT / "jobs/sft_dpo_alright.yaml").read_text()


def _line(needle: str) -> int:
    return next(i for i, line in enumerate(ALRIGHT.splitlines(), 1) if needle in line)


BAD = [
    ("tokenizer directory missing", ALRIGHT.replace("path: data/synthlang/tokenizer", "path: data/nothere"),
     f"{{job}}:{_line('path: data/synthlang/tokenizer')}: tokenizer.path: path does not point to a directory, got 'data/nothere'"),
    ("inconsistent batch size", ALRIGHT.replace("train_batch_size: 32", "train_batch_size: 24"),
     f"{{job}}:{_line('train_batch_size')}: deepspeed.train_batch_size: must equal micro batch 16 x accumulation 1 x workers 2 = 32, got 24"),
    ("ZeRO stage 4", ALRIGHT.replace("{stage: 2}", "{stage: 4}"),
     f"{{job}}:{_line('zero_optimization')}: deepspeed.zero_optimization.stage: must be <= 3, got 4"),
    ("unknown method", ALRIGHT.replace("method: alright", "method: alrite"),
     f"{{job}}:{_line('method: alright')}: method: must be one of 'sft', 'dpo', 'sequential', 'mix', 'alright' or 'maxright', got 'alrite'"),
    ("a preference row missing chosen", ALRIGHT.replace("preference: {train: data/synthlang/pref_train.jsonl",
                                                        "preference: {train: {data}"),
     "{data}:3: chosen: required field missing in this preference row (rows need prompt / chosen / rejected; "
     "got prompt, rejected)"),
]


@pytest.mark.parametrize("name,text,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_posttrain_job_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, name, text, expected):
    from dist_core import cli

    monkeypatch.chdir(ROOT)
    rows = tmp_path / "pref.jsonl"
    good = (ROOT / "data/synthlang/pref_train.jsonl").read_text().splitlines()[:2]
    rows.write_text("\n".join(good + ['{"prompt": "Q: x?\\nA:", "rejected": " y."}']) + "\n")
    job = tmp_path / "job.yaml"
    job.write_text(text.replace("{data}", str(rows)))
    out = tmp_path / "runs"
    assert cli.main(["run", str(job), "--out", str(out)]) == 2
    assert capsys.readouterr().err == expected.format(job=job, data=rows) + "\n"
    assert not out.exists()
