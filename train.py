"""Train a segmentation model from a named config. One script, read top to bottom.

    python train.py --list-configs                                  # one line per config; --help lists the keys
    python train.py --print-config icesegnet_yrcc2                  # every key with its value and meaning
    python train.py --config demo                                   # one process (CPU or one GPU)
    torchrun --standalone --nproc_per_node=2 train.py --config unetpp_glacier_debug
    torchrun --standalone --nproc_per_node=8 train.py --config unetpp_glacier --optim.lr=2e-4 --train.amp=bf16

Rerunning the same command resumes from ``<work_dir>/last.pt`` (``--train.resume=False`` starts
over); a truncated ``last.pt`` falls back to ``last.prev.pt`` with a warning. With
``--train.deterministic=True`` a resumed run repeats the uninterrupted run's losses exactly.
SIGTERM/SIGINT (cluster preemption, Ctrl-C) finish the current step on every rank, save
``last.pt`` and exit with status 128 + signal number. A step with a non-finite loss or gradient
is skipped and logged; ``train.nonfinite_patience`` of them in a row save ``last.pt`` and stop.
Outputs in the work dir: ``config.json``, ``log.jsonl`` (one JSON object per train/val/skip
event), ``last.pt`` and ``best.pt`` (written atomically; loadable with ``weights_only=True``).
"""

import contextlib
import copy
import datetime
import gc
import json
import math
import os
import random
import resource
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Subset

import configs
import iceseg
from iceseg import dist
from iceseg.checkpoint import (
    check_resume,
    load_checkpoint,
    load_model_state,
    prev_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
    snapshot,
)
from iceseg.data import ResumableSampler, build_train_val, loader_error, prepare_data, skip_bad_samples
from iceseg.evaluation import build_evaluator, json_safe, to_device
from iceseg.fast import fuse_conv_bn, keep_freed_memory, optimize
from iceseg.inference import autocast_dtype, eval_autocast
from iceseg.schedule import EarlyStopping, Plateau, improved
from iceseg.segmentor import build_model, convert_sync_batchnorm, param_groups

# ----------------------------------------------------------------------------- config
cfg, overrides = configs.from_argv(sys.argv[1:], "train.py")  # --help, --list-configs, --print-config exit here
T, D, O, S = cfg.train, cfg.data, cfg.optim, cfg.schedule

# ----------------------------------------------------------------------------- distributed
if T.malloc == "keep":  # glibc reuses the pages a step freed (no page faults per step); --train.malloc=default
    keep_freed_memory()
if T.deterministic:  # must precede the first cuBLAS call; deterministic cuBLAS needs a fixed workspace
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
rank, world, device = dist.init_distributed(T.device, T.dist_timeout_min)
print0, fail = dist.print0, dist.fail
for o in overrides:
    print0(f"override: {o}")
torch.manual_seed(T.seed + rank)
random.seed(T.seed + rank)
np.random.seed(T.seed + rank)
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
if T.deterministic:  # ops with no deterministic kernel (e.g. bilinear backward on CUDA) warn, not fail
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
work_dir = Path(T.work_dir)
if rank == 0:
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "config.json").write_text(json.dumps(configs.to_dict(cfg), indent=2))


def on_uncaught(kind, err, tb) -> None:
    """Uncaught error under torchrun: print it (with a hint when a collective failed) and exit at once.

    A process group whose peer died can abort or hang while shutting down, so this exits with
    ``os._exit(1)``; torchrun then stops the other ranks and names the first failure.
    """
    sys.__excepthook__(kind, err, tb)
    if isinstance(err, torch.distributed.DistError) or any(s in str(err) for s in ("gloo", "NCCL", "Timed out")):
        restarts = [int(os.environ.get(f"TORCHELASTIC_{k}", 0)) for k in ("RESTART_COUNT", "MAX_RESTARTS")]
        print(f"rank {rank}: a collective operation failed: another process has most likely died (its own error and "
              f"torchrun's summary name it) or stalled for train.dist_timeout_min={T.dist_timeout_min:g} minutes. "
              + ("torchrun restarts the group (--max-restarts), which resumes" if restarts[0] < restarts[1] else
                 "Rerun the same command to resume") + f" from {work_dir / 'last.pt'}.", file=sys.stderr, flush=True)
    os._exit(1)


