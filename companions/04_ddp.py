"""companions/04_ddp.py: train 04_minigpt's GPT data-parallel over several GPUs (or CPU processes) with torchrun.

    torchrun --standalone --nproc_per_node=8 companions/04_ddp.py               # 8 GPUs of one machine
    torchrun --standalone --nproc_per_node=2 companions/04_ddp.py --device cpu  # no GPU: 2 CPU processes (gloo)
    torchrun --standalone --nproc_per_node=8 companions/04_ddp.py --tokenizer gpt2 \\
        --n-layer 12 --n-head 12 --n-embd 768 --block-size 512 --batch-size 32          # GPT-2 small on GPT-2 BPE
Every flag of 04_minigpt.py works here; --batch-size is per process, so the global batch is batch x grad-accum x
processes. On two machines replace --standalone with --nnodes=2 --node_rank=0|1 --master_addr=HOST
--master_port=29500.

Data parallelism in one paragraph: N processes each hold a full copy of the model, start from the same weights
(DDP broadcasts rank 0's), read different parts of each step's global batch, and after each backward pass average
their gradients with an all-reduce (NCCL between GPUs, gloo on CPU), so every copy takes the same optimizer step and
the copies stay identical. The model, the data, the optimizer and the evaluation are the lesson's own functions;
this file adds what several processes need: the process group, no_sync for accumulation, the mean of the ranks'
losses for the log, one clock for the schedule, saving on rank 0 only, and a check that the replicas agree.
"""
import contextlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

ROOT = Path(__file__).resolve().parent.parent


