"""``kind: bl_just``: BL-JUST on digits with few labels, and the comparison arms at the same step count.

The arms run one after the other in this process (each a few seconds on a CPU). Every step is one
record in metrics.jsonl: ``{"arm", "step", "round", "phase", losses, γ}`` plus ``test_acc`` every
``eval_every`` steps and at each arm's last step; ``round`` numbers the steps of all arms in order
(arm index × steps per arm + step), so ``resume`` drops exactly the records it will replay.
Checkpoints hold the running arm (weights, every optimizer's moments, the batch RNG) and the
finished arms' results.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import checkpoint, plots
from ..runs import JobResult, RunDir, RunHooks
from ..threads import torch_threads
from .config import BLJustJob
from .data import make_data
from .train import ArmConfig, ArmRunner, Phase, Ramp

log = logging.getLogger("dist_core.bljust")


def arm_config(job: BLJustJob) -> ArmConfig:
    b = job.bl_just
    return ArmConfig(
        warmup=Phase("unsup", b.warmup.steps, b.warmup.lr), joint=Phase("joint", b.joint.steps, b.joint.lr),
        finetune=Phase("sup", b.finetune.steps, b.finetune.lr),
        ramp=Ramp(b.ramp.gamma_init, b.ramp.gamma_max, b.ramp.ramp_steps),
        temperature=b.unsupervised.temperature, batch=b.batch, shift=b.unsupervised.shift,
        noise=b.unsupervised.noise)


def run(job: BLJustJob, run_dir: RunDir, hooks: RunHooks, resume: bool = False) -> JobResult:
    with torch_threads(1):  # small ops in this process: extra threads only spin (see ``dist_core.threads``)
        return _run(job, run_dir, hooks, resume)


def _run(job: BLJustJob, run_dir: RunDir, hooks: RunHooks, resume: bool = False) -> JobResult:
    from tqdm.auto import tqdm

    b = job.bl_just
    data = make_data(b.data.labelled_fraction, b.data.test_fraction, job.seed)
    cfg = arm_config(job)
    arms, total = b.arms(), b.steps_per_arm()
    net_kwargs = b.model.model_dump()
    start_arm, start_step, results = 0, 0, {}
    arrays = None
    if resume:
        ckpt = run_dir.latest_checkpoint()
        if ckpt is not None:
            arrays, meta = checkpoint.load(ckpt)
            start_arm, start_step, results = int(meta["arm_index"]), int(meta["step"]), dict(meta["results"])
            log.info("resuming from %s (%s step %d)", ckpt, arms[start_arm], start_step)
        run_dir.truncate_metrics(start_arm * total + start_step, key="round")

    bar = tqdm(total=len(arms) * total, initial=start_arm * total + start_step, desc="steps",
               disable=not hooks.progress, leave=False, mininterval=1.0)
    for index in range(start_arm, len(arms)):
        arm = arms[index]
        runner = ArmRunner(arm, data, cfg, job.seed, net_kwargs)
        if index == start_arm and arrays is not None:
            runner.restore(arrays, start_step)
        while runner.step_count < total:
            record = runner.step()
            step = record["step"]
            record["round"] = index * total + step
            if step % b.eval_every == 0 or step == total:
                record["test_acc"] = runner.test_accuracy()
            run_dir.log_metrics(record)
            bar.update(1)
            if step == total:
                results[arm] = {"test_acc": record["test_acc"]}
            if (b.checkpoint_every and step % b.checkpoint_every == 0) or step == total:
                run_dir.save_checkpoint(index * total + step, runner.to_arrays(),
                                        {"round": index * total + step, "arm_index": index, "arm": arm,
                                         "step": step, "results": results})
        if runner.step_count == total and arm not in results:  # resumed exactly at the arm's end
            results[arm] = {"test_acc": runner.test_accuracy()}
    bar.close()

    metrics: dict[str, Any] = {f"test_acc_{arm}": results[arm]["test_acc"] for arm in arms}
    metrics["steps_per_arm"] = total
    for other in arms[1:]:
        metrics[f"margin_vs_{other}"] = results["bl_just"]["test_acc"] - results[other]["test_acc"]
    _plot(run_dir, job, run_dir.read_metrics(), arms)
    latest = run_dir.latest_checkpoint()
    return JobResult(metrics, str(latest) if latest else None,
                     {"arms": arms, "labelled": len(data.y_labelled), "unlabelled": len(data.x_unlabelled)})


def _plot(run_dir: RunDir, job: BLJustJob, records: list[dict], arms: list[str]) -> None:
    def series(key: str, only: list[str]) -> list[tuple]:
        out = []
        for arm in only:
            rows = [r for r in records if r["arm"] == arm and key in r]
            if rows:
                out.append((arm, [r["step"] for r in rows], [r[key] for r in rows]))
        return out

    b = job.bl_just
    panels = [
        {"ylabel": "test accuracy", "xlabel": "step", "series": series("test_acc", arms)},
        {"ylabel": "supervised loss L_s (batch)", "xlabel": "step", "yscale": "log",
         "series": series("sup_loss", arms)},
        {"ylabel": "contrastive loss L_u (batch)", "xlabel": "step", "series": series("unsup_loss", arms)},
        {"ylabel": "γ (joint phase)", "xlabel": "step", "series": series("gamma", ["bl_just"])},
    ]
    title = (f"{job.name}: {b.data.labelled_fraction:.0%} labels; warm-up {b.warmup.steps}, joint "
             f"{b.joint.steps}, fine-tune {b.finetune.steps} steps")
    plots.curves(run_dir.plots / "curves.png", title, [], panels)
