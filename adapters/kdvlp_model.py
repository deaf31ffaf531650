"""A KD-VLP-style model in plain torch, and its checkpoint format (config.json + safetensors).

KD-VLP (Liu et al. 2021) is a single-stream BERT over text tokens and CNN grid features: every
cell of the CNN's output grid becomes one visual token. Its authors published no code or weights,
so this module defines the architecture family and a checkpoint format of its own:

    <dir>/config.json          the KdvlpConfig below, as JSON ("model_type": "kdvlp")
    <dir>/model.safetensors    the state dict (names as in KdvlpModel), loaded with safetensors
    <dir>/tokenizer.json ...   a BERT (WordPiece) fast tokenizer, as BertTokenizerFast.save_pretrained writes it

Sequence layout (N = T + 1 + G*G):

    [CLS] w_1 ... w_k [SEP] (text, T positions, padded in batches)  [IMG]  cell(0,0) ... cell(G-1,G-1)

- text tokens: word + text position + type-0 embeddings;
- [IMG]: one learned vector + type-1 embedding (a separator that marks where the image starts);
- cell (r, c): CNN feature of that grid cell, projected to the hidden width, + grid position (r*G + c)
  + type-1 embeddings. Cells are in row-major order, so image token k is cell (k // G, k % G);
- one LayerNorm over the joint embeddings, then post-LN BERT layers with *eager* softmax attention
  (rows sum to 1 over the unmasked keys), then a pooler on [CLS] and an answer classifier.

Images are resized (stretched, by adapters/pixels.py) to image_size x image_size, so grid cell (r, c) covers exactly
x in [c/G, (c+1)/G), y in [r/G, (r+1)/G) of the source image. (Its CNN receptive field is wider.)
Answer probabilities are the softmax of the logits (trained with cross-entropy).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

MODEL_TYPE = "kdvlp"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A KD-VLP checkpoint directory is missing a file or holds something inconsistent."""


