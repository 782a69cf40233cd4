"""Trains the longctx retrieval Llama, exports it as a Hugging Face directory and evaluates it.

One command does everything the GPU machine is asked for (see train/README.md):
  1. reproducibility check: two short runs from the same seed must give identical losses and
     weights (deterministic kernels, data a pure function of the step);
  2. a throughput probe at every curriculum length (on a throwaway copy of the model) that sizes
     the number of steps to the wall-clock budget, unless --steps is given;
  3. training, from a random initialisation or an export (--init-from): AdamW, bf16 autocast,
     loss on answer tokens plus a small LM loss, a length curriculum 256 -> 16384 tokens
     (curriculum.py: fixed shares of the steps, optionally begun part way with
     --curriculum-from or with each length mixed in over --length-ramp, or --curriculum gated:
     stages of length and facts per document advanced by answer accuracy), batches made by
     worker processes; a checkpoint (model, optimizer, step, curriculum) every --ckpt-every
     seconds, --resume continues from it;
  4. export: config.json, model.safetensors (bf16), tokenizer files, generation_config.json;
  5. dense exact-match evaluation of the exported weights (fp32) on held-out documents.

Usage: python train/train.py --tokenizer DIR --out DIR [--seed 1] [--steps N | --train-seconds S]
The same seed and --steps give the same model (the step count chosen by the probe is printed).
Data parallel: torchrun --standalone --nproc_per_node N train/train.py ... --steps S (one process
per GPU, each on every N-th row of a step; the first process logs, checkpoints and exports; the
same command on N GPUs reproduces the run). Steps 1 and 2 run only in a single process.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import multiprocessing as mp
import os
import random
import shutil
import sys
import time
import traceback
from typing import Dict, List, Optional

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import data  # noqa: E402
import tasks  # noqa: E402
from curriculum import (GatedCurriculum, facts_at, length_at, parse_fact_schedule,  # noqa: E402
                        phases_for)
from model import Config, Llama, flops_per_token, num_params  # noqa: E402

RANK, WORLD = 0, 1  # data-parallel process and process count (init_distributed)


def log(msg: str, fh=None) -> None:
    """Prints (and appends to fh) on the first process only."""
    if RANK != 0:
        return
    print(msg, flush=True)
    if fh is not None:
        fh.write(msg + "\n")
        fh.flush()


def init_distributed() -> Optional[torch.device]:
    """Data parallelism under torchrun (WORLD_SIZE > 1): one process per GPU, each training on its
    share of every step's rows (data.make_batch) with gradients averaged over the processes
    before each optimizer step, so all hold the same weights. Sets RANK and WORLD; returns the
    process's device, or None when not launched by torchrun."""
    global RANK, WORLD
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    import torch.distributed as dist
    local = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        device = torch.device("cuda", local)
    else:
        dist.init_process_group("gloo")
        device = torch.device("cpu")
    RANK, WORLD = dist.get_rank(), dist.get_world_size()
    return device


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if WORLD > 1:
        import torch.distributed as dist
        dist.all_reduce(t)
    return t


def average_gradients(model: Llama) -> None:
    """The mean of the processes' gradients, in one all-reduce (a no-op for one process)."""
    if WORLD <= 1:
        return
    grads = [p.grad for p in model.parameters()]
    flat = torch._utils._flatten_dense_tensors(grads)
    all_reduce_sum(flat).div_(WORLD)
    for g, r in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(r)


STRICT_DETERMINISM = False  # set from --strict-determinism in main()