if world > 1:
    sys.excepthook = on_uncaught


def log_json(event: dict) -> None:
    """Append one strict-JSON line to work_dir/log.jsonl (rank 0 only; undefined scores are null)."""
    if rank == 0:
        with open(work_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(json_safe(event), allow_nan=False) + "\n")


# ----------------------------------------------------------------------------- data
if rank == 0:
    prepare_data(D)  # synthetic datasets are generated once, by rank 0
dist.barrier()
try:  # every file's header is read first (data.check=full: every file decoded); all bad files in one message
    train_set, val_set = build_train_val(D, T.seed)
except (FileNotFoundError, KeyError, ValueError) as e:
    fail(f"error: {e.args[0]}")
if note := getattr(train_set, "label_mapping_note", ""):  # the label encoding decided from the files
    print0(f"labels ({train_set.label_encoding}): {note}")
val_shard = Subset(val_set, list(range(rank, len(val_set), world)))  # no padding: unbiased metrics
sampler = ResumableSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=T.seed, drop_last=True)
# workers restart each epoch so set_epoch reaches them; one silent for data.timeout_s is an error naming its file
loader_kw = dict(num_workers=D.num_workers, pin_memory=device.type == "cuda", persistent_workers=False,
                 timeout=D.timeout_s if D.num_workers else 0)
# Own generators: worker seeds (torch seeds torch/numpy/random in worker w with base + w) never draw from the
# global RNG; the train loader's is reseeded per (seed, rank, epoch): a resumed epoch gives its workers the same.
loader_gen = torch.Generator()
train_loader = DataLoader(train_set, batch_size=D.batch_size, sampler=sampler, drop_last=True,
                          generator=loader_gen, **loader_kw)
val_loader = DataLoader(val_shard, batch_size=1, shuffle=False, generator=torch.Generator(), **loader_kw)
iters_per_epoch = len(train_loader) // T.accum_steps
if iters_per_epoch == 0:
    fail(f"error: the training set has {len(train_set)} samples: too few for batch {D.batch_size} x "
         f"{T.accum_steps} accumulation steps x {world} processes")
sampler.stop = iters_per_epoch * T.accum_steps * D.batch_size  # per-rank samples in one epoch's steps
if len(train_loader) % T.accum_steps:
    print0(f"note: each epoch uses {iters_per_epoch * T.accum_steps} of its {len(train_loader)} batches per "
           f"process ({iters_per_epoch} step(s) of {T.accum_steps} accumulated batches; the order is reshuffled "
           f"every epoch)")
by_epoch = T.max_epochs > 0
max_iters = T.max_epochs * iters_per_epoch if by_epoch else T.max_iters
unit = iters_per_epoch if by_epoch else 1  # val/ckpt intervals count epochs or iterations
print0(f"{cfg.name}: {len(train_set)} train / {len(val_set)} val samples, {world} process(es) on {device}, "
       f"{max_iters} iterations ({iters_per_epoch} per epoch)")

# ----------------------------------------------------------------------------- model, optimizer, schedule
model = build_model(cfg).to(device, memory_format=torch.channels_last if T.channels_last else torch.preserve_format)
if T.fast_paths:  # same results, computed faster (iceseg/fast.py); --train.fast_paths=False: the reference math
    optimize(model)
if T.sync_bn and world > 1 and device.type == "cuda":  # train.sync_bn_exclude keeps some BN per process
    model = convert_sync_batchnorm(model, T.sync_bn_exclude)
print0(f"model {cfg.model.name}: {sum(p.numel() for p in model.parameters()):,} parameters")

groups = param_groups(model, O)  # weight decay off by name (optim.no_decay) or norm type (no_decay_norm)
if O.name == "sgd":
    optimizer = torch.optim.SGD(groups, lr=O.lr, momentum=O.momentum, fused=O.fused or None)
else:
    opt_cls = torch.optim.AdamW if O.name == "adamw" else torch.optim.Adam
    optimizer = opt_cls(groups, lr=O.lr, betas=O.betas, eps=O.eps, fused=O.fused or None)
plateau = Plateau(O.lr, S.plateau_mode or T.best_mode, S.plateau_factor, S.plateau_patience, S.plateau_threshold,
                  S.plateau_cooldown, S.plateau_min_lr)  # ReduceLROnPlateau on schedule.plateau_metric
