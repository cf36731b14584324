"""companions/04_gpt2.py: GPT-2's own BPE tokens and GPT-2's own weights in 04_minigpt's GPT.

    python companions/04_gpt2.py --init-from gpt2 --sample-only --prompt "Hello, I'm"   # real GPT-2 (internet once)
    python companions/04_gpt2.py --init-from DIR --data my.txt --max-iters 200  # fine-tune a local GPT2LMHeadModel
    python companions/04_gpt2.py --data my.txt                                    # train from scratch on GPT-2 BPE
Every flag of 04_minigpt.py works here too. The lesson trains on characters; this file swaps in GPT-2's 50,257 BPE
tokens (tiktoken, built offline from OpenAI's two files, which `python companions/assets.py gpt2` prepares) and can
start from a Hugging Face GPT-2 (a hub name or a local folder). The proofs: our logits against GPT2LMHeadModel's on
the same weights (fp32), and our export reloaded by stock transformers with GPT-2's tokenizer files.

Our model is GPT-2's architecture with GPT-2's parameter names, so importing is a copy: the same names, four
matrices transposed (GPT-2 stores them as Conv1D, (in, out)). Only the position table may be cut: training on
64-token windows keeps GPT-2's first 64 position vectors (--block-size; the default keeps all 1024).
"""
import importlib.util
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if "lesson_04_minigpt" in sys.modules:  # already loaded by another companion
    L = sys.modules["lesson_04_minigpt"]
else:
    spec = importlib.util.spec_from_file_location("lesson_04_minigpt", ROOT / "04_minigpt.py")
    L = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = L  # dataclasses look their module up by name
    spec.loader.exec_module(L)

