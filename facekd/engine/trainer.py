"""The one training loop of facekd: every pipeline hands a ``TrainTask`` to ``Trainer.fit``.

The engine owns the step (AMP autocast, grad scaler, accumulation, clipping), the optimizer and
per-step lr schedule, DDP (replicated modules wrapped, sharded ones not), the NaN guard,
periodic evaluation and checkpoints, resume, and the run's outputs (config.yaml, metrics.jsonl,
TensorBoard, backbone.pth, head.pth, model.onnx). Only rank 0 logs, evaluates and writes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from facekd.config import save_yaml, to_dict
from facekd.engine import distributed as fdist
from facekd.engine.checkpoint import (
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    remove_stale_temporaries,
    resolve_resume,
    restore_rng,
    save_checkpoint,
)
from facekd.engine.config import TrainConfig
from facekd.engine.metrics_log import MetricsLog
from facekd.engine.optim import (
    OptimSettings,
    ScheduleSpec,
    build_optimizer,
    build_scheduler,
    milestones_tuple,
)
from facekd.engine.sharded_state import (
    full_module_state, full_optimizer_state, load_module_state, load_optimizer_state,
)
from facekd.engine.task import TrainTask
from facekd.log import get_logger, progress
from facekd.models.weights import make_facekd_checkpoint, save_weights_file

log = get_logger(__name__)

__all__ = ["EngineError", "NonFiniteLossError", "TrainResult", "Trainer", "setup_run", "seed_everything",
           "to_device", "AMP_DTYPES"]

AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Autocast dtype of each --amp mode."""
AMP_AUTO: dict[str, str] = {"cuda": "fp16", "cpu": "off"}
"""What --amp auto means on each device type (anything else: off)."""
StepCallback = Callable[["Trainer", int], None]


class EngineError(RuntimeError):
    """A training setup the engine cannot run; the message says what to change."""


class NonFiniteLossError(RuntimeError):
    """The loss of step ``step`` (1-based) became NaN or infinite; the run stopped before that step
    changed any weight and wrote nothing over the last good checkpoint."""

    def __init__(self, step: int, terms: Mapping[str, float], checkpoint: Path | None) -> None:
        self.step, self.terms, self.checkpoint = step, dict(terms), checkpoint
        bad = ", ".join(f"{k}={v}" for k, v in terms.items() if not math.isfinite(v)) or "on another rank"
        kept = (f"the last good checkpoint {checkpoint} is kept unchanged; resume from it with a lower --lr "
                "or gradient clipping" if checkpoint else "no checkpoint had been written yet")
        super().__init__(f"non-finite loss at step {step} ({bad}); training stopped, {kept}")


@dataclass
class TrainResult:
    """What a finished run produced."""

    out_dir: Path
    steps: int
    metrics: dict[str, float]
    backbone_path: Path | None
    head_path: Path | None
    onnx_path: Path | None
    checkpoint: Path | None


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_run(cfg: TrainConfig) -> fdist.DistInfo:
    """Join torchrun's job if launched by it, pick the device, seed, set determinism flags.

    Call before building models: Partial FC reads its rank when constructed, and the seed makes
    every rank build identical initial weights.
    """
    info = fdist.init_distributed(cfg.device, getattr(cfg, "dist_timeout", fdist.DEFAULT_TIMEOUT_S))
    seed_everything(cfg.seed)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return info