early = EarlyStopping(T.early_stop_mode or T.best_mode, T.early_stop_patience, T.early_stop_min_delta)


def get_lr(it: int) -> float:
    """Learning rate at iteration ``it``: linear warm-up, then cosine / poly / constant / plateau."""
    if it < S.warmup_iters:
        return O.lr * (S.warmup_ratio + (1 - S.warmup_ratio) * it / S.warmup_iters)
    t = it - S.warmup_iters
    if S.name == "cosine":
        t_max = S.t_max or max(max_iters - S.warmup_iters, 1)
        return S.min_lr + (O.lr - S.min_lr) * (1 + math.cos(math.pi * t / t_max)) / 2
    if S.name == "poly":
        frac = min(t / max(max_iters - S.warmup_iters, 1), 1.0)
        return S.min_lr + (O.lr - S.min_lr) * (1 - frac) ** S.power
    return O.lr * plateau.state["scale"]


amp_dtype, eval_dtype = autocast_dtype(T.amp, device), eval_autocast(cfg, device)  # eval.amp "": train.amp
if T.amp == "fp16" and amp_dtype is None:
    print0("fp16 autocast needs CUDA: running in fp32 on the CPU")
scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

# ----------------------------------------------------------------------------- resume (before compile and DDP)
start_iter, best, n_skipped = 0, None, 0
if T.resume and any(p.is_file() for p in (work_dir / "last.pt", prev_path(work_dir / "last.pt"))):
    try:  # falls back to last.prev.pt (with a warning); refuses weights or a batch that do not fit this run
        ckpt, resumed = load_checkpoint(work_dir / "last.pt", with_path=True)
        check_resume(ckpt, resumed, world, D.batch_size, T.accum_steps)
        load_model_state(model, ckpt["model"], str(resumed), cfg.name, ckpt.get("config"))
    except ValueError as e:
        fail(f"error: {e}")
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    plateau.state.update(ckpt["plateau"])
    early.state.update(ckpt["early_stop"] if "early_stop" in ckpt else  # older checkpoints: on best_metric
                       {"best": ckpt["best"], "stale": ckpt["stale"]})
    start_iter, best, n_skipped = ckpt["iter"], ckpt["best"], ckpt.get("skipped", 0)
    set_rng_state(ckpt["rng"][rank % len(ckpt["rng"])])
    print0(f"resumed from {resumed} at iteration {start_iter}")
model_without_ddp = eval_model = model
if T.compile:  # one compiled module for the train steps and evaluate() (train/eval mode: one graph each)
    model = eval_model = torch.compile(model)
if world > 1:
    model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


# ----------------------------------------------------------------------------- evaluation
def evaluate() -> tuple[dict, str]:
    """Metrics of the current model on the validation set (every rank runs its shard; all-reduced) and their table."""
    model_without_ddp.eval()
    if world > 1:  # every rank scores what is saved: rank 0's buffers (each rank's BN statistics drift apart)
        for b in model_without_ddp.buffers():
            torch.distributed.broadcast(b, 0)
    net = eval_model
    if cfg.eval.fuse_conv_bn:  # what test.py scores: BatchNorm folded as there, on a copy of the weights
        net = fuse_conv_bn(copy.deepcopy(model_without_ddp))
        net = torch.compile(net) if T.compile else net
    ev, errors = build_evaluator(cfg, device), []
    with torch.no_grad(), torch.autocast(device.type, dtype=eval_dtype, enabled=eval_dtype is not None):
        for batch in skip_bad_samples(val_loader, errors):  # noted in `errors`; all ranks stop together below
            ev.update(net, to_device(batch, device))
    del net
    if dist.any_rank(bool(errors)):
        fail("\n".join(f"error: validation {e}" for e in errors), rank0_only=False)
    model_without_ddp.train()
    metrics = ev.compute()
    return metrics, ev.table(metrics)


