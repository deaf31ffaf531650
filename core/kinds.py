"""Attention kinds: which stream a kind's queries and keys come from, and where its layers sit.

Defined once here; adapters produce these kinds, head statistics, attribution and the views read
what they need from this table instead of spelling kind names out.

A single-stream model (ViLT, KD-VLP style, generative decoders) has one kind, ``self``, over the
joint sequence. A dual-stream model (LXMERT) has six: its language and vision encoders (stage 0,
side by side), then the cross-modality encoder (stage 1), whose layers each hold a cross step
(``cross_l2v`` / ``cross_v2l``) followed by a self step per stream.
"""
from __future__ import annotations

from dataclasses import dataclass

JOINT, LANG, VISION = "joint", "lang", "vision"

# The token modalities each stream can hold (the Record's ``modality`` values). A dual-stream
# language stream is words plus [CLS] / [SEP]; its vision stream is image regions only. Head
# statistics read this to tell which of them a kind cannot vary (analysis/head_stats.py).
STREAM_MODALITIES: dict[str, frozenset[str]] = {
    JOINT: frozenset({"text", "image", "special"}),
    LANG: frozenset({"text", "special"}),
    VISION: frozenset({"image"}),
}


@dataclass(frozen=True)
class AttentionKind:
    name: str
    query_stream: str  # JOINT, LANG or VISION
    key_stream: str
    stage: int  # 0: the joint encoder or a single-modality encoder; 1: the cross-modality encoder
    title: str

    @property
    def is_cross(self) -> bool:
        """Queries from one modality's stream, keys from the other's."""
        return self.query_stream != self.key_stream


KINDS: dict[str, AttentionKind] = {k.name: k for k in (
    AttentionKind("self", JOINT, JOINT, 0, "self-attention over the joint sequence"),
    AttentionKind("lang_self", LANG, LANG, 0, "language encoder self-attention"),
    AttentionKind("vision_self", VISION, VISION, 0, "vision encoder self-attention"),
    AttentionKind("cross_l2v", LANG, VISION, 1, "cross-attention, words attending to regions"),
    AttentionKind("cross_v2l", VISION, LANG, 1, "cross-attention, regions attending to words"),
    AttentionKind("cross_lang_self", LANG, LANG, 1, "cross-encoder language self-attention"),
    AttentionKind("cross_vision_self", VISION, VISION, 1, "cross-encoder vision self-attention"),
)}
SINGLE_STREAM_KINDS = ("self",)
DUAL_STREAM_KINDS = ("lang_self", "vision_self", "cross_l2v", "cross_v2l", "cross_lang_self", "cross_vision_self")


def kind_of(name: str) -> AttentionKind:
    """The kind called ``name``; an unknown name (e.g. from another tool's database) is a joint one."""
    return KINDS.get(name) or AttentionKind(name, JOINT, JOINT, 0, name)


def streams(name: str) -> tuple[str, str]:
    """(query stream, key stream) of a kind."""
    k = kind_of(name)
    return k.query_stream, k.key_stream
