"""The one ``--device`` option of the commands that run a model (record, attribute, finetune, faithfulness)."""
from __future__ import annotations


def add_device_argument(p) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (default: a GPU when one is visible, else the CPU), cpu, cuda, cuda:N or mps")