def save(path: Path, it: int, metrics: dict | None = None) -> None:
    """Write ``last.pt`` (``metrics`` None: everything a resume needs, RNG states of every rank gathered) or
    ``best.pt`` (weights, config and ``metrics`` only) atomically; every rank must call it, rank 0 writes.
    A failed write (full disk) stops every rank with one line; the previous file stays whole."""
    last = metrics is None
    rng = [rng_state()]
    if world > 1 and last:
        rng = [None] * world
        torch.distributed.all_gather_object(rng, rng_state())
    error = ""
    if rank == 0:
        state = {"model": model_without_ddp.state_dict(), "iter": it, "epoch": it // iters_per_epoch, "best": best,
                 "threads": torch.get_num_threads(), "config": configs.to_dict(cfg), "version": iceseg.__version__}
        state.update({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "plateau": dict(plateau.state),
                      "early_stop": dict(early.state), "skipped": n_skipped, "world_size": world,
                      "batch_size": D.batch_size, "accum_steps": T.accum_steps, "rng": rng} if last else
                     {"metrics": json_safe(metrics)})
        try:
            save_checkpoint(state, path, keep_prev=last)
            if last and T.keep_last:
                snapshot(path, it, T.keep_last)  # iter_<it>.pt; the oldest removed once the new one is whole
        except OSError as e:
            error = f"error: {e.strerror or e}; stopped after iteration {it} (free space, then rerun to resume)"
    if dist.any_rank(bool(error)):
        fail(error)


def stop_run(it: int, message: str, code: int) -> None:
    """Save last.pt at iteration ``it`` (all ranks), print ``message`` and exit with status ``code``."""
    save(work_dir / "last.pt", it)
    print0(message)
    dist.barrier()
    dist.cleanup()
    sys.exit(code)


# ----------------------------------------------------------------------------- training loop
def batches(it: int):
    """Yield (epoch, batch) forever from iteration ``it`` on, restoring the in-epoch position."""
    epoch = it // iters_per_epoch
    sampler.skip = (it % iters_per_epoch) * T.accum_steps * D.batch_size
    while True:
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        loader_gen.manual_seed(int(np.random.SeedSequence([T.seed, rank, epoch]).generate_state(1)[0]))
        for batch in train_loader:
            yield epoch, batch
        epoch += 1
        sampler.skip = 0


def on_signal(signum, frame) -> None:
    """SIGTERM/SIGINT: note the request; the loop finishes its step, then every rank saves and exits.

    DataLoader workers inherit this handler and so ignore the signal: they keep serving the step.
    """
    global stop_signal
    if not stop_signal and os.getpid() == main_pid:
        print(f"rank {rank}: {signal.Signals(signum).name} received: finishing this step, then saving "
              f"{work_dir / 'last.pt'} (SIGKILL to quit at once)", flush=True)
    stop_signal = signum