# GPT-2's pre-tokenisation (published with GPT-2): words, numbers, punctuation runs and spaces; BPE inside each
GPT2_SPLIT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def gpt2_encoding():
    """tiktoken's GPT-2 encoding, built from OpenAI's two files (the offline copy), else tiktoken's download."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    encoder, merges = L.offline_asset("gpt2/encoder.json"), L.offline_asset("gpt2/vocab.bpe")
    if encoder and merges:
        ranks = data_gym_to_mergeable_bpe_ranks(str(merges), str(encoder))
        return tiktoken.Encoding("gpt2", pat_str=GPT2_SPLIT, mergeable_ranks=ranks,
                                 special_tokens={L.EOS_TOKEN: 50256})
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception:
        raise L.UserError("GPT-2's BPE files are missing and there is no internet: run python companions/assets.py gpt2")


class GPT2Tokens:
    """The lesson's tokenizer interface (encode, decode, eos_id, vocab_size, to_hf) over GPT-2's BPE."""
    kind, chars = "gpt2", ""

    def __init__(self):
        self.encoding = gpt2_encoding()
        self.eos_id, self.vocab_size = self.encoding.eot_token, self.encoding.n_vocab  # 50256, 50257

    def encode(self, text, allowed_special=()):
        """Ordinary text unless allowed_special names a special token (tiktoken's own rule)."""
        return self.encoding.encode(text, allowed_special=set(allowed_special), disallowed_special=())

    def decode(self, ids):
        return self.encoding.decode(list(ids))

    def to_hf(self, **settings):
        """transformers' GPT2Tokenizer from OpenAI's files (ASSETS/gpt2 has them as vocab.json and merges.txt, the
        names transformers reads), else the hub's; settings such as model_max_length go to it."""
        from transformers import GPT2Tokenizer
        vocab = L.offline_asset("gpt2/vocab.json")
        return GPT2Tokenizer.from_pretrained(str(vocab.parent) if vocab else "gpt2", **settings)


def load_hf_gpt2(name_or_dir, cfg, given, log):
    """Our GPT with a Hugging Face GPT-2's weights (a hub name or a folder). Returns (model, hf_model, cfg)."""
    from transformers import GPT2LMHeadModel
    from transformers.utils.logging import disable_progress_bar, set_verbosity_error
    set_verbosity_error(), disable_progress_bar()
    try:
        hf_model = GPT2LMHeadModel.from_pretrained(name_or_dir, dtype=torch.float32)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise L.UserError(f"cannot load GPT-2 weights from {name_or_dir!r} ({first}); offline, pass a local "
                          "GPT2LMHeadModel folder (config.json + model.safetensors)")
    hc = hf_model.config
    if hc.n_inner not in (None, 4 * hc.n_embd) or hc.vocab_size != 50257:
        raise L.UserError(f"{name_or_dir} is not a standard GPT-2 (n_inner {hc.n_inner}, vocabulary {hc.vocab_size})")
    block_size = given.get("block_size", hc.n_positions)
    if block_size > hc.n_positions:
        raise L.UserError(f"--block-size {block_size} is larger than the model's {hc.n_positions} positions")
    # GPT-2's switches: learned positions, LayerNorm, GELU, multi-head attention (all K/V heads), biases
    cfg = replace(cfg, n_layer=hc.n_layer, n_head=hc.n_head, n_embd=hc.n_embd, block_size=block_size, arch="gpt2",
                  n_kv_head=0, mlp_hidden=0, **L.GPT2)
    model, theirs = L.GPT(cfg, hc.vocab_size), hf_model.state_dict()
    with torch.no_grad():
        for name, w in model.state_dict().items():
            source = theirs[name].t() if name.endswith(L.TRANSPOSED) else theirs[name]
            w.copy_(source[:block_size] if name == "transformer.wpe.weight" else source)
    log(f"init: copied GPT-2 weights from {name_or_dir} ({model.num_params():,} parameters, {block_size} positions)")
    return model, hf_model, cfg


def run(given, error):
    init_from = given.pop("init_from", "")
    cfg = L.make_config(given, torch.device("cpu"))
    L.check_config(cfg, error)
    device, out, log = L.pick_device(cfg.device), Path(cfg.out), print
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, ckpt = GPT2Tokens(), None
    torch.manual_seed(cfg.seed)
    if init_from:
        model, hf_model, cfg = load_hf_gpt2(init_from, L.make_config(given, device), given, log)
        x = torch.randint(hf_model.config.vocab_size, (1, min(64, cfg.block_size)),
                          generator=torch.Generator().manual_seed(0))
        log(f"check: our logits vs Hugging Face GPT2LMHeadModel on the same weights: max |diff| "
            f"{L.logit_parity(model, hf_model, x):.2e} (fp32)")
    elif cfg.resume or cfg.sample_only:
        path = Path(cfg.checkpoint or (out / "ckpt.pt" if cfg.resume in ("", "auto") else cfg.resume))
        if not cfg.resume and not cfg.checkpoint and (out / "best.pt").exists():
            path = out / "best.pt"
        ckpt = L.load_checkpoint(path)
        cfg = L.make_config(given, device, ckpt["config"])
        model = L.GPT(cfg, ckpt["vocab_size"])
        model.load_state_dict(ckpt["model"])
        log(f"loaded {path}: step {ckpt['step']}, best val {ckpt['best_val']:.4f}")
    else:
        cfg = L.make_config(given, device)
        model = L.GPT(cfg, tokenizer.vocab_size)
    if not cfg.sample_only:
        train_ids, val_ids = L.prepare_data(L.load_text(cfg), tokenizer, cfg.block_size)
        log(f"data: {len(train_ids) + len(val_ids):,} GPT-2 tokens; model: {model.num_params():,} parameters")
        try:
            state = L.train(cfg, model, tokenizer, train_ids, val_ids, device, out, log,
                            ckpt if cfg.resume else None)
        except KeyboardInterrupt:
            return 130
        if (out / "best.pt").exists():
            model.load_state_dict(L.load_checkpoint(out / "best.pt")["model"])
        log(f"best validation loss {state['best_val']:.4f}")
    L.sample_and_report(model.to(device), tokenizer, cfg, out, log)
    if cfg.export or not (cfg.no_export or cfg.sample_only):
        folder = Path(cfg.export or out / "hf")
        cpu_model = L.GPT(cfg, model.vocab_size)
        cpu_model.load_state_dict(model.state_dict())
        if L.export_hf(cpu_model, tokenizer, folder, log):
            L.check_export(folder, cpu_model, tokenizer, cfg.prompt, 40, log)
    log(f"done in {L.format_time(time.time() - L.PROCESS_START)}")
    return 0


def build_parser():
    parser = L.build_parser()
    parser.add_argument("--init-from", metavar="NAME_OR_DIR",
                        help="start from Hugging Face GPT-2 weights: gpt2 (the hub), or a local folder")
    parser.add_argument("--tokenizer", choices=["gpt2"], help="accepted for old commands: this file always uses gpt2")
    return parser


def main(argv=None):
    parser = build_parser()
    given = vars(parser.parse_known_args(argv)[0])
    given.pop("tokenizer", None)
    try:
        code = run(given, parser.error)
    except L.UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