def set_determinism(seed: int) -> None:
    """Seeds everything and asks for deterministic kernels. warn_only (the default, what both H200
    runs used) lets PyTorch keep kernels that have no deterministic version, among them the
    flash / memory-efficient attention backward (which then accumulates in a varying order);
    strict mode makes PyTorch pick their deterministic variants, and raise for any op that has
    none."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=not STRICT_DETERMINISM)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def make_optimizer(model: Llama, lr: float, wd: float) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8)


def train_step(model: Llama, opt, batch, device, lm_weight: float, lr: float, autocast: bool):
    _, ids, ans, valid = batch
    ids = torch.from_numpy(ids).to(device, non_blocking=True)
    ans = torch.from_numpy(ans).to(device, non_blocking=True)
    valid = torch.from_numpy(valid).to(device, non_blocking=True)
    for g in opt.param_groups:
        g["lr"] = lr
    ctx = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if autocast
           else torch.autocast(device_type="cpu", enabled=False))
    with ctx:
        h, _ = model(ids, hidden_only=True)
    targets = ids[:, 1:]
    h = h[:, :-1]
    ans_m, valid_m = ans[:, :-1], valid[:, :-1]
    with ctx:
        logits_a = model.logits(h[ans_m])
    loss_a = F.cross_entropy(logits_a.float(), targets[ans_m])
    acc_a = (logits_a.argmax(-1) == targets[ans_m]).float().mean()
    loss = loss_a
    loss_lm = torch.zeros((), device=device)
    if lm_weight > 0:
        with ctx:
            logits = model.logits(h[valid_m])
        loss_lm = F.cross_entropy(logits.float(), targets[valid_m])
        loss = loss + lm_weight * loss_lm
    if WORLD > 1:
        # Each process's means weighed by its share of the step's tokens: the averaged gradient
        # (and the averaged figures) are then those of the means over all the step's rows.
        n = torch.stack([ans_m.sum(), valid_m.sum()]).float()
        share = n * WORLD / all_reduce_sum(n.clone())
        loss_a, loss_lm, acc_a = loss_a * share[0], loss_lm * share[1], acc_a * share[0]
        loss = loss_a + lm_weight * loss_lm
    opt.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(model)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss_a.detach(), loss_lm.detach(), acc_a.detach()


class LazySpecs:
    """The specs of steps [first, last), each made by spec_for(step) only when Batches submits it
    (the gated curriculum decides a step's length from the accuracies seen until then)."""

    def __init__(self, first: int, last: int, spec_for):
        self.first, self.last, self.spec_for = first, last, spec_for

    def __len__(self) -> int:
        return self.last - self.first

    def __getitem__(self, i: int) -> tuple:
        return self.spec_for(self.first + i)


class Batches:
    """Batches of steps [first, last) from worker processes, in step order, `ahead` in flight."""

    def __init__(self, pool, specs: List[tuple], ahead: int):
        self.pool, self.specs, self.ahead = pool, specs, ahead
        self.pending: Dict[int, object] = {}
        self.next_submit = 0

    def __iter__(self):
        for i in range(len(self.specs)):
            while self.next_submit < len(self.specs) and self.next_submit < i + self.ahead:
                self.pending[self.next_submit] = self.pool.apply_async(
                    data.make_batch, (self.specs[self.next_submit],))
                self.next_submit += 1
            yield self.pending.pop(i).get()


def weights_digest(model: Llama) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def short_run(cfg: Config, args, pool, device, seed: int, steps: int, length: int):
    set_determinism(seed)
    model = Llama(cfg)
    model.init_weights(seed)
    model.to(device)
    opt = make_optimizer(model, args.lr, args.weight_decay)
    batch = max(1, args.repro_tokens // length)
    losses = []
    for b in Batches(pool, [(seed, s, length, batch) for s in range(steps)], 8):
        la, ll, _ = train_step(model, opt, b, device, args.lm_weight,
                               lr_at(b[0], steps, args.lr, 5), device.type == "cuda")
        losses.append(float(la) + args.lm_weight * float(ll))
    return losses, weights_digest(model)


def probe_step_seconds(cfg: Config, args, pool, device, lengths: List[int]) -> Dict[int, float]:
    """Median seconds per training step at each length, on a throwaway model."""
    model = Llama(cfg)
    model.init_weights(12345)
    model.to(device)
    opt = make_optimizer(model, args.lr, args.weight_decay)
    out = {}
    for L in lengths:
        specs = [(99991, s, L, max(1, args.tokens_per_step // L)) for s in range(4)]
        times = []
        for b in Batches(pool, specs, 4):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            train_step(model, opt, b, device, args.lm_weight, 1e-4, device.type == "cuda")
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        out[L] = sorted(times[1:])[len(times[1:]) // 2]
    del model, opt
    return out


def expected_seconds(total: int, step_s: Dict[int, float], seed: int, max_len: int,
                     start: float = 0.0, ramp: float = 0.0) -> float:
    return sum(step_s[length_at(s, total, seed, max_len, start, ramp)] for s in range(total))


def export(model: Llama, cfg: Config, tok_dir: str, out_dir: str) -> None:
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    tensors = {k: v.detach().to(torch.bfloat16).cpu().contiguous()
               for k, v in model.state_dict().items()}
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg.hf_dict("bfloat16"), f, indent=2)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id}, f,
                  indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok_dir, name), os.path.join(out_dir, name))


def init_from_export(model: Llama, path: str) -> None:
    """Loads an export's (bf16) weights into `model` as fp32."""
    from safetensors.torch import load_file
    sd = {k: v.float() for k, v in load_file(os.path.join(path, "model.safetensors")).items()}
    model.load_state_dict(sd)


def load_exported(path: str, device) -> Llama:
    """An export as a model of its own shape, fp32, in eval mode on `device`."""
    model = Llama(Config.from_hf(os.path.join(path, "config.json")))
    init_from_export(model, path)
    return model.to(device).eval()


def init_shape_mismatch(cfg: Config, path: str) -> Dict[str, tuple]:
    """What differs between an export's shape and this run's ({} when --init-from may load it;
    the number of positions may differ, RoPE has no weights)."""
    mine = dataclasses.asdict(cfg)
    theirs = dataclasses.asdict(Config.from_hf(os.path.join(path, "config.json")))
    return {k: (theirs.get(k), mine[k]) for k in mine
            if k != "max_position_embeddings" and theirs.get(k) != mine[k]}


# Greedy answer tokens at most, by answer format (tasks.ANSWER_FORMATS): values are 1-5 tokens +
# </s>, restated facts up to about 40.
ANSWER_TOKENS = {"value": 8, "restate": 48}


@torch.no_grad()
def answer(model: Llama, past, start: int, query: List[int], device, max_tokens: int = 8
           ) -> List[int]:
    """Greedy answer ids (</s> excluded) to `query` after the cached context."""
    ids = torch.tensor([query], device=device)
    out: List[int] = []
    pos = start
    for _ in range(max_tokens):
        logits, new = model(ids, start=pos, past=past)
        past = [(torch.cat([p[0], n[0]], 2), torch.cat([p[1], n[1]], 2))
                for p, n in zip(past, new)]
        pos += ids.shape[1]
        nxt = int(logits[0, -1].argmax())
        if nxt == data.EOS:
            break
        out.append(nxt)
        ids = torch.tensor([[nxt]], device=device)
    return out


@torch.no_grad()
def evaluate(model: Llama, enc: data.Encoder, lengths: List[int], n_docs: int,
             n_questions: int, device, fh=None, variant: str = "grid",
             answer_format: str = "value") -> Dict[str, dict]:
    max_tokens = ANSWER_TOKENS[answer_format]
    results = {}
    for L in lengths:
        per_kind: Dict[str, List[int]] = {}
        t0 = time.perf_counter()
        misses = []
        for doc, ctx in data.eval_items(enc, L, n_docs, n_questions, variant):
            _, past = model(torch.tensor([ctx], device=device))
            for q in doc.questions:
                want = tasks.answer_text(doc, q, answer_format)
                got = enc.decode(answer(model, past, len(ctx), enc(tasks.query_text(q.question)),
                                        device, max_tokens)).strip()
                ok = got == want
                per_kind.setdefault(q.kind, [0, 0])
                per_kind[q.kind][0] += int(ok)
                per_kind[q.kind][1] += 1
                if not ok and len(misses) < 5:
                    misses.append(f"{q.question} -> {got!r} (want {want})")
        retrieval = [sum(per_kind.get(k, [0, 0])[i] for k in ("single", "needle"))
                     for i in (0, 1)]
        results[str(L)] = {"per_kind": per_kind, "retrieval": retrieval,
                           "seconds": time.perf_counter() - t0}
        log(f"eval L={L}: " + ", ".join(f"{k} {c}/{n}" for k, (c, n) in sorted(per_kind.items()))
            + f" ({time.perf_counter() - t0:.1f}s)", fh)
        for m in misses:
            log(f"  miss: {m}", fh)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description="train the longctx retrieval Llama")
    ap.add_argument("--tokenizer", required=True, help="dir with tokenizer.model/.json")
    ap.add_argument("--out", required=True, help="output dir (HF export, logs)")
    ap.add_argument("--ckpt-dir", default=None, help="checkpoint dir (default OUT/ckpt)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=0, help="0: sized by the probe")
    ap.add_argument("--train-seconds", type=float, default=300,
                    help="training time the probe sizes --steps to")
    ap.add_argument("--deadline-seconds", type=float, default=0,
                    help="whole-script limit: training stops early so that export and "
                         "evaluation finish before it (0: none)")
    ap.add_argument("--reserve-seconds", type=float, default=45,
                    help="time kept for export and evaluation under the deadline")
    ap.add_argument("--max-len", type=int, default=16384)
    ap.add_argument("--tokens-per-step", type=int, default=65536)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--lm-weight", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--ckpt-every", type=float, default=60)
    ap.add_argument("--stop-after", type=int, default=0,
                    help="stop (with a checkpoint) after this many steps of this invocation; "
                         "--resume continues (0: run to the end)")
    ap.add_argument("--repro-steps", type=int, default=30)
    ap.add_argument("--repro-tokens", type=int, default=16384)
    ap.add_argument("--eval-lengths", default="1024,4096,16384")
    ap.add_argument("--eval-docs", type=int, default=16)
    ap.add_argument("--eval-questions", type=int, default=8)
    ap.add_argument("--tiny", action="store_true", help="toy model for a CPU smoke test")
    ap.add_argument("--shape", default="",
                    help="model shape overrides, e.g. hidden_size=384,num_hidden_layers=6 "
                         "(fields of model.Config; the default is the 5-layer, 256-wide model)")
    ap.add_argument("--task-variant", choices=tasks.VARIANTS, default=tasks.MODEL_VARIANT,
                    help="entities and facts of the documents, trained and evaluated on "
                         "(tasks.VARIANTS; the tokenizer should be trained on the same)")
    ap.add_argument("--twohop-share", type=float, default=data.TWOHOP_SHARE,
                    help="training questions that are two-hop ones (where a document allows)")
    ap.add_argument("--answer-format", choices=tasks.ANSWER_FORMATS,
                    default=tasks.MODEL_ANSWER_FORMAT,
                    help="what answers say: the value, or the fact restated from its entity on "
                         "(tasks.ANSWER_FORMATS), trained and evaluated on")
    ap.add_argument("--fact-schedule", default="",
                    help="fixed curriculum: at most N facts per document from a share of the "
                         "steps on, e.g. 2@0,4@0.03,8@0.06,all@0.1 (default: no cap)")
    ap.add_argument("--curriculum", choices=("fixed", "gated"), default="fixed",
                    help="fixed: lengths by share of the steps (runs 1-4); gated: stages of "
                         "(length, facts) advanced by answer accuracy (curriculum.py; needs "
                         "--steps)")
    ap.add_argument("--gate", type=float, default=0.9,
                    help="gated: answer-token accuracy over the last 50 steps of a stage that "
                         "starts the next one")
    ap.add_argument("--gate-min-steps", type=int, default=100,
                    help="gated: steps a stage runs at least before its gate is checked")
    ap.add_argument("--curriculum-from", type=float, default=0.0,
                    help="fixed curriculum: begin at this share of its schedule (1.0: the last "
                         "phase's mix of lengths throughout; for runs that continue a model, "
                         "--init-from)")
    ap.add_argument("--length-ramp", type=float, default=0.0,
                    help="fixed curriculum: mix each new length in over this share of the steps "
                         "(0: switch at the phase's start, as runs 1-17)")
    ap.add_argument("--init-from", default="",
                    help="start from an exported model (a Hugging Face directory of this "
                         "script's export, e.g. models/longctx) instead of a random "
                         "initialisation; its shape must match; a fresh optimizer")
    ap.add_argument("--strict-determinism", action="store_true",
                    help="torch.use_deterministic_algorithms without warn_only (deterministic "
                         "attention backward; errors for ops without a deterministic version)")
    args = ap.parse_args()
    try:
        fact_schedule = parse_fact_schedule(args.fact_schedule)  # fails before any work
    except ValueError as e:
        ap.error(str(e))
    if not 0.0 <= args.curriculum_from <= 1.0:
        ap.error(f"--curriculum-from {args.curriculum_from}: want a share of the schedule in "
                 f"[0, 1]")
    if not args.length_ramp >= 0.0:
        ap.error(f"--length-ramp {args.length_ramp}: want a share of the steps >= 0")
    if (args.curriculum_from > 0 or args.length_ramp > 0) and args.curriculum == "gated":
        ap.error("--curriculum-from and --length-ramp apply to the fixed curriculum")
    if args.init_from and not os.path.isfile(os.path.join(args.init_from, "model.safetensors")):
        ap.error(f"--init-from {args.init_from}: no model.safetensors there (want a directory "
                 f"exported by this script, e.g. models/longctx)")
    if args.fact_schedule and args.curriculum == "gated":
        ap.error("--fact-schedule applies to the fixed curriculum; the gated one caps facts by "
                 "stage (curriculum.GATED_STAGES)")
    global STRICT_DETERMINISM
    STRICT_DETERMINISM = args.strict_determinism

    device = init_distributed() or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if WORLD > 1:
        if args.steps <= 0:
            ap.error("data-parallel training (torchrun) needs --steps: the probe sizes runs of "
                     "one process")
        if args.tokens_per_step // args.max_len < WORLD:
            ap.error(f"--tokens-per-step {args.tokens_per_step} gives "
                     f"{args.tokens_per_step // args.max_len} rows at --max-len {args.max_len}, "
                     f"fewer than the {WORLD} processes: raise it to at least "
                     f"{WORLD * args.max_len}")
    os.makedirs(args.out, exist_ok=True)
    ckpt_dir = args.ckpt_dir or os.path.join(args.out, "ckpt")
    os.makedirs(ckpt_dir, exist_ok=True)
    fh = open(os.path.join(args.out, "train_log.txt"), "a") if RANK == 0 else None
    cfg = Config(max_position_embeddings=args.max_len)
    if args.tiny:
        cfg = dataclasses.replace(cfg, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=2,
                                  num_key_value_heads=1, head_dim=32)
    for kv in filter(None, args.shape.split(",")):
        key, value = kv.split("=")
        cfg = dataclasses.replace(cfg, **{key: type(getattr(cfg, key))(value)})
    mismatch = init_shape_mismatch(cfg, args.init_from) if args.init_from else {}
    if mismatch:
        ap.error(f"--init-from {args.init_from}: its shape differs from this run's ((theirs, "
                 f"ours) by field): {mismatch}; give the --shape (or --tiny) it was trained with")
    spm_file = os.path.join(args.tokenizer, "tokenizer.model")
    # Workers fork before CUDA is initialised; they only run numpy and SentencePiece.
    pool = mp.get_context("fork").Pool(args.workers, initializer=data.init_worker,
                                       initargs=(spm_file,))
    log(f"torch {torch.__version__} device {device} "
        f"{torch.cuda.get_device_name() if device.type == 'cuda' else ''}", fh)
    log(f"config {json.dumps(dataclasses.asdict(cfg))}", fh)
    log(f"args {json.dumps(vars(args))}", fh)
    if WORLD > 1:
        log(f"data parallel: {WORLD} processes, each {args.workers} data workers; the same "
            f"command on {WORLD} GPUs reproduces the run", fh)
    lengths = [L for _, L in phases_for(args.max_len)]
    t_start = time.perf_counter()

    # 1. Reproducibility (of one process; skipped under data parallelism).
    if args.repro_steps > 0 and WORLD > 1:
        log("repro: skipped (data parallel; the check runs one process)", fh)
    elif args.repro_steps > 0:
        try:
            L = min(1024, args.max_len)
            a = short_run(cfg, args, pool, device, args.seed + 1000, args.repro_steps, L)
            b = short_run(cfg, args, pool, device, args.seed + 1000, args.repro_steps, L)
            same = a == b
            log(f"repro: {args.repro_steps} steps at L={L} twice: losses identical "
                f"{a[0] == b[0]}, weights {a[1]} vs {b[1]}: {'SAME' if same else 'DIFFERENT'}; "
                f"losses {a[0][0]:.4f} -> {a[0][-1]:.4f} ({time.perf_counter() - t_start:.1f}s)",
                fh)
        except Exception:  # noqa: BLE001 - the check must not cost the training run
            log("repro check FAILED with an exception:\n" + traceback.format_exc(), fh)
            if STRICT_DETERMINISM:
                # Most likely an op without a deterministic version: train anyway, warn-only.
                STRICT_DETERMINISM = False
                log("strict determinism dropped for the training run (warn_only)", fh)

    # 2. Steps.
    total = args.steps
    if total <= 0 and args.curriculum == "gated":
        # Its lengths depend on how training goes, so no probe can size it in advance.
        log("--curriculum gated needs --steps", fh)
        sys.exit(2)
    if total <= 0:
        step_s = probe_step_seconds(cfg, args, pool, device, lengths)
        for L in lengths:
            B = max(1, args.tokens_per_step // L)
            tps = B * L / step_s[L]
            log(f"probe L={L:6d} B={B:4d}: {step_s[L] * 1e3:8.1f} ms/step, "
                f"{tps / 1e3:8.1f}K tok/s, "
                f"{tps * flops_per_token(cfg, L) / 1e12:6.1f} TFLOP/s (model FLOPs)", fh)
        total = 10
        def expected(n: int) -> float:
            return expected_seconds(n, step_s, args.seed, args.max_len, args.curriculum_from,
                                    args.length_ramp)
        while expected(total + 10) < args.train_seconds:
            total += 10
        log(f"steps {total}: expected {expected(total):.0f}s "
            f"(rerun with --steps {total} to reproduce)", fh)

    # 3. Train.
    set_determinism(args.seed)
    model = Llama(cfg)
    model.init_weights(args.seed)
    if args.init_from:
        init_from_export(model, args.init_from)
        log(f"initialised from {args.init_from}: digest {weights_digest(model)}", fh)
    model.to(device)
    log(f"parameters {num_params(model)}", fh)
    opt = make_optimizer(model, args.lr, args.weight_decay)
    first = 0
    ckpt_path = os.path.join(ckpt_dir, "ckpt.pt")
    if args.resume and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location=device)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        first, total = ck["step"], ck["total"]
        log(f"resumed at step {first} of {total}", fh)
    task = (args.task_variant, args.twohop_share, args.answer_format)  # documents and answers
    shard = (RANK, WORLD) if WORLD > 1 else ()  # this process's rows of each step
    gated = None
    if args.curriculum == "gated":
        gated = GatedCurriculum(args.seed, args.max_len, gate=args.gate,
                                min_steps=args.gate_min_steps,
                                window=min(50, args.gate_min_steps))
        if first > 0:
            gated.load_state(ck["curriculum"])
        specs = LazySpecs(first, total, lambda s: gated.spec(s, args.tokens_per_step) + task + shard)
    else:
        specs = [(args.seed, s, L, max(1, args.tokens_per_step // L),
                  facts_at(s, total, fact_schedule)) + task + shard
                 for s in range(first, total)
                 for L in [length_at(s, total, args.seed, args.max_len, args.curriculum_from,
                                     args.length_ramp)]]
    t0 = last_ckpt = time.perf_counter()
    tokens = 0
    flops = 0.0
    stopped_early = False
    acc_la = acc_ll = acc_acc = 0.0
    n_acc = 0
    try:
        for b in Batches(pool, specs, 16):
            step = b[0]
            L = b[1].shape[1]
            la, ll, acc = train_step(model, opt, b, device, args.lm_weight,
                                     lr_at(step, total, args.lr, args.warmup), device.type == "cuda")
            now = time.perf_counter()
            over = args.deadline_seconds > 0 and \
                now - t_start > args.deadline_seconds - args.reserve_seconds
            # Means over the processes, and the deadline as the first process sees it (every
            # process must stop at the same step).
            m = all_reduce_sum(torch.stack([la, ll, acc, torch.tensor(
                float(over and RANK == 0), device=la.device)]).float()).tolist()
            la, ll, acc, over = m[0] / WORLD, m[1] / WORLD, m[2] / WORLD, m[3] > 0
            tokens += b[1].size * WORLD
            flops += b[1].size * WORLD * flops_per_token(cfg, L)
            acc_la, acc_ll, acc_acc, n_acc = acc_la + la, acc_ll + ll, acc_acc + acc, n_acc + 1
            if gated is not None:
                passed = gated.observe(step, acc)
                if passed:
                    log(passed, fh)
            if (step + 1) % 20 == 0 or step + 1 == total:
                el = time.perf_counter() - t0
                log(f"step {step + 1:5d}/{total} L={L:6d} loss_ans {acc_la / n_acc:.4f} "
                    f"loss_lm {acc_ll / n_acc:.3f} ans_acc {acc_acc / n_acc:.3f} "
                    f"lr {lr_at(step, total, args.lr, args.warmup):.2e} {el:6.1f}s "
                    f"{tokens / el / 1e3:7.1f}K tok/s {flops / el / 1e12:5.1f} TFLOP/s", fh)
                acc_la = acc_ll = acc_acc = 0.0
                n_acc = 0
            pause = args.stop_after > 0 and step + 1 - first >= args.stop_after
            if RANK == 0 and (now - last_ckpt > args.ckpt_every or step + 1 == total or pause
                              or over):
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                            "total": total, "cfg": dataclasses.asdict(cfg),
                            "curriculum": gated.state() if gated else None}, ckpt_path)
                last_ckpt = now
            if pause and step + 1 < total:
                log(f"paused after step {step + 1} of {total} (--stop-after): checkpoint "
                    f"{ckpt_path}", fh)
                stopped_early = True
                break
            if over and step + 1 < total:
                log(f"STOPPED EARLY at step {step + 1} of {total}: deadline "
                    f"{args.deadline_seconds:.0f}s minus {args.reserve_seconds:.0f}s "
                    f"(the model is not the --steps {total} one; --resume continues from the "
                    f"checkpoint {ckpt_path})", fh)
                stopped_early = True
                break
    except Exception:  # noqa: BLE001 - keep what was trained: export and evaluate it
        log("training FAILED with an exception:\n" + traceback.format_exc(), fh)
        stopped_early = True
    pool.terminate()
    log(f"trained {time.perf_counter() - t0:.1f}s, {tokens / 1e6:.1f}M tokens"
        f"{' (stopped early)' if stopped_early else ''}", fh)
    if WORLD > 1:
        # The processes applied the same averaged gradients: their weights must be the same.
        import torch.distributed as dist
        x = torch.stack([p.detach().double().sum() for p in model.parameters()])
        lo, hi = x.clone(), x.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        log(f"data parallel: weights of the {WORLD} processes "
            f"{'identical' if torch.equal(lo, hi) else 'DIFFER'}", fh)
        dist.destroy_process_group()
        if RANK != 0:
            return

    # 4. Export, 5. evaluate the exported (bf16-rounded) weights in fp32.
    hf_dir = os.path.join(args.out, "longctx")
    export(model, cfg, args.tokenizer, hf_dir)
    log(f"exported {hf_dir}: digest {weights_digest(model)}", fh)
    del model, opt
    ev = load_exported(hf_dir, device)
    enc = data.Encoder(spm_file)
    res = evaluate(ev, enc, [int(x) for x in args.eval_lengths.split(",")], args.eval_docs,
                   args.eval_questions, device, fh, args.task_variant, args.answer_format)
    with open(os.path.join(args.out, "eval.json"), "w") as f:
        json.dump(res, f, indent=2)
    log("| length | single+needle | two-hop | seconds |", fh)
    log("| --- | --- | --- | --- |", fh)
    for L, r in res.items():
        c, n = r["retrieval"]
        th = r["per_kind"].get("twohop", [0, 0])
        log(f"| {L} | {c}/{n} ({100 * c / max(1, n):.1f}%) | {th[0]}/{th[1]} | "
            f"{r['seconds']:.1f} |", fh)
    log(f"total {time.perf_counter() - t_start:.1f}s", fh)


if __name__ == "__main__":
    main()