stop_signal, main_pid = 0, os.getpid()
signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
model.train()
stream = batches(start_iter)
t0, t_last, n_bad, done = time.time(), time.time(), 0, start_iter
for it in range(start_iter, max_iters):
    lr = get_lr(it)
    if hasattr(model_without_ddp, "set_progress"):  # e.g. a loss weight with its own warm-up
        model_without_ddp.set_progress(it, max_iters)
    for g in optimizer.param_groups:
        g["lr"] = lr * g["lr_mult"]
    loss_sum = torch.zeros((), device=device)
    for micro in range(T.accum_steps):
        try:
            epoch, batch = next(stream)
            error = ""
        except Exception as e:  # noqa: BLE001  (a bad sample, or a DataLoader worker that died)
            error = f"error: {loader_error(e, train_set)}"
        if dist.any_rank(bool(error)):  # the rank(s) that met it print the file's one line; all ranks stop
            fail(error, rank0_only=False)
        batch = to_device(batch, device)
        sync = contextlib.nullcontext() if world == 1 or micro == T.accum_steps - 1 else model.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                losses = model(batch["img"], batch["label"])  # label: tensor or {task: tensor}
                loss = sum(losses.values()) / T.accum_steps
                if it + 1 in T.debug_nan_iters:  # test hook: a non-finite loss at chosen iterations
                    loss = loss * float("nan")
            scaler.scale(loss).backward()
        loss_sum += loss.detach()
    # one collective carries the mean loss and any rank's stop request, so that all ranks act alike
    loss_all, stop = dist.all_reduce_mean(torch.stack([loss_sum, loss_sum.new_tensor(float(stop_signal))]))
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), O.clip_grad if O.clip_grad > 0 else float("inf"))
    done = it + 1
    finite = bool(torch.isfinite(loss_all) and torch.isfinite(grad_norm))  # equal on all ranks (reduced)
    if finite:
        scaler.step(optimizer)
        n_bad = 0
    else:  # skip the update; an fp16 overflow (finite loss, scale >= 1) is the scaler's to handle
        overflow = scaler.is_enabled() and bool(torch.isfinite(loss_all)) and scaler.get_scale() >= 1
        n_bad, n_skipped = n_bad + (not overflow), n_skipped + 1
        print0(f"iter {done}: loss {loss_all.item():.4g}, grad norm {grad_norm.item():.4g}: step skipped "
               f"({n_bad} non-finite in a row, {n_skipped} skipped in all)")
        log_json({"event": "skip", "iter": done, "loss": str(loss_all.item()), "grad_norm": str(grad_norm.item()),
                  "fp16_overflow": overflow, "in_a_row": n_bad, "skipped": n_skipped})
    scaler.update()  # fp16: lowers the loss scale after an overflow; no-op otherwise
    optimizer.zero_grad(set_to_none=True)
    if n_bad >= T.nonfinite_patience:
        stop_run(done, f"stopping: {n_bad} consecutive steps with a non-finite loss or gradient (iterations "
                 f"{done - n_bad + 1}-{done}); last.pt saved at iteration {done}. Lower optim.lr, set "
                 f"optim.clip_grad or check the data, then rerun the same command to resume.", 1)

    if finite and (done % T.log_interval == 0 or done == max_iters):
        dt = time.time() - t_last
        t_last = time.time()
        speed = T.log_interval / dt if dt > 0 else 0.0
        eta = (max_iters - done) * (time.time() - t0) / (done - start_iter)
        mem = (torch.cuda.max_memory_allocated() if device.type == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
        print0(f"iter {done}/{max_iters} epoch {epoch + 1} loss {loss_all.item():.4f} lr {lr:.3g} "
               f"grad {grad_norm.item():.3f} {speed:.2f} it/s eta {datetime.timedelta(seconds=int(eta))} "
               f"mem {mem:.2f} GiB")
        log_json({"event": "train", "iter": done, "epoch": epoch + 1, "loss": loss_all.item(), "lr": lr,
                  "grad_norm": grad_norm.item(), "it_per_s": speed, "mem_gib": mem, "skipped": n_skipped,
                  **{k: dist.all_reduce_mean(v.detach()).item() for k, v in losses.items()}})

    if done % (T.val_interval * unit) == 0 or done == max_iters:
        metrics, table = evaluate()
        value = metrics[T.best_metric]
        print0(table)
        log_json({"event": "val", "iter": done, "epoch": done // iters_per_epoch, **metrics})
        if improved(value, best, T.best_mode):
            best = value
            save(work_dir / "best.pt", done, metrics)
            print0(f"new best {T.best_metric} {value:.4f} at iteration {done}: {work_dir / 'best.pt'}")
        if S.name == "plateau" and (new_lr := plateau.step(metrics[S.plateau_metric or T.best_metric])):
            print0(f"plateau: lr reduced to {new_lr:.3g}")
        if early.step(metrics[T.early_stop_metric or T.best_metric]):
            save(work_dir / "last.pt", done)
            print0(f"early stop: {T.early_stop_metric or T.best_metric} did not improve by more than "
                   f"{T.early_stop_min_delta:g} in {early.state['stale']} evaluations")
            break
    if done % (T.ckpt_interval * unit) == 0 or done == max_iters:
        save(work_dir / "last.pt", done)
    if stop > 0 and done < max_iters:
        name = signal.Signals(stop_signal or signal.SIGTERM).name  # ranks not signalled report SIGTERM
        stop_run(done, f"stopped by {name} after iteration {done}: last.pt saved; rerun the same command "
                 f"to resume", 128 + (stop_signal or signal.SIGTERM))

print0(f"done: {done} iterations, best {T.best_metric} {best}")
dist.barrier()  # let rank 0 finish writing before the group goes away
del model  # the DDP wrapper's reducer holds the process group: release it before destroying the group
gc.collect()
dist.cleanup()
