"""The training loop: ``Trainer.step`` is one optimisation step, ``Trainer.fit`` a whole run.

``Trainer`` owns what a step needs — the method (and its compiled / DDP wrapper), optimizer, learning-rate
schedule, GradScaler and autocast context — and the loader that feeds it. ``fit`` adds what a run needs
around the steps: log records at ``--log-every``, checkpoints at ``--ckpt-every`` (and on SIGINT /
SIGTERM), evaluations at ``--eval-every``, a stop on a non-finite loss that keeps the last good checkpoint.
The epoch and in-epoch position come only from the loader (each batch carries them; its state is the
position of the next batch), so a resumed run logs the same epochs as the uninterrupted one.

Host synchronisation happens only at log, checkpoint and evaluation steps (``.item()`` there only).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch

from loaders.batch.table import SampleTable
from models import build_optimizer, build_scheduler
from models.optim import scaled_lr
from models.syncbn import convert_sync_batchnorm
from models.training.checkpoint import CKPT_LAST, save_checkpoint
from models.training.compiling import StepClock, compile_method, compile_optimizer, describe, resolve_compile
from models.training.metrics import Metrics, Progress
from models.training.runtime import rng_state, set_rng_state
from models.training.settings import DEFAULT_STEPS
from shards.base import host
from shards.base.errors import UserError
from shards.base.interrupt import Interrupt, in_forked_child, interrupts, signal_of
from shards.base.progress import duration


class NonFiniteLoss(UserError):
    exit_code = 3


class Interrupted(UserError):
    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopFlag:
    """SIGINT / SIGTERM set a flag the loop checks at the next step (saying so at once: a step can take a
    while); a second SIGINT interrupts at once (a ``KeyboardInterrupt`` the loop turns into one line).
    Processes forked meanwhile (worker pools) leave the decision to this one."""

    def __init__(self, notice=None):
        self.signum = 0
        self._old = {}
        self._pid = os.getpid()
        self._notice = notice  # called with the signal's name on the first signal (rank 0 says what happens)

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if in_forked_child(self._pid, signum):
            return
        if self.signum and signum == signal.SIGINT:
            raise Interrupt(signum)
        if not self.signum and self._notice is not None:
            self._notice(signal.Signals(signum).name)
        self.signum = self.signum or signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def schedule(settings, steps_per_epoch: int) -> tuple[int, int]:
    """(total steps, warm-up steps): ``--epochs`` of the loader's epochs or ``--steps``; warm-up at most a tenth."""
    total = settings.epochs * steps_per_epoch if settings.epochs else (settings.steps or DEFAULT_STEPS)
    return total, min(settings.warmup_steps, total // 10)


def warmup_note(settings, total: int, warmup: int) -> str | None:
    """One line when the schedule shortened ``--warmup-steps`` (at most a tenth of the run), else None."""
    if warmup >= settings.warmup_steps:
        return None
    return (
        f"warm-up: {warmup} steps, not --warmup-steps {settings.warmup_steps}: the warm-up is at most a tenth of the "
        f"{total}-step run"
    )


def resolved_run(settings, runtime, steps_per_epoch: int, method_cfg) -> dict:
    """The run-level facts the settings resolve to (config.yaml's and every checkpoint's ``resolved``)."""
    import dataclasses

    total, warmup = schedule(settings, steps_per_epoch)
    return {
        "device": runtime.device,
        "precision": runtime.precision,
        "world_size": runtime.world_size,
        "total_steps": total,
        "steps_per_epoch": steps_per_epoch,
        "warmup_steps": warmup,
        "per_rank_batch_size": settings.batch_size // runtime.world_size,
        "lr": scaled_lr(method_cfg.lr, settings.batch_size),
        "lr_per_256": method_cfg.lr,
        "optimizer": method_cfg.optimizer,
        "compile": resolve_compile(settings.compile, cuda=runtime.is_cuda, distributed=runtime.distributed),
        "weight_decay": method_cfg.weight_decay,
        "method_config": dataclasses.asdict(method_cfg),
    }


class Trainer:
    def __init__(self, settings, runtime, loader, method):
        self.settings, self.runtime, self.loader = settings, runtime, loader
        self.total_steps, self.warmup_steps = schedule(settings, loader.steps_per_epoch)
        self.method = method.to(runtime.device)
        if runtime.distributed and settings.sync_batchnorm:  # as the release (sync_batchnorm: True)
            self.method = convert_sync_batchnorm(self.method, cuda=runtime.is_cuda)
        if runtime.is_cuda and settings.channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.method, batch_size=settings.batch_size)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, self.warmup_steps)
        self.scaler = runtime.grad_scaler()
        self.autocast = runtime.autocast()
        # compile (models/training/compiling.py) after building and moving, before the DDP wrap (nanoGPT's order);
        # self.method stays the unwrapped reference that checkpoints and evaluation use
        self.compile = resolve_compile(settings.compile, cuda=runtime.is_cuda, distributed=runtime.distributed)
        compile_optimizer(self.optimizer, self.compile)
        self.model = compile_method(self.method, self.compile)  # forward(views, labels) = a step
        if runtime.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[runtime.local_rank] if runtime.is_cuda else None
            )
        self.clock = StepClock(runtime.synchronize) if self.compile != "off" else None  # what compiling cost
        self.compile_reported = False
        self.step_count = 0  # optimizer steps taken

    # -- one step ------------------------------------------------------------------------------------
    def step(self, views: list[torch.Tensor], labels: torch.Tensor) -> dict:
        """Forward under autocast, scaled backward, optimizer, schedule, the method's EMA; the method's outputs.
        With ``--compile cudagraphs`` the outputs live until the next step (CUDA graph memory is reused)."""
        if self.clock is not None:
            self.clock.start()
        if self.compile == "cudagraphs":
            torch.compiler.cudagraph_mark_step_begin()
        with self.autocast:
            out = self.model(views, labels.to(self.runtime.device, non_blocking=True))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.method.on_train_step_end(self.step_count, self.total_steps)
        self.step_count += 1
        if self.clock is not None:
            self.clock.stop()
        return out

    def compile_report(self, final: bool = False) -> dict | None:
        """Once per process, when compiled: what compiling cost (``StepClock.report`` plus ``mode`` and ``line``,
        one log line), after the clock's steps or, with ``final``, at the end of a shorter run; else None."""
        clock = self.clock
        if clock is None or self.compile_reported or not clock.times or not (clock.done or final):
            return None
        self.compile_reported = True
        report = {"mode": self.compile, **clock.report()}
        return {**report, "line": describe(self.compile, report)}

    # -- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything but the settings and RNG (``fit`` adds them): model, optimizer, schedule, loader."""
        return {
            "step": self.step_count,
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loader": self.loader.state_dict(),
        }

    def load_state_dict(self, ckpt: dict) -> None:
        self.method.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self._load_schedule_position(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.loader.load_state_dict(ckpt["loader"])
        rng = ckpt.get("rng")
        if rng:
            set_rng_state(rng[self.runtime.rank] if len(rng) == self.runtime.world_size else rng[0])
        self.step_count = int(ckpt["step"])

    def _load_schedule_position(self, state: dict) -> None:
        """The scheduler's position from a checkpoint, its shape from these settings. ``LambdaLR`` saves the
        fields of its lr function (total and warm-up steps) and would restore the checkpoint's schedule, so a
        run resumed with another ``--steps`` / ``--epochs`` kept the old one (annealed to 0 early, or never);
        here only the position is loaded, and every group's lr is set for the step reached."""
        state = dict(state)
        state["lr_lambdas"] = [None] * len(self.scheduler.lr_lambdas)  # keep this run's schedule
        self.scheduler.load_state_dict(state)
        at = self.scheduler.last_epoch
        lrs = [base * f(at) for base, f in zip(self.scheduler.base_lrs, self.scheduler.lr_lambdas)]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self.scheduler._last_lr = lrs  # what get_last_lr() reports

    # -- the run ---------------------------------------------------------------------------------------
    def fit(self, run=None, evaluator=None, resolved: dict | None = None, last_good: Path | None = None) -> dict:
        """Train until ``total_steps`` (from the current state); returns the final evaluation (or {}).

        ``run``: the ``RunDir`` (rank 0 writes records and checkpoints into it; None: nothing is written).
        ``evaluator``: an ``Evaluator`` for ``--eval-every`` and the end. ``resolved`` goes into checkpoints.
        """
        loop = _Loop(self, run, evaluator, resolved or {}, last_good)
        return loop.run()


EARLY_LOGS = 2  # the first steps of a run are logged at once: on a slow device --log-every steps can take hours
ESTIMATE_STEPS, ESTIMATE_SECONDS = 3, 20.0  # the estimate is measured over this many steps, or this long
ESTIMATE_LINE_S = 3600.0  # a run whose rest would take longer than this gets the estimate line
# An eager step's own time (data wait excluded) is a fair measure from the first step on: when the first step
# alone already puts the rest this many times beyond ESTIMATE_LINE_S, the estimate is said at once (a ResNet-18
# on a CPU: one step, not three, before the warning).
EARLY_ESTIMATE_FACTOR = 10.0


def estimate_line(per_step: float, steps_left: int, measured: tuple[int, int], settings, device: str) -> str | None:
    """One line for a run whose remaining ``steps_left`` would take far beyond minutes at ``per_step``
    seconds a step (None otherwise), naming the knobs that shorten it on this device."""
    left = per_step * steps_left
    if left < ESTIMATE_LINE_S:
        return None
    knobs = []
    if str(device).startswith("cpu") and settings.backbone != "convnet":
        knobs.append(f"the small CPU backbone (--backbone convnet, as --demo uses; now {settings.backbone})")
    knobs.append(f"fewer steps (--steps N; {steps_left:,} left now)")
    if str(device).startswith("cpu") and torch.cuda.is_available():
        knobs.append("the GPU this machine has (--device cuda)")
    a, b = measured
    where = f"step {a}" if a == b else f"steps {a}-{b}"
    return (
        f"estimate: {duration(left)} for the {steps_left:,} steps left at {per_step:.3g} s/step (measured over "
        f"{where} on {device}; evaluations not included); to shorten it: {', '.join(knobs)}"
    )


def data_wait_hint(wait: float, settings, on_gpu: bool, threshold: float = 0.2) -> str | None:
    """One line for a user whose GPU waits for data (``wait``: the fraction of an interval spent waiting
    for the next batch), naming the levers this trainer has; None when it does not wait (or on a CPU,
    where loader and model share the cores and the figure measures that, not the GPU idling)."""
    if not on_gpu or wait < threshold:
        return None
    cores = host.cores()
    levers = []
    if settings.num_threads < cores:
        levers.append(f"more loader threads (--num-threads, now {settings.num_threads}; {cores} cores here)")
    if settings.loader_device == "cpu":
        levers.append("--loader-device gpu (decode and crop on the GPU, off the CPU cores)")
    advice = f"; try {' or '.join(levers)}" if levers else ""
    return f"the GPU waited for data {wait:.0%} of the last interval: the loader is the bottleneck{advice}"


class _Loop:
    """The state of one ``fit`` call: intervals, the non-finite flag, the last good checkpoint."""

    def __init__(self, trainer: Trainer, run, evaluator, resolved: dict, last_good: Path | None):
        self.trainer, self.run_dir, self.evaluator, self.resolved = trainer, run, evaluator, resolved
        self.settings, self.runtime = trainer.settings, trainer.runtime
        self.metrics = run.metrics if run is not None else Metrics(None)
        self.progress = Progress(
            trainer.total_steps, trainer.step_count, enabled=self.runtime.master, bar=self.settings.progress
        )
        self.last_good, self.last_checked = last_good, trainer.step_count
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=self.runtime.device)
        self.sums: dict[str, torch.Tensor] = {}
        self.interval_steps, self.wait, self.epoch = 0, 0.0, 0
        self.skipped_reported = trainer.loader.stats.corrupt
        self.logs, self.hinted = 0, False
        self.start = trainer.step_count  # the first EARLY_LOGS steps after it are logged whatever --log-every
        self.t_measure, self.paused_s, self.estimated = None, 0.0, False
        self.first_step_s: float | None = None  # the first step's own time (eager steps: its compute)

    def run(self) -> dict:
        trainer, settings = self.trainer, self.settings
        trainer.method.train()
        stopping = False
        try:
            with StopFlag(self.notice if self.runtime.master else None) as stop:
                self.t_interval = self.t_step_end = time.perf_counter()
                batches = trainer.loader.batches() if trainer.step_count < trainer.total_steps else iter(())
                for batch in batches:
                    self.wait += time.perf_counter() - self.t_step_end
                    self.epoch = batch.epoch
                    step_started = time.perf_counter()
                    out = trainer.step(batch.views, batch.labels)
                    if self.first_step_s is None:
                        self.first_step_s = time.perf_counter() - step_started
                    self.accumulate(out)
                    self.progress.update(1)
                    step = trainer.step_count
                    if not self.runtime.distributed:  # in DDP the ranks agree on a stop at a log step, never alone
                        stopping = bool(stop.signum)
                    self.t_step_end = time.perf_counter()
                    if step % settings.log_every == 0 or step == trainer.total_steps or step <= self.start + EARLY_LOGS:
                        self.log(step)
                        if self.runtime.distributed:
                            stopping = self.runtime.any_rank(bool(stop.signum))
                    self.estimate(step)
                    keep_due = settings.keep_every and step % settings.keep_every == 0
                    if (
                        (settings.ckpt_every and step % settings.ckpt_every == 0)
                        or keep_due
                        or step == trainer.total_steps
                        or stopping
                    ):
                        self.paused(self.checkpoint, step, keep_due)
                    if (
                        self.evaluator
                        and settings.eval_every
                        and step % settings.eval_every == 0
                        and step < trainer.total_steps
                    ):
                        self.paused(self.evaluate, step)
                    if step >= trainer.total_steps or stopping:
                        break
            if stopping:
                name = signal.Signals(stop.signum or signal.SIGTERM).name
                raise Interrupted(
                    f"{name} at step {trainer.step_count}: checkpoint saved to {self.last_good}; continue "
                    f"with `python train.py --resume {self.run_dir.path if self.run_dir else '<run dir>'}`",
                    stop.signum or signal.SIGTERM,
                )
            self.progress.close()
            final = {}
            if self.evaluator and self.runtime.master:
                final = self.final_evaluation()
            self.runtime.barrier()
            return final
        except KeyboardInterrupt as e:  # a second Ctrl-C in the loop: at once, the step under way is lost
            raise Interrupted(self.stopped_at_once(signal_of(e)), signal_of(e)) from None
        finally:
            self.progress.close()

    def notice(self, name: str) -> None:
        """Said at once on the first SIGINT / SIGTERM (from the signal handler): a step can take long."""
        self.progress.write(
            f"{name}: stopping after step {self.trainer.step_count + 1} and saving a checkpoint "
            "(Ctrl-C again stops at once, without saving that step)"
        )

    def resume_hint(self) -> str:
        return f"`python train.py --resume {self.run_dir.path if self.run_dir else '<run dir>'}`"

    def stopped_at_once(self, signum: int) -> str:
        name = signal.Signals(signum).name
        if self.last_good is not None:
            kept = f"the last checkpoint {self.last_good} is kept; continue with {self.resume_hint()}"
        else:
            where = self.run_dir.path if self.run_dir else "the run directory"
            kept = f"no checkpoint was written yet: remove {where} or choose another --out to start again"
        return f"{name} again during step {self.trainer.step_count + 1}: stopped at once without saving it; {kept}"

    def final_evaluation(self) -> dict:
        """The final evaluation (kNN, online probe, offline linear probe), interruptible at once: it runs
        after the last checkpoint, so a Ctrl-C loses no training."""
        trainer, settings = self.trainer, self.settings
        self.progress.write(
            f"step {trainer.step_count}: training done; {self.evaluator.describe(settings.probe_epochs)}"
        )
        try:
            with interrupts():
                final = self.evaluator(trainer.method, probe_epochs=settings.probe_epochs)
        except KeyboardInterrupt as e:
            name = signal.Signals(signal_of(e)).name
            saved = f"saved to {self.last_good}" if self.last_good else "not saved (no run directory)"
            raise Interrupted(
                f"{name} during the final evaluation: training is complete ({trainer.step_count} steps, {saved}) "
                f"but no final accuracy was recorded; evaluate with {self.resume_hint()} (it trains nothing more)",
                signal_of(e),
            ) from None
        final.update(self.skipped())
        self.metrics.write("final", trainer.step_count, **final)
        return final

    def estimate(self, step: int) -> None:
        """Once, measured over the first steps after the first (which includes start-up): when the rest of
        the run would take far beyond minutes on this device, one line with the estimate and the knobs."""
        if self.estimated or not self.runtime.master:
            return
        now = time.perf_counter()
        if self.t_measure is None:
            self.t_measure, self.paused_at_measure, self.step_measure = now, self.paused_s, step
            if self.trainer.compile == "off" and not self.runtime.is_cuda and self.first_step_s is not None:
                left = self.trainer.total_steps - step
                if self.first_step_s * left >= EARLY_ESTIMATE_FACTOR * ESTIMATE_LINE_S:
                    self.estimated = True
                    line = estimate_line(self.first_step_s, left, (step, step), self.settings, self.runtime.device)
                    self.progress.write(line)
            return
        measured = step - self.step_measure
        elapsed = now - self.t_measure - (self.paused_s - self.paused_at_measure)
        if measured < ESTIMATE_STEPS and elapsed < ESTIMATE_SECONDS:
            return
        self.runtime.synchronize()  # once per run: a GPU may still be running the steps measured
        elapsed += time.perf_counter() - now
        self.estimated = True
        line = estimate_line(
            elapsed / measured,
            self.trainer.total_steps - step,
            (self.step_measure + 1, step),
            self.settings,
            self.runtime.device,
        )
        if line:
            self.progress.write(line)

    # -- pieces ----------------------------------------------------------------------------------------
    def accumulate(self, out: dict) -> None:
        loss = out["loss"].detach()
        self.nonfinite |= ~torch.isfinite(loss)
        for k, v in out.items():
            if torch.is_tensor(v) and v.ndim == 0 and k not in ("probe_correct", "probe_count"):
                v = v.detach().float()
                self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.interval_steps += 1

    def paused(self, fn, *args) -> None:
        """Run ``fn`` with its time excluded from the interval's samples/s and data-wait figures."""
        t0 = time.perf_counter()
        fn(*args)
        self.t_step_end = time.perf_counter()
        self.t_interval += self.t_step_end - t0
        self.paused_s += self.t_step_end - t0

    def check_finite(self, upto: int) -> None:
        if self.runtime.any_rank(bool(self.nonfinite.item())):
            where = (
                f"the last good checkpoint {self.last_good} is kept"
                if self.last_good
                else "no checkpoint was written yet"
            )
            when = (
                f"at step {upto}"
                if upto == self.last_checked + 1
                else f"between steps {self.last_checked + 1} and {upto}"
            )
            raise NonFiniteLoss(f"loss became NaN/inf {when}; stopped, {where}; lower --lr or check the data")
        self.last_checked = upto

    def skipped(self) -> dict:
        stats = self.trainer.loader.stats
        return (
            {"corrupt_skipped": stats.corrupt, "corrupt_keys": list(stats.corrupt_keys[:10])} if stats.corrupt else {}
        )

    def interval_means(self) -> dict[str, float]:
        """Each figure of the steps since the last record, averaged over them and over the ranks: the global
        batch's. A method's figures are the global batch's already (probe accuracy, feature spread: from sums
        and counts over the ranks) or a rank's share whose mean over the ranks is (losses over equal parts of
        the global batch; the probe's scaled by its labelled samples), so the curves of a recipe are the same on
        any number of processes. One collective, on every rank."""
        keys = sorted(self.sums)
        values = torch.stack([self.sums[k] for k in keys]).double()
        if self.runtime.distributed:
            torch.distributed.all_reduce(values)
            values = values / self.runtime.world_size
        return {k: v / self.interval_steps for k, v in zip(keys, values.tolist())}

    def log(self, step: int) -> None:
        self.runtime.synchronize()
        self.check_finite(step)
        now = time.perf_counter()
        elapsed = max(now - self.t_interval, 1e-9)
        record = self.interval_means()
        record.update(
            epoch=self.epoch,
            lr=self.trainer.optimizer.param_groups[0]["lr"],
            samples_per_s=self.interval_steps * self.settings.batch_size / elapsed,
            data_wait=self.wait / elapsed,
        )
        record.update(self.skipped())
        self.logs += 1
        if self.runtime.master:
            self.metrics.write("train", step, **record)
            self.progress.log(step, record)
            compiled = self.trainer.compile_report(final=step == self.trainer.total_steps)  # once: what compiling cost
            if compiled:
                self.metrics.write("compile", step, **{k: v for k, v in compiled.items() if k != "line"})
                self.progress.write(f"step {step}: {compiled['line']}")
            hint = data_wait_hint(record["data_wait"], self.settings, self.runtime.is_cuda) if self.logs > 1 else None
            if hint and not self.hinted:  # once per run, after the first interval (start-up is not waiting)
                self.progress.write(f"step {step}: {hint}")
                self.hinted = True
            corrupt = self.trainer.loader.stats.corrupt
            if corrupt > self.skipped_reported:
                self.progress.write(
                    f"step {step}: {corrupt} corrupt sample(s) skipped so far (--on-corrupt skip), "
                    f"first: {', '.join(map(SampleTable.shown_key, self.trainer.loader.stats.corrupt_keys[:3]))}"
                )
                self.skipped_reported = corrupt
        self.sums, self.interval_steps, self.wait = {}, 0, 0.0
        self.t_interval = self.t_step_end = time.perf_counter()

    def checkpoint(self, step: int, keep: bool) -> None:
        self.check_finite(step)
        rngs = [rng_state()]
        if self.runtime.distributed:
            rngs = [None] * self.runtime.world_size
            torch.distributed.all_gather_object(rngs, rng_state())
        if self.runtime.master and self.run_dir is not None:
            state = {
                "settings": self.settings.to_dict(),
                "resolved": self.resolved,
                **self.trainer.state_dict(),
                "rng": rngs,
            }
            if keep:
                save_checkpoint(self.run_dir.path / f"ckpt-{step}.pt", state)
            self.last_good = save_checkpoint(self.run_dir.path / CKPT_LAST, state)

    def evaluate(self, step: int) -> None:
        if self.runtime.master:
            result = self.evaluator(self.trainer.method)
            self.metrics.write("eval", step, **result)
            self.progress.write(
                f"step {step}: kNN {result['knn_acc']:.2%}, online probe {result['online_probe_acc']:.2%}"
            )
        self.runtime.barrier()
