"""`cli.py finetune`: fine-tune a registered model (or a fresh demo model) on any data set spec.

    python cli.py finetune --model vilt-easyvqa --dataset folder:my_data --out models/my-vilt --epochs 3
    python cli.py finetune --init demo-vilt --dataset easyvqa --split train --eval-split test --full \\
        --epochs 10 --batch-size 64 --lr 1e-3 --out demo/models/vilt-easyvqa
    python cli.py finetune --init demo-lxmert --dataset easyvqa --split train --eval-split test --eval-limit 0 \
        --full --epochs 2 --images-per-batch 8 --lr 2e-3 --loss softmax --clip-grad-norm 5 \
        --out demo/models/lxmert-easyvqa
"""
from __future__ import annotations

from pathlib import Path

from commands.devices import add_device_argument


# demo/inits.py's names (a test keeps them equal; importing it here would load every trainer for --help)
INIT_NAMES = ["demo-vilt", "demo-lxmert", "demo-kdvlp", "demo-llava"]


def add_arguments(p):
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model name (see `models`) or ADAPTER:HUB_ID_OR_DIR to start from")
    src.add_argument("--init", choices=INIT_NAMES,
                     help="start from a fresh, untrained easy-VQA demo model instead")
    p.add_argument("--dataset", required=True, help="data set spec (easyvqa, vqa:..., folder:..., hf:..., mc:...)")
    p.add_argument("--split", default="train", help="training split, for data sets that have them (default: train)")
    p.add_argument("--eval-dataset", default=None, help="evaluation data set spec (default: --dataset)")
    p.add_argument("--eval-split", default=None,
                   help="evaluation split; without it (and without --eval-dataset) 5%% of the training examples "
                        "are held out")
    p.add_argument("--out", required=True, help="output directory: a checkpoint the adapters load")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-3, or 1e-4 with --full)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--full", action="store_true", help="train every weight, not only the answer classifier")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training (and eval) examples")
    p.add_argument("--eval-every", type=int, default=None, help="also evaluate every K steps")
    p.add_argument("--eval-limit", type=int, default=1000, help="evaluate on at most N examples (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--new-answers", choices=["extend", "ignore"], default="extend",
                   help="answers the model lacks: add classifier rows (extend) or leave them out (ignore)")
    p.add_argument("--schedule", choices=["onecycle", "constant"], default="onecycle")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N steps (smoke runs)")
    p.add_argument("--augment", choices=["none", "dihedral"], default="none",
                   help="dihedral: flip / rotate each training image by a random symmetry of the square (only for "
                        "questions that do not depend on orientation, such as easy-VQA's)")
    p.add_argument("--loss", choices=["bce", "softmax"], default="bce",
                   help="bce: binary cross-entropy on the soft scores (VQA's loss, default); softmax: cross-entropy "
                        "against the normalized soft scores (the LXMERT / KD-VLP demos)")
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of the steps spent warming up (onecycle)")
    p.add_argument("--clip-grad-norm", type=float, default=None, help="clip the gradient norm (default: no clipping)")
    p.add_argument("--freeze", action="append", default=[], metavar="PREFIX",
                   help="keep the parameters named under PREFIX fixed (repeatable; with --full), e.g. "
                        "model.vision_tower. for a LLaVA's vision encoder")
    p.add_argument("--images-per-batch", type=int, default=None,
                   help="a batch holds every question of N random images (instead of --batch-size questions)")
    p.add_argument("--hidden", type=int, default=None,
                   help="--init: width (demo-vilt 128, demo-lxmert / demo-kdvlp 64)")
    p.add_argument("--layers", type=int, default=None,
                   help="--init: layers (demo-vilt 4, demo-lxmert 2 per stream and cross, demo-kdvlp 3)")
    p.add_argument("--heads", type=int, default=None, help="--init: heads (4)")
    add_device_argument(p)


def run(args) -> int:
    from sources import open_source
    from demo.inits import INITS
    from training.finetune import FinetuneConfig, finetune

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileNotFoundError(f"--out: {out} exists and is not a directory")
    if not out.resolve().parent.exists():
        raise FileNotFoundError(f"--out: directory {out.resolve().parent} does not exist")
    eval_limit = None if args.eval_limit == 0 else args.eval_limit
    if args.limit is not None and eval_limit is not None:
        eval_limit = min(eval_limit, args.limit)
    elif args.limit is not None:
        eval_limit = args.limit
    config = FinetuneConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, full=args.full,
                            limit=args.limit, eval_every=args.eval_every, eval_limit=eval_limit, seed=args.seed,
                            new_answers=args.new_answers, schedule=args.schedule, max_steps=args.max_steps,
                            loss=args.loss, warmup=args.warmup, clip_grad_norm=args.clip_grad_norm,
                            images_per_batch=args.images_per_batch, augment=args.augment,
                            frozen=tuple(args.freeze))
    train = open_source(args.dataset, split=args.split)
    evals = None
    if args.eval_dataset or args.eval_split:
        evals = open_source(args.eval_dataset or args.dataset, split=args.eval_split or args.split)
    if args.init:
        from itertools import islice

        examples = list(islice(iter(train), args.limit)) if args.limit else list(train)
        answers = train.answers() or sorted({a for ex in examples for a in ex.answers})
        sizes = {k: v for k, v in (("hidden", args.hidden), ("layers", args.layers), ("heads", args.heads))
                 if v is not None}
        adapter = INITS[args.init](examples, answers, seed=args.seed, device=args.device, **sizes)
        train_examples = examples
    else:
        from adapters.registry import load_model

        adapter = load_model(args.model, device=args.device)
        train_examples = train
    try:
        adapter.encode_batch  # noqa: B018 - the attribute exists on every adapter; the call may not
        res = finetune(adapter, train_examples, out=out, config=config, eval_examples=evals)
    except NotImplementedError as e:
        raise ValueError(str(e)) from None
    last = res.history[-1] if res.history else None
    print(f"{res.steps} steps on {res.train_examples} examples in {res.wall_seconds:.0f} s; loss "
          f"{res.losses[0]:.3f} -> {res.losses[-1]:.3f}"
          + (f"; accuracy {last['accuracy']:.4f}, VQA score {last['vqa_score']:.4f} on {last['examples']} examples"
             if last else "") + f" -> {out}")
    if res.answers_added:
        print(f"  added {len(res.answers_added)} answers to the classifier: {', '.join(res.answers_added[:10])}"
              + (" ..." if len(res.answers_added) > 10 else ""))
    if res.skipped_examples:
        print(f"  left out {res.skipped_examples} examples with no usable answer")
    for key, why in res.failed[:10]:
        print(f"  failed {key}: {why}")
    return 0
