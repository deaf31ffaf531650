"""Attribution for generative (decoder) adapters: the attribution contract of adapters/base.py over a
teacher-forced forward, so every method of analysis/attribution/ explains generated answers.

A mixin for ``GenerativeAdapter`` (adapters/generative.py). It reaches the model only through the
adapter's hooks: ``_encode`` / ``_generate`` (prompt and greedy answer), ``_embed_with_images`` (the
input embeddings with the image features in place at the prompt's image tokens), ``input_embeddings``
and ``patch_embedding`` (the two layers Integrated Gradients attributes at), ``image_input_names``, and
hooks of its own a family overrides: ``_decoder`` when its positions depend on the tokens (multimodal
rotary positions), ``patch_token_index`` and ``_occlude_patches`` when its vision patches do not map one
to one onto image tokens, or its pixels are not one (batch, channel, y, x) image.

The spec (``attribution_spec``) teacher-forces J answers after the prompt (default: the greedy answer,
as generated; or answer texts, each tokenized and followed by the end-of-sequence token, as in training):

- inputs: ``input_ids`` (1, P + L_0 + ... + L_{J-1}), the prompt's P tokens and then each answer's;
  the image inputs; ``prompt_length`` P and ``answer_lengths`` (L_0, ...) as plain ints (not attributed).
  The word embeddings run once over all of it (so Captum's layer hook sees one call); the forward then
  builds J sequences [prompt, answer j] and runs the decoder on them as one right-padded batch.
- ``forward_logits`` of such inputs: (batch, S, 3) over the S = sum L_j answer tokens: log-probability,
  logit, and 1.0 when it is the top token at its position (greedy decoding would write it), each given
  the prompt and the answer's tokens before it (position t - 1 produces token t). Without
  ``answer_lengths`` it is the adapter's ``next_token_logits`` (the training contract).
- regions: the image tokens that show the source image (boxes from the record geometry); vision patch k
  adds to the image token ``patch_token_index`` names (LLaVA "default": patch k -> image token k).
- words: the prompt's non-image tokens (question words; template tokens flagged special). Baseline: the
  words replaced by padding (the unknown token where padding's embedding is zero: ``word_baseline_id``),
  a zero image. The answer tokens are context, never attributed.
- attention maps (``attention_probs``): the decoder's causal maps of each teacher-forced sequence, one
  batch element per answer; the rows read are the target's (analysis/attribution/targets.py).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from adapters.base import AttributionSpec
from adapters.inputs import pad_words
from core.errors import AdapterError, InputError
from core.ids import example_id_of

PROMPT_LENGTH, ANSWER_LENGTHS = "prompt_length", "answer_lengths"


class GenerativeAttribution:
    """The attribution contract for a ``GenerativeAdapter``; see the module docstring."""

    # ---- hooks a family may override -------------------------------------------------------------
    def patch_token_index(self, prompt_ids: list[int], n_patches: int) -> np.ndarray:
        """(n_patches,) the prompt position of the image token each vision patch (patch-embedding output
        unit, in its flattened order) becomes, -1 for none. Default (LLaVA): patches one to one onto the
        last ``n_patches`` image tokens (a leading extra one is the vision tower's CLS feature)."""
        pos = [i for i, t in enumerate(prompt_ids) if t == self.image_token_id]
        extra = len(pos) - n_patches
        if extra < 0:
            raise AdapterError(f"{self.name}: {n_patches} vision patches for {len(pos)} image tokens; the family "
                               "must say which patch becomes which token (patch_token_index)")
        return np.asarray(pos[extra:], np.int64)

    def _occlude_patches(self, image_inputs: dict, fill_inputs: dict, patch_mask: np.ndarray) -> dict:
        """``image_inputs`` with the pixels of the masked vision patches taken from ``fill_inputs``. Default:
        (patches, features) rows of flattened patches (Qwen2-VL), or (batch, [frames,] channel, y, x) pixels
        cut by a convolution whose stride is its kernel, patches numbered frame by frame, row-major."""
        pv, fill = image_inputs["pixel_values"], fill_inputs["pixel_values"]
        pv = pv.clone()
        patches = np.nonzero(patch_mask)[0]
        if pv.dim() == 2:
            pv[patches] = fill[patches]
            return dict(image_inputs, pixel_values=pv)
        if pv.dim() not in (4, 5):
            raise AdapterError(f"{self.name}: pixels of shape {tuple(pv.shape)}: the family must occlude its patches")
        p = int(np.atleast_1d(self.patch_embedding().stride)[0])
        frames, framed_fill = (pv[:, None], fill[:, None]) if pv.dim() == 4 else (pv, fill)  # (B, F, C, H, W) views
        gh, gw = frames.shape[-2] // p, frames.shape[-1] // p
        for k in patches:
            f, rest = divmod(int(k), gh * gw)
            r, c = divmod(rest, gw)
            cell = (slice(None), f, slice(None), slice(r * p, (r + 1) * p), slice(c * p, (c + 1) * p))
            frames[cell] = framed_fill[cell]
        return dict(image_inputs, pixel_values=pv)

    def word_baseline_id(self) -> int:
        """The token that stands in for a word in the baseline and when a word is occluded: padding, unless its
        embedding is all zeros (a ``padding_idx`` row, as in Llama-style embeddings): the decoder's RMSNorm
        divides by the norm, so IG's path from a zero vector is a step at alpha = 0 that no Riemann sum
        resolves (measured on the demo LLaVA: a convergence delta of 59% of f(x) - f(baseline) at 300 steps);
        then the unknown token, whose embedding is not zero."""
        weight = self.input_embeddings().weight
        for tid in (self.pad_id, self.tokenizer.unk_token_id):
            if tid is not None and 0 <= tid < len(weight) and bool(weight[tid].detach().abs().max() > 0):
                return int(tid)
        return int(self.pad_id)

    def _image_baseline(self, image_inputs: dict) -> dict:
        """The image inputs of the attribution baseline: zero pixels (after normalization: the mean colour).
        A family whose model reads all-zero frames as padding overrides it."""
        import torch

        return {k: torch.zeros_like(v) for k, v in image_inputs.items() if v.is_floating_point()}

    def _decoder(self, embeds, mask, seq_ids, prompt_length: int, image_inputs: dict, output_attentions: bool):
        """(last hidden states (B, T, D), attentions or None) of the language model on input embeddings
        ``embeds`` (B, T, D) of the token ids ``seq_ids`` (B, T) (right padding: ``mask`` 0), whose first
        ``prompt_length`` are the prompt; a family whose positions depend on the tokens (multimodal rotary
        positions) overrides it."""
        out = self.model.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False,
                               output_attentions=output_attentions)
        return out.last_hidden_state, (out.attentions if output_attentions else None)

    # ---- the spec --------------------------------------------------------------------------------
    def _answer_sequences(self, generated, answers) -> tuple[list[list[int]], list[str]]:
        if answers is None:
            ids = list(generated.token_ids)
            if not ids:
                raise InputError("the model generated no answer token: nothing to explain")
            return [ids], [self._answer_text(ids)]
        texts = [str(a).strip() for a in answers]
        if not texts or any(not t for t in texts):
            raise InputError("an answer to explain must not be empty")
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [list(i) + [self.eos_ids[0]] for i in ids], texts

    def _count_patches(self, image_inputs: dict) -> int:
        """Vision patches the patch embedding makes of these pixels (its output, flattened, less the feature axis)."""
        import torch

        shape = []
        handle = self.patch_embedding().register_forward_hook(lambda m, i, o: shape.append(tuple(o.shape)))
        try:
            with torch.no_grad():
                self._image_features(image_inputs)
        finally:
            handle.remove()
        if not shape:
            raise AdapterError(f"{self.name}: the patch embedding did not run on the image")
        s = shape[0]
        return int(np.prod(s) // (s[1] if len(s) == 4 else s[-1]))

    def attribution_spec(self, image: Image.Image, question: str, *, answers=None) -> AttributionSpec:
        """The spec of the greedy answer (``answers`` None) or of the given answer texts; module docstring."""
        import torch

        rgb, q, prompt = self._encode(image, question)
        generated = self._generate(prompt)
        seqs, texts = self._answer_sequences(generated, answers)
        prompt_ids = prompt.inputs["input_ids"][0].tolist()
        P = len(prompt_ids)
        if P + max(len(s) for s in seqs) > self.context:
            raise InputError(f"prompt and answer take {P + max(len(s) for s in seqs)} tokens; the model reads {self.context}")
        image_inputs = {k: prompt.inputs[k] for k in self.image_input_names}
        patch_pos = self.patch_token_index(prompt_ids, self._count_patches(image_inputs))
        regions = np.array([i for i, m in enumerate(prompt.modality) if m == "image"], np.int64)
        region_of = {int(t): r for r, t in enumerate(regions)}
        patch_region = np.array([region_of.get(int(t), -1) for t in patch_pos], np.int64)
        words = np.array([i for i, t in enumerate(prompt_ids) if t != self.image_token_id], np.int64)
        is_special = np.array([prompt.modality[i] != "text" for i in words], bool)
        flat = [t for s in seqs for t in s]
        ids = torch.tensor([prompt_ids + flat], dtype=torch.long, device=self.device)
        text_pos = np.zeros(ids.shape[1], bool)
        text_pos[words[~is_special]] = True
        inputs = {"input_ids": ids, **image_inputs, PROMPT_LENGTH: P, ANSWER_LENGTHS: tuple(len(s) for s in seqs)}
        baselines = dict(inputs, input_ids=pad_words(ids, text_pos, self.word_baseline_id()),
                         **self._image_baseline(image_inputs))
        labels = [self._answer_token_labels(s) for s in seqs]  # (tokens, modality) per answer, as a Record's
        answer_tokens = tuple(tuple(tokens) for tokens, _ in labels)
        return AttributionSpec(
            record_tokens=tuple(prompt.tokens) + answer_tokens[0],
            record_modality=tuple(prompt.modality) + tuple(labels[0][1]),
            inputs=inputs, baselines=baselines, word_token_index=words, word_is_special=is_special,
            region_boxes=np.asarray(prompt.boxes, np.float32)[regions].reshape(-1, 4), region_token_index=regions,
            cls_token_index=P - 1, notices=tuple(prompt.notices) + _padding_patch_notice(patch_region),
            extra={"example_id": example_id_of(rgb, q), "answers": tuple(texts), "answer_ids": tuple(map(tuple, seqs)),
                   "answer_tokens": answer_tokens, PROMPT_LENGTH: P, ANSWER_LENGTHS: tuple(len(s) for s in seqs),
                   "generated": self._answer_text(generated.token_ids),
                   "generated_token_probabilities": tuple(generated.token_probabilities),
                   "patch_region": patch_region},
        )

    # ---- the teacher-forced forward -----------------------------------------------------------------
    def forward_logits(self, **inputs):
        """Teacher-forced answer-token scores (batch, S, 3) for a spec's inputs; else ``next_token_logits``."""
        if ANSWER_LENGTHS not in inputs:
            return self.next_token_logits(**inputs)
        return self._teacher_forced(inputs, output_attentions=False)[0]

    def attention_probs(self, inputs: dict):
        """(scores (1, S, 3), {"self": [(J, head, T, T) per decoder layer]}, {"self": (positions, positions)}):
        batch element j is the causal map of [prompt, answer j], right-padded to T tokens."""
        scores, attentions = self._teacher_forced(inputs, output_attentions=True)
        if int(inputs["input_ids"].shape[0]) != 1:
            raise AdapterError("attention maps are read for one input at a time")
        idx = np.arange(attentions[0].shape[-1])
        return scores, {"self": list(attentions)}, {"self": (idx, idx)}

    def _teacher_forced(self, inputs: dict, *, output_attentions: bool):
        import torch

        ids, P, lengths = inputs["input_ids"], int(inputs[PROMPT_LENGTH]), tuple(inputs[ANSWER_LENGTHS])
        B, T = ids.shape[0], P + max(lengths)
        image_inputs = {k: inputs[k] for k in self.image_input_names}
        # Image features go only where the prompt has image tokens: an answer token equal to the image
        # token (a degenerate model may write one) stays a word embedding, as in generate.
        in_prompt = torch.arange(ids.shape[1], device=ids.device) < P
        embeds = self._embed_with_images(ids, (ids == self.image_token_id) & in_prompt, image_inputs,
                                         torch.arange(B, device=ids.device))  # (B, P + sum L, D): one call
        seqs, seq_ids, masks, starts = [], [], [], np.cumsum((0,) + lengths)
        for j, L in enumerate(lengths):
            keep = list(range(P)) + list(range(P + starts[j], P + starts[j] + L))
            seqs.append(torch.nn.functional.pad(embeds[:, keep], (0, 0, 0, T - P - L)))
            seq_ids.append(torch.nn.functional.pad(ids[:, keep], (0, T - P - L), value=self.pad_id))
            m = torch.zeros(B, T, dtype=torch.long, device=ids.device)
            m[:, :P + L] = 1
            masks.append(m)
        J = len(lengths)
        hidden, attentions = self._decoder(torch.stack(seqs, 1).reshape(B * J, T, -1),
                                           torch.stack(masks, 1).reshape(B * J, T),
                                           torch.stack(seq_ids, 1).reshape(B * J, T), P, image_inputs,
                                           output_attentions)
        hidden = hidden.reshape(B, J, T, -1)
        head = self.model.get_output_embeddings()
        out = []
        for j, L in enumerate(lengths):
            logits = head(hidden[:, j, P - 1:P - 1 + L]).float()  # (B, L, V): position t - 1 produces token t
            target = ids[:, P + starts[j]:P + starts[j] + L]
            logp = torch.log_softmax(logits, -1).gather(-1, target[..., None])[..., 0]
            logit = logits.gather(-1, target[..., None])[..., 0]
            top = (logits.argmax(-1) == target).to(logits.dtype)
            out.append(torch.stack([logp, logit, top], -1))
        return torch.cat(out, 1), attentions

    # ---- the rest of the contract -------------------------------------------------------------------
    def attribution_layers(self) -> dict:
        return {"text": self.input_embeddings(), "image": self.patch_embedding()}

    def layer_scores(self, name: str, attribution, spec: AttributionSpec) -> np.ndarray:
        a = attribution.detach().float()
        if name == "text":  # (B, P + sum L, D) -> the words' positions
            return a.sum(-1)[0].cpu().numpy()[spec.word_token_index]
        if name == "image":  # patch-embedding output -> per patch (feature axis summed) -> per region
            per_patch = (a.sum(1) if a.dim() == 4 else a.sum(-1)).reshape(-1).cpu().numpy()
            region = spec.extra["patch_region"]
            if len(per_patch) != len(region):
                raise AdapterError(f"internal: {len(per_patch)} patch scores for {len(region)} patches")
            keep = region >= 0
            return np.bincount(region[keep], weights=per_patch[keep], minlength=len(spec.region_boxes))
        raise KeyError(name)

    def occlude(self, inputs: dict, spec: AttributionSpec, *, region_mask=None, word_mask=None) -> dict:
        """Regions: their patches' pixels from the spec's baselines (the fill); words: ``word_baseline_id``."""
        new = dict(inputs)
        if region_mask is not None and np.any(region_mask):
            region = spec.extra["patch_region"]
            patches = (region >= 0) & np.asarray(region_mask, bool)[np.maximum(region, 0)]
            names = self.image_input_names
            new.update(self._occlude_patches({k: inputs[k] for k in names}, {k: spec.baselines[k] for k in names},
                                             patches))
        if word_mask is not None and np.any(word_mask):
            pos = np.zeros(inputs["input_ids"].shape[1], bool)
            pos[spec.word_token_index[np.asarray(word_mask, bool) & ~spec.word_is_special]] = True
            new["input_ids"] = pad_words(inputs["input_ids"], pos, self.word_baseline_id())
        return new


def _padding_patch_notice(patch_region: np.ndarray) -> tuple[str, ...]:
    """A notice when some vision patches are in no region (LLaVA's pad to square: patches of padding
    only, outside the source image): their attribution is in no map and no image total."""
    outside = int((patch_region < 0).sum())
    if not outside:
        return ()
    return (f"{outside} of {len(patch_region)} vision patches cover only the padding the processor added "
            "around the image: they are in no region, so their attribution is left out of the image map and "
            "the image total (IG's totals then fall short of f(x) - f(baseline) by their share)",)