@dataclass(frozen=True, kw_only=True)
class KdvlpConfig:
    vocab_size: int
    answers: tuple[str, ...]
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_text_tokens: int = 40
    image_size: int = 64  # input images are resized to image_size x image_size
    cnn_channels: tuple[int, ...] = (32, 64, 128)  # one stride-2 3x3 conv + BatchNorm + ReLU per stage
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    model_type: str = MODEL_TYPE
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)  # free-form provenance (training command, accuracy)

    def __post_init__(self):
        object.__setattr__(self, "answers", tuple(str(a) for a in self.answers))
        object.__setattr__(self, "cnn_channels", tuple(int(c) for c in self.cnn_channels))
        object.__setattr__(self, "image_mean", tuple(float(v) for v in self.image_mean))
        object.__setattr__(self, "image_std", tuple(float(v) for v in self.image_std))
        if self.model_type != MODEL_TYPE:
            raise CheckpointError(f"config.json model_type is {self.model_type!r}, expected {MODEL_TYPE!r}")
        if self.format_version > FORMAT_VERSION:
            raise CheckpointError(f"checkpoint format {self.format_version} is newer than this code "
                                  f"({FORMAT_VERSION}); update VL-Lens")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_text_tokens", "image_size"):
            if int(getattr(self, name)) < 1:
                raise CheckpointError(f"config.json {name} must be a positive integer")
        if self.hidden_size % self.num_heads:
            raise CheckpointError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if not self.answers:
            raise CheckpointError("config.json answers must list at least one answer")
        if not self.cnn_channels:
            raise CheckpointError("config.json cnn_channels must list at least one stage")
        if self.image_size % self.downsample:
            raise CheckpointError(f"image_size {self.image_size} is not divisible by the CNN stride {self.downsample}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise CheckpointError("image_mean / image_std must be 3 values (std > 0)")

    @property
    def downsample(self) -> int:
        return 2 ** len(self.cnn_channels)

    @property
    def grid(self) -> int:
        """Side of the CNN output grid: image tokens = grid * grid."""
        return self.image_size // self.downsample

    def to_json(self) -> dict:
        d = asdict(self)
        d["grid"] = self.grid  # informative; derived, checked on load
        return d

    @classmethod
    def from_json(cls, d: dict) -> "KdvlpConfig":
        d = dict(d)
        grid = d.pop("grid", None)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise CheckpointError(f"config.json has unknown fields {unknown}")
        try:
            cfg = cls(**d)
        except TypeError as e:
            raise CheckpointError(f"config.json: {e}") from e
        if grid is not None and int(grid) != cfg.grid:
            raise CheckpointError(f"config.json grid {grid} does not match image_size / 2**len(cnn_channels) "
                                  f"= {cfg.grid}")
        return cfg


# ---- modules ----------------------------------------------------------------------------------------
class GridCNN(nn.Module):
    """(B, 3, S, S) -> (B, C, G, G) grid features; G = S / 2**stages."""

    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        layers, c_in = [], 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        self.stages = nn.Sequential(*layers)

    def forward(self, pixel_values):
        return self.stages(pixel_values)


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.output = nn.Linear(hidden, hidden)

    def forward(self, x, mask_bias):
        b, n, d = x.shape

        def split(t):  # (B, N, D) -> (B, H, N, Dh)
            return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + mask_bias
        probs = scores.softmax(dim=-1)  # (B, H, N, N): eager softmax, every row sums to 1
        ctx = (probs @ v).transpose(1, 2).reshape(b, n, d)
        return self.output(ctx), probs


class EncoderLayer(nn.Module):
    """Post-LN BERT layer: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float):
        super().__init__()
        self.attention = SelfAttention(hidden, heads)
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.ffn_in = nn.Linear(hidden, intermediate)
        self.ffn_out = nn.Linear(intermediate, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x, mask_bias):
        a, probs = self.attention(x, mask_bias)
        x = self.attention_norm(x + a)
        x = self.ffn_norm(x + self.ffn_out(nn.functional.gelu(self.ffn_in(x))))
        return x, probs


@dataclass
class KdvlpOutput:
    logits: torch.Tensor  # (B, answers)
    attentions: tuple[torch.Tensor, ...] | None = None  # per layer (B, H, N, N)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # layers + 1, each (B, N, D); 0 = embeddings


class KdvlpModel(nn.Module):
    def __init__(self, config: KdvlpConfig):
        super().__init__()
        self.config = config
        d, g = config.hidden_size, config.grid
        self.word_embeddings = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        self.text_position_embeddings = nn.Embedding(config.max_text_tokens, d)
        self.type_embeddings = nn.Embedding(2, d)
        self.image_separator = nn.Parameter(torch.zeros(d))  # the [IMG] token
        self.cnn = GridCNN(config.cnn_channels)
        self.visual_projection = nn.Linear(config.cnn_channels[-1], d)
        self.grid_position_embeddings = nn.Embedding(g * g, d)
        self.embedding_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(d, config.num_heads, config.intermediate_size,
                                                 config.layer_norm_eps) for _ in range(config.num_layers))
        self.pooler = nn.Linear(d, d)
        self.classifier = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.LayerNorm(2 * d, eps=config.layer_norm_eps),
                                        nn.Linear(2 * d, len(config.answers)))
        self._init_weights()

    def _init_weights(self):
        # Linear layers keep torch's fan-in scaled default: BERT's fixed std of 0.02 is tuned for width
        # 768 and, at the widths trained here, makes attention start so flat that learning stalls.
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.normal_(self.image_separator, std=0.02)

    def embed(self, input_ids, pixel_values):
        """Joint embeddings (B, T + 1 + G*G, D) before the LayerNorm."""
        b, t = input_ids.shape
        if t > self.config.max_text_tokens:
            raise ValueError(f"{t} text tokens; this model reads at most {self.config.max_text_tokens}")
        pos = torch.arange(t, device=input_ids.device)
        text = self.word_embeddings(input_ids) + self.text_position_embeddings(pos)[None] + self.type_embeddings.weight[0]
        grid = self.cnn(pixel_values)  # (B, C, G, G): the attribution point for the image
        cells = grid.flatten(2).transpose(1, 2)  # (B, G*G, C), row-major
        vis = self.visual_projection(cells) + self.grid_position_embeddings.weight[None]
        sep = self.image_separator.expand(b, 1, -1)
        image = torch.cat([sep, vis], dim=1) + self.type_embeddings.weight[1]
        return torch.cat([text, image], dim=1)

    def forward(self, input_ids, pixel_values, attention_mask=None, *, output_attentions: bool = False,
                output_hidden_states: bool = False) -> KdvlpOutput:
        b, t = input_ids.shape
        x = self.embedding_norm(self.embed(input_ids, pixel_values))
        n = x.shape[1]
        if attention_mask is None:
            attention_mask = torch.ones(b, t, dtype=torch.long, device=input_ids.device)
        full = torch.cat([attention_mask.to(x.dtype), x.new_ones(b, n - t)], dim=1)
        mask_bias = (1.0 - full)[:, None, None, :] * torch.finfo(x.dtype).min
        attentions, hidden = [], [x]
        for layer in self.layers:
            x, probs = layer(x, mask_bias)
            attentions.append(probs)
            hidden.append(x)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return KdvlpOutput(logits=self.classifier(pooled),
                           attentions=tuple(attentions) if output_attentions else None,
                           hidden_states=tuple(hidden) if output_hidden_states else None)


# ---- checkpoint IO ----------------------------------------------------------------------------------
def save_checkpoint(model: KdvlpModel, tokenizer, path: Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_NAME).write_text(json.dumps(model.config.to_json(), indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path / WEIGHTS_NAME), metadata={"format": MODEL_TYPE, "format_version": str(FORMAT_VERSION)})
    tokenizer.save_pretrained(path)
    return path


def load_config(path: Path) -> KdvlpConfig:
    cfg_path = Path(path) / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(f"{path} has no {CONFIG_NAME}: not a KD-VLP checkpoint directory")
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{cfg_path} must hold a JSON object")
    return KdvlpConfig.from_json(raw)


def load_model(path: Path) -> KdvlpModel:
    """Build the model from config.json and fill it from model.safetensors (never pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    config = load_config(path)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{path} has no {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} cannot be read as safetensors: {e}") from e
    model = KdvlpModel(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not match config.json: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{weights}: {k} has shape {tuple(v.shape)}, config.json implies "
                                  f"{tuple(expected[k].shape)}")
    model.load_state_dict(state, strict=True)
    return model.eval()
