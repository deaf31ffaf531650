"""The easy-VQA demo models, untrained, by name: what ``cli.py finetune --init NAME`` starts from.

Each demo's architecture, vocabulary and initial model live in its trainer (demo/train_*.py); the
fine-tuning loop (training/finetune.py) knows none of them.
"""
from __future__ import annotations

from demo.train_kdvlp import init_demo_kdvlp
from demo.train_llava import init_demo_llava
from demo.train_lxmert import init_demo_lxmert
from demo.train_vilt import init_demo_vilt

INITS = {"demo-vilt": init_demo_vilt, "demo-lxmert": init_demo_lxmert, "demo-kdvlp": init_demo_kdvlp,
         "demo-llava": init_demo_llava}