def load_companion(name):
    """04_minigpt.py or another companion as a module (names start with a digit, so no plain import)."""
    path = ROOT / "04_minigpt.py" if name == "04_minigpt" else ROOT / "companions" / f"{name}.py"
    spec = importlib.util.spec_from_file_location("lesson_04_minigpt" if name == "04_minigpt" else name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


L = load_companion("04_minigpt")


def setup_distributed(cfg):
    """torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; join the process group. Returns (rank, world, device)."""
    if "RANK" not in os.environ:
        raise L.UserError("start this file with torchrun: torchrun --standalone --nproc_per_node=N "
                          "companions/04_ddp.py [flags]")
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available() and cfg.device != "cpu":
        torch.cuda.set_device(local_rank)  # one GPU per process, before anything touches CUDA
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        device = torch.device("cuda", local_rank)
    else:
        dist.init_process_group("gloo")
        device = torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def flush_losses(pending, history, world, device):
    """The logged steps' losses, averaged over ranks: each rank knows only its share of the global batch, and the
    mean over ranks is the loss of the whole batch, the number one process with that batch would log. A collective
    call: every rank makes it at the same steps."""
    if not pending:
        return
    losses = torch.stack([torch.as_tensor(loss, dtype=torch.float32) for _, loss in pending]).to(device)
    dist.all_reduce(losses, op=dist.ReduceOp.SUM)  # SUM: gloo has no AVG
    history["steps"] += [step for step, _ in pending]
    history["losses"] += (losses / world).tolist()
    pending.clear()


def check_replicas(model, world, log):
    """Every process must hold the same weights: compare two checksums per rank (sum and sum of squares)."""
    vec = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    sums = torch.stack([vec.sum(), (vec * vec).sum()])
    gathered = [torch.zeros_like(sums) for _ in range(world)]
    dist.all_gather(gathered, sums)
    spread = max((g - gathered[0]).abs().max().item() for g in gathered)
    log(f"check: DDP parameters on {world} processes {'identical' if spread == 0 else f'DIFFER by {spread:.2e}'}"
        " after training")
    return spread == 0


def train_ddp(cfg, model, tokenizer, train_ids, val_ids, device, out, log, rank, world, resume=None):
    """The lesson's loop, data-parallel. Rank 0 evaluates, logs and saves; every rank trains."""
    master = rank == 0
    autocast = L.autocast_for(cfg, device)
    model.to(device)
    optimizer = L.configure_optimizer(model, cfg)
    train_ids, val_ids = train_ids.to(device), val_ids.to(device)
    batches = L.eval_batches(cfg, train_ids, val_ids)
    state = {"step": 0, "best_val": float("inf"), "elapsed": 0.0, "history": {"steps": [], "losses": [], "evals": []}}
    if resume:  # every rank restores the same optimizer state and random states
        optimizer.load_state_dict(resume["optimizer"])
        state.update({k: resume[k] for k in state})
        L.restore_rng_states(resume["rng"])
        log(f"resume: continuing at step {state['step']} (best val {state['best_val']:.4f})")
    elif master:
        (out / "best.pt").unlink(missing_ok=True)
    fast_model = torch.compile(model) if cfg.compile else model
    # DDP hooks every parameter's gradient: during backward, finished gradients are all-reduced in buckets while
    # the rest of backward still runs (communication overlaps computation). Only forward/backward go through it;
    # the optimizer, clipping, evaluation and checkpoints use the plain model (no "module." prefix in names).
    ddp_model = DDP(fast_model, device_ids=[device.index] if device.type == "cuda" else None)

    def save(name, full=True):
        L.save_checkpoint(out / name, L.make_checkpoint(cfg, model, tokenizer, state, optimizer if full else None))

    budget, tokens_per_step = cfg.max_minutes * 60, cfg.batch_size * cfg.block_size * cfg.grad_accum * world
    log(f"train: {tokens_per_step:,} tokens/step ({cfg.batch_size} x {cfg.block_size} x {cfg.grad_accum} accum x "
        f"{world} processes), " + (f"{cfg.max_minutes:g} min" if budget else f"{cfg.max_iters} steps"))
    history, step, pending = state["history"], state["step"], []
    t0, before, last_save, t_window, window = time.time(), state["elapsed"], time.time(), time.time(), 0
    model.train()
    try:
        while True:
            elapsed = before + time.time() - t0
            progress = elapsed / budget if budget else step / max(1, cfg.max_iters)
            # one clock for all: rank 0's progress, or ranks would disagree on the learning rate and on `done`
            # (and a rank that left the loop early would leave the others waiting forever in an all-reduce)
            shared = torch.tensor([progress], dtype=torch.float64, device=device)
            dist.broadcast(shared, src=0)
            progress, state["elapsed"] = shared.item(), elapsed
            done = step >= cfg.max_iters or (budget and progress >= 1.0)
            evaluated = bool(history["evals"]) and history["evals"][-1][0] == step
            if master and (step % cfg.eval_interval == 0 or done) and not evaluated and not (done and step == 0):
                with optimizer.averaged():  # --ema: the moving average is measured and kept, as in the lesson
                    losses = L.evaluate(model, batches, autocast)
                    if losses["val"] < state["best_val"]:
                        state["best_val"] = losses["val"]
                        if step:
                            save("best.pt", full=False)
                since = time.time() - L.PROCESS_START
                history["evals"].append([step, losses["train"], losses["val"], since])
                log(f"eval step {step:6d}: train {losses['train']:.4f}  val {losses['val']:.4f}  "
                    f"({since:.1f} s since start)")
                if step and time.time() - last_save > 60:
                    save("ckpt.pt")
                    last_save = time.time()
                t_window, window = time.time(), 0
            if done:
                break
            lr = L.learning_rate(step, progress, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = 0.0
            for micro in range(cfg.grad_accum):
                # this micro-batch's place in the step's global batch: the same windows as one process drawing
                # grad_accum * world micro-batches (the lesson's batch_generator)
                stream = rank * cfg.grad_accum + micro
                x, y = L.get_batch(train_ids, cfg.batch_size, cfg.block_size, L.batch_generator(cfg.seed, step, stream))
                # all-reduce only on the last micro-step: inside no_sync() gradients just accumulate locally, and
                # the last backward all-reduces the sum once (1/k of the traffic, the same result)
                last = micro == cfg.grad_accum - 1
                with contextlib.nullcontext() if last else ddp_model.no_sync():
                    with autocast:
                        loss = ddp_model(x, y)[1] / cfg.grad_accum
                    loss.backward()
                step_loss += loss.detach()
            if cfg.grad_clip > 0:  # every rank holds the same averaged gradient here, so all clip alike
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step = state["step"] = step + 1
            window += 1
            pending.append((step, step_loss))
            if step % cfg.log_interval == 0 or step == cfg.max_iters:
                flush_losses(pending, history, world, device)
                dt = (time.time() - t_window) / window
                total = f"~{int(step / progress)}" if budget and progress > 0 else str(cfg.max_iters)
                eta = budget - elapsed if budget else dt * (cfg.max_iters - step)
                log(f"step {step:6d}/{total}  loss {history['losses'][-1]:.4f}  lr {lr:.2e}  {dt * 1000:.1f} ms/step"
                    f"  {tokens_per_step / dt:,.0f} tok/s  elapsed {L.format_time(elapsed)}  "
                    f"ETA {L.format_time(eta)}")
                t_window, window = time.time(), 0
            if step == cfg.interrupt_at:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        # under torchrun each rank gets Ctrl-C at a slightly different point, so it interrupts at once; rank 0 saves
        # what it has (no collective call here: the other ranks may be elsewhere)
        L.flush_losses(pending, history)
        if master:
            save("ckpt.pt")
            (out / "history.json").write_text(json.dumps(history))
            log(f"interrupted: saved {out / 'ckpt.pt'} at step {step}; continue with --resume")
        raise
    flush_losses(pending, history, world, device)
    if master:
        save("ckpt.pt")
        (out / "history.json").write_text(json.dumps(history))
    check_replicas(model, world, log)
    return state


def run(given, error):
    init_from, tokenizer_kind, tokenizer = given.pop("init_from", ""), given.pop("tokenizer", "char"), None
    cfg = L.make_config(given, torch.device("cpu"))  # (checked below, once the device's defaults apply)
    rank, world, device = setup_distributed(cfg)
    log = print if rank == 0 else (lambda *a, **k: None)  # only rank 0 talks
    torch.set_num_threads(cfg.threads or 1)  # CPU processes share the cores: one thread each unless told
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = None
    if cfg.resume:
        path = out / "ckpt.pt" if cfg.resume == "auto" else Path(cfg.resume)
        ckpt = L.load_checkpoint(path)
        if "optimizer" not in ckpt:
            raise L.UserError(f"{path} holds weights only (a best.pt); resume from {path.with_name('ckpt.pt')}")
    cfg = L.make_config(given, device, ckpt and ckpt["config"])
    L.check_config(cfg, error)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "gloo"
    log(f"04_ddp: torch {torch.__version__}, device {device} ({name}), DDP over {world} processes")
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    text = L.load_text(cfg)
    if init_from or tokenizer_kind == "gpt2" or ckpt and not ckpt["chars"]:  # GPT-2's BPE: 04_gpt2.py
        gpt2 = load_companion("04_gpt2")
        tokenizer = gpt2.GPT2Tokens()
    if ckpt:
        model = L.GPT(cfg, ckpt["vocab_size"])
        model.load_state_dict(ckpt["model"])
        tokenizer = L.Tokenizer(ckpt["chars"]) if ckpt["chars"] else tokenizer
    elif init_from:
        model, _, cfg = gpt2.load_hf_gpt2(init_from, cfg, given, log)
    else:
        tokenizer = tokenizer if tokenizer_kind == "gpt2" else L.Tokenizer(sorted(set(text)))
        model = L.GPT(cfg, tokenizer.vocab_size)
    train_ids, val_ids = L.prepare_data(text, tokenizer, cfg.block_size)
    log(f"model: {model.num_params():,} parameters; data: train {len(train_ids):,} / val {len(val_ids):,} tokens")
    try:
        state = train_ddp(cfg, model, tokenizer, train_ids, val_ids, device, out, log, rank, world, ckpt)
    except KeyboardInterrupt:
        return 130
    if rank == 0:  # sample from the best weights and export, as the lesson does
        if (out / "best.pt").exists():
            model.load_state_dict(L.load_checkpoint(out / "best.pt")["model"])
        L.sample_and_report(model, tokenizer, cfg, out, log)
        if not cfg.no_export:
            cpu_model = L.GPT(cfg, model.vocab_size)
            cpu_model.load_state_dict(model.state_dict())
            L.export_hf(cpu_model, tokenizer, Path(cfg.export or out / "hf"), log)
            L.check_export(Path(cfg.export or out / "hf"), cpu_model, tokenizer, cfg.prompt, 40, log)
        log(f"done (best val loss {state['best_val']:.4f})")
    return 0


def main(argv=None):
    parser = L.build_parser()
    parser.add_argument("--tokenizer", choices=["char", "gpt2"], help="gpt2: GPT-2's BPE (companions/04_gpt2.py)")
    parser.add_argument("--init-from", metavar="NAME_OR_DIR", help="start from GPT-2's weights (04_gpt2.py)")
    given, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        code = run(vars(given), parser.error)
    except L.UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    if dist.is_initialized():
        dist.destroy_process_group()  # leave cleanly: torchrun waits for every rank
    sys.exit(code)


if __name__ == "__main__":
    main()