def to_device(obj: Any, device: torch.device, memory_format: torch.memory_format | None = None) -> Any:
    """Move tensors inside ``obj`` (tensor, dataclass, mapping, list/tuple, or anything with ``.to``)
    to ``device``; float image batches [N, C, H, W] also get ``memory_format``."""
    if isinstance(obj, Tensor):
        out = obj.to(device, non_blocking=True)
        if memory_format is not None and out.dim() == 4 and out.is_floating_point():
            out = out.contiguous(memory_format=memory_format)
        return out
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: to_device(getattr(obj, f.name), device, memory_format)
                   for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    if isinstance(obj, Mapping):
        return type(obj)({k: to_device(v, device, memory_format) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        moved = [to_device(v, device, memory_format) for v in obj]
        return type(obj)(*moved) if hasattr(obj, "_fields") else type(obj)(moved)
    if hasattr(obj, "to") and callable(obj.to):
        return obj.to(device)
    return obj


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _scheduler_state(scheduler: Any) -> dict[str, Any]:
    """The scheduler's state without its lr functions (rebuilt from the config on resume)."""
    state = scheduler.state_dict()
    state["lr_lambdas"] = [None] * len(state.get("lr_lambdas", []))
    return state


def export_backbone_onnx(backbone: nn.Module, path: Path, input_size: int) -> Path:
    """``model.onnx`` via ``export_onnx`` (which checks it against torch with onnxruntime)."""
    from facekd.models.onnx_backbone import export_onnx

    return export_onnx(backbone, path, input_size=input_size)


class Trainer:
    """Trains a ``TrainTask`` with the settings of a ``TrainConfig`` (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, task: TrainTask, info: fdist.DistInfo | None = None,
                 callbacks: Sequence[StepCallback] = ()) -> None:
        self.cfg, self.task = cfg, task
        self.info = info or fdist.DistInfo(fdist.rank(), fdist.world_size(), 0, fdist.select_device(cfg.device))
        self.device = self.info.device
        self.world = self.info.world_size
        self.callbacks = list(callbacks)
        self.out_dir = Path(cfg.out)
        self.memory_format = torch.channels_last if cfg.channels_last else None
        self._check_config()
        amp_mode = AMP_AUTO.get(self.device.type, "off") if cfg.amp == "auto" else cfg.amp
        self.amp_dtype = AMP_DTYPES[amp_mode]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)

        self.modules = self._prepare_modules(task.modules())
        if task.backbone_key not in self.modules:
            raise EngineError(f"the task has no module '{task.backbone_key}' (modules: {', '.join(self.modules)})")
        self.trainable = {k for k, m in self.modules.items() if _trainable(m)}
        self.sharded = set(task.sharded) & set(self.modules)
        named = [(f"{k}.{n}", p) for k, m in self.modules.items() if k in self.trainable
                 for n, p in m.named_parameters() if p.requires_grad]
        self.sharded_params = [p for k in sorted(self.sharded) for p in self.modules[k].parameters() if p.requires_grad]
        self.optimizer = build_optimizer(cfg.optimizer, named, OptimSettings(
            lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, betas=tuple(cfg.betas),
            weight_decay=cfg.weight_decay))

        self.batches_per_epoch = int(task.batches_per_epoch())
        self.steps_per_epoch = self.batches_per_epoch // cfg.accum_steps
        if self.steps_per_epoch < 1:
            raise EngineError(f"an epoch has {self.batches_per_epoch} batch(es) per process, fewer than "
                              f"--accum-steps {cfg.accum_steps}: use a smaller --batch-size or more data")
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * self.steps_per_epoch
        warmup = min(self.total_steps, int(round(cfg.warmup_epochs * self.steps_per_epoch)) + cfg.warmup_steps)
        self.scheduler = build_scheduler(cfg.schedule, self.optimizer, ScheduleSpec(
            total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch, warmup_steps=warmup,
            power=cfg.lr_power, min_factor=cfg.min_lr / cfg.lr, milestones=milestones_tuple(cfg.lr_milestones),
            gamma=cfg.lr_gamma))

        self.step = 0
        self.skipped = 0  # corrupt samples the data loader replaced since the last epoch report
        self.last_checkpoint: Path | None = None
        self.last_eval: dict[str, float] = {}
        if cfg.resume:
            self._resume(cfg.resume)
        else:
            torch.manual_seed(cfg.seed + self.info.rank)  # independent dropout / sampling per rank
        self.wrapped = self._wrap_modules()
        self.metrics = MetricsLog(self.out_dir, enabled=self.info.is_main, tensorboard=cfg.tensorboard)
        if cfg.resume:
            self.metrics.truncate_after(self.step)

    # ------------------------------------------------------------------------------------------
    # setup

    def _check_config(self) -> None:
        cfg = self.cfg
        for name in ("batch_size", "accum_steps", "log_every", "ckpt_every"):
            if getattr(cfg, name) < 1:
                raise EngineError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
        if cfg.max_steps < 0 or (cfg.max_steps == 0 and cfg.epochs < 1):
            raise EngineError("set --epochs >= 1 or --max-steps >= 1")
        if cfg.bn_mode == "sync" and self.device.type != "cuda":
            raise EngineError("--bn-mode sync needs CUDA (torch's SyncBatchNorm runs on GPUs only); "
                              "use 'batch' or 'frozen' on CPU")

    def _prepare_modules(self, modules: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {}
        for name, module in modules.items():
            if self.cfg.bn_mode == "sync" and self.world > 1 and _trainable(module):
                module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
            module = module.to(self.device)
            if self.memory_format is not None:
                module = module.to(memory_format=self.memory_format)
            out[name] = module
        return out

    def _wrap_modules(self) -> dict[str, nn.Module]:
        """DDP around replicated trainable modules; torch.compile when asked; others as they are."""
        wrapped: dict[str, nn.Module] = {}
        for name, module in self.modules.items():
            m = module
            replicated = name in self.trainable and name not in self.sharded
            if replicated and self.world > 1:
                ids = [self.device.index] if self.device.type == "cuda" else None
                m = DistributedDataParallel(m, device_ids=ids, broadcast_buffers=True)
            if replicated and self.cfg.compile:
                m = torch.compile(m)
            wrapped[name] = m
        return wrapped

    def _set_train_mode(self) -> None:
        for name, module in self.modules.items():
            module.train(name in self.trainable)
            if self.cfg.bn_mode == "frozen":
                for sub in module.modules():
                    if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                        sub.eval()

    # ------------------------------------------------------------------------------------------
    # state: gather (collective) and restore

    def _full_module_state(self, name: str) -> dict[str, Tensor]:
        """State dict of a module on CPU; a sharded module's rows gathered from every rank."""
        return full_module_state(self.modules[name], name in self.sharded)

    def _load_module_state(self, name: str, state: Mapping[str, Tensor]) -> None:
        load_module_state(self.modules[name], state, name in self.sharded, self.info.rank)

    def _checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly; collective (every rank must call it)."""
        task = self.task
        states = {k: self._full_module_state(k) for k in self.modules if k in self.trainable}
        backbone = states.pop(task.backbone_key, None)
        if backbone is None:
            backbone = self._full_module_state(task.backbone_key)
        head = states.pop(task.head_key, None) if task.head_key else None
        rng = fdist.all_gather_objects(capture_rng())
        return make_facekd_checkpoint(
            task.arch or type(self.modules[task.backbone_key]).__name__, dict(task.arch_options), backbone,
            head=head, head_name=task.head_name, config=to_dict(self.cfg),
            step=self.step, epoch=self.step // self.steps_per_epoch, modules=states,
            optimizer=full_optimizer_state(self.optimizer, self.sharded_params), scheduler=_scheduler_state(self.scheduler),
            scaler=self.scaler.state_dict(), rng=rng, world_size=self.world)

    def _resume(self, target: str) -> None:
        run_dir, path = resolve_resume(target)
        if self.info.is_main:
            remove_stale_temporaries(run_dir)
        ckpt = load_checkpoint(path)
        task = self.task
        self._load_module_state(task.backbone_key, ckpt["backbone"])
        if task.head_key and task.head_key in self.trainable:
            if ckpt.get("head") is None:
                raise EngineError(f"{path}: the checkpoint has no head to resume '{task.head_key}'")
            self._load_module_state(task.head_key, ckpt["head"])
        for name, state in ckpt["modules"].items():
            if name not in self.modules:
                raise EngineError(f"{path}: the checkpoint holds module '{name}' that this task does not have")
            self._load_module_state(name, state)
        load_optimizer_state(self.optimizer, ckpt["optimizer"], self.sharded_params, self.info.rank)
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        rng = ckpt["rng"]
        if int(ckpt["world_size"]) == self.world and len(rng) == self.world:
            restore_rng(rng[self.info.rank])
        else:
            log.warning("resuming a %d-process run with %d processes: random streams are re-seeded, so the "
                        "continuation is statistically but not bitwise identical", ckpt["world_size"], self.world)
            seed_everything(self.cfg.seed + 7919 * self.step + self.info.rank)
        self.last_checkpoint = path
        log.info("resumed from %s at step %d/%d", path, self.step, self.total_steps)

    # ------------------------------------------------------------------------------------------
    # the loop

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _no_sync(self, last_micro: bool) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if not last_micro:
            for m in self.wrapped.values():
                inner = getattr(m, "_orig_mod", m)
                if isinstance(inner, DistributedDataParallel):
                    stack.enter_context(inner.no_sync())
        return stack

    def _batches(self, epoch: int, start: int) -> Iterator[Any]:
        return iter(self.task.train_batches(epoch, start))

    def _clip(self) -> float:
        """Clip the global gradient norm (sharded rows counted once over all ranks); returns the norm."""
        sharded_ids = {id(p) for p in self.sharded_params}
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        rep = [p.grad for g in self.optimizer.param_groups for p in g["params"]
               if p.grad is not None and id(p) not in sharded_ids]
        shd = [p.grad for p in self.sharded_params if p.grad is not None]
        sq = torch.zeros((), dtype=torch.float32, device=self.device)
        for g in rep:
            sq = sq + g.detach().float().pow(2).sum()
        shard_sq = torch.zeros((), dtype=torch.float32, device=self.device)
        for g in shd:
            shard_sq = shard_sq + g.detach().float().pow(2).sum()
        if self.sharded_params:
            fdist.all_reduce_sum(shard_sq)
        total = (sq + shard_sq).sqrt()
        torch.nn.utils.clip_grads_with_norm_(params, self.cfg.clip_grad_norm, total)  # takes parameters, not grads
        return float(total)

    def _train_step(self, batches: Iterator[Any]) -> tuple[dict[str, float], int, float | None]:
        """One optimizer step over ``accum_steps`` micro-batches; returns (term values, images, grad norm)."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        images = 0
        for micro in range(cfg.accum_steps):
            batch = to_device(next(batches), self.device, self.memory_format)
            self.skipped += int(getattr(batch, "num_skipped", 0) or 0)
            images += self.task.batch_size_of(batch)
            with self._no_sync(micro == cfg.accum_steps - 1):
                with self._autocast():
                    terms = self.task.compute_losses(batch, self.wrapped)
                if not terms:
                    raise EngineError("compute_losses returned no loss terms")
                names = list(terms)
                values = torch.stack([terms[k].detach().float().reshape(()) for k in names]).tolist()
                finite = all(math.isfinite(v) for v in values)
                if fdist.all_reduce_max(0.0 if finite else 1.0, self.device) > 0:
                    raise NonFiniteLossError(self.step + 1, dict(zip(names, values)), self.last_checkpoint)
                scale = {k: (self.world if k in self.task.global_terms else 1) / cfg.accum_steps for k in names}
                loss = sum(terms[k].float() * scale[k] for k in names)
                self.scaler.scale(loss).backward()
            for k, v in zip(names, values):
                sums[k] = sums.get(k, 0.0) + v / cfg.accum_steps
        self.scaler.unscale_(self.optimizer)
        if self.world > 1 and self.sharded_params:
            for p in self.sharded_params:
                if p.grad is not None:
                    p.grad.div_(self.world)
        norm = self._clip() if cfg.clip_grad_norm > 0 else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return sums, images, norm

    def _evaluate(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.info.is_main:
            for m in self.modules.values():
                m.eval()
            with torch.no_grad():
                metrics = {f"eval/{k}": float(v) for k, v in self.task.evaluate(self.modules).items()}
            if metrics:
                self.metrics.write({"step": self.step, "epoch": self.step / self.steps_per_epoch, **metrics})
                log.info("step %d eval: %s", self.step, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            self._set_train_mode()
        fdist.barrier()
        self.last_eval = metrics
        return metrics

    def _save_checkpoint(self) -> None:
        state = self._checkpoint_state()
        if self.info.is_main:
            self.last_checkpoint = save_checkpoint(state, self.out_dir, self.step, self.cfg.keep_ckpts)
            log.info("checkpoint %s", self.last_checkpoint)
        fdist.barrier()

    def fit(self) -> TrainResult:
        """Train to ``total_steps`` (from the resumed step), evaluating and checkpointing on schedule."""
        cfg = self.cfg
        if self.info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_yaml(self.cfg, self.out_dir / "config.yaml")
            log.info("training %d steps (%d per epoch, global batch %d) on %s%s", self.total_steps,
                     self.steps_per_epoch, cfg.batch_size * cfg.accum_steps * self.world, self.device,
                     f", AMP {self.amp_dtype}" if self.amp_dtype else "")
        self._set_train_mode()
        bar = progress(total=self.total_steps, desc="train", unit="step")
        bar.update(self.step)
        window: dict[str, float] = {}
        window_steps, window_images, window_start = 0, 0, time.perf_counter()
        batches: Iterator[Any] | None = None
        current_epoch = -1
        try:
            while self.step < self.total_steps:
                epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
                if batches is None or epoch != current_epoch:
                    batches = self._batches(epoch, in_epoch * cfg.accum_steps)
                    current_epoch = epoch
                try:
                    values, images, norm = self._train_step(batches)
                except StopIteration as err:
                    raise EngineError(f"train_batches(epoch={epoch}) ran out before its {self.batches_per_epoch} "
                                      "batches; batches_per_epoch() and train_batches() disagree") from err
                self.step += 1
                for k, v in values.items():
                    window[k] = window.get(k, 0.0) + v
                window_steps += 1
                window_images += images * self.world
                total = sum(values.values())
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    self._log_window(window, window_steps, window_images / elapsed, norm)
                    bar.set_postfix(loss=f"{total:.4f}", img_s=f"{window_images / elapsed:.0f}")
                    window, window_steps, window_images, window_start = {}, 0, 0, time.perf_counter()
                if self.step % self.steps_per_epoch == 0 or self.step == self.total_steps:
                    self._report_skipped(epoch)
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < self.total_steps:
                    self._evaluate()
                if self.step % cfg.ckpt_every == 0 or self.step == self.total_steps:
                    self._save_checkpoint()
                for callback in self.callbacks:
                    callback(self, self.step)
            metrics = self._evaluate()
            return self._finish(metrics)
        except NonFiniteLossError as err:
            if self.info.is_main:
                self.metrics.write({"step": self.step, "error": str(err)})
            log.error("%s", err)
            raise
        finally:
            bar.close()
            self.metrics.close()

    def _report_skipped(self, epoch: int) -> None:
        """Say how many corrupt samples were skipped this epoch (all ranks together), if any."""
        count = torch.tensor(float(self.skipped), dtype=torch.float64, device=self.device)
        fdist.all_reduce_sum(count)
        self.skipped = 0
        n = int(count.item())
        if n and self.info.is_main:
            log.warning("epoch %d: %d corrupt training sample(s) skipped, each replaced by the next readable one "
                        "(--on-corrupt fail stops at the first instead)", epoch, n)
            self.metrics.write({"step": self.step, "epoch": epoch, "data/skipped": n})

    def _log_window(self, window: Mapping[str, float], steps: int, images_per_s: float, norm: float | None) -> None:
        names = sorted(window)
        means = torch.tensor([window[k] / steps for k in names], dtype=torch.float64, device=self.device)
        fdist.all_reduce_sum(means)
        means = (means / self.world).tolist()
        record: dict[str, Any] = {"step": self.step, "epoch": self.step / self.steps_per_epoch,
                                  "loss": float(sum(means))}
        record.update({f"loss/{k}": v for k, v in zip(names, means)})
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        record["images_per_s"] = images_per_s
        if norm is not None:
            record["grad_norm"] = norm
        if self.info.is_main:
            self.metrics.write(record)
            log.info("step %d/%d loss %.4f (%s) lr %.3g %.0f img/s", self.step, self.total_steps, record["loss"],
                     ", ".join(f"{k} {v:.4f}" for k, v in zip(names, means)), record["lr"], images_per_s)

    def _finish(self, metrics: dict[str, float]) -> TrainResult:
        """Write backbone.pth, head.pth and model.onnx (rank 0; gathering the head is collective)."""
        task = self.task
        head_state = self._full_module_state(task.head_key) if task.head_key and task.head_key in self.modules else None
        backbone_path = head_path = onnx_path = None
        if self.info.is_main:
            backbone = self.modules[task.backbone_key]
            backbone_path = save_weights_file({k: v.detach().cpu() for k, v in backbone.state_dict().items()},
                                              self.out_dir / "backbone.pth")
            if head_state is not None:
                head_path = save_weights_file(head_state, self.out_dir / "head.pth")
            if self.cfg.export_onnx:
                onnx_path = export_backbone_onnx(backbone, self.out_dir / "model.onnx", self.cfg.input_size)
            log.info("finished %d steps; wrote %s", self.step, ", ".join(
                str(p) for p in (backbone_path, head_path, onnx_path) if p is not None))
        fdist.barrier()
        return TrainResult(self.out_dir, self.step, metrics, backbone_path, head_path, onnx_path,
                           self.last_checkpoint or latest_checkpoint(self.out_dir))
