"""Where perception is lost: linear probes on what each step of the image path holds about a picture.

A picture reaches the model's answer through a chain: pixels → the image tokenizer's codes → the
model's embedding of each code → its hidden states, block after block. A linear probe (ridge
regression onto the labels, scikit-learn) trained on one step's features and scored on held-out pictures
says how readable an attribute — ``colour``, ``shape``, ``position`` (3×3 cell) or ``count`` (1–4) —
still is there. Where the figure drops, the information was lost, or kept in a form no simple reader
can use; where it is high but the model's answers are at chance, the model does not use it.

The steps (each a *reader*, in order):

- ``pixels``: the picture itself, RGB at ``size`` px (the ceiling for the rest);
- ``decoded``: the picture decoded back from its codes (what survives the tokenizer);
- ``codes``: the codes as one-hot vectors per grid cell (what the vocabulary ids carry);
- ``code_latents``: the latent vector the tokenizer's decoder reads for each code (neural tokenizers);
- ``code_appearance``: each code's own decoded patch (what ``media_embeddings = "appearance"`` starts
  the model's embedding of a code from), cell by cell;
- ``embeddings``: the model's input embedding of each code (with a model);
- ``block N``: the model's hidden state at the codes after block N (with a model).

With a model, :func:`attention_to_pictures` also measures the other half of the path: how much of its
attention each block spends on a picture's codes where it predicts the answer to a question about that
picture (shapes-world questions), against the codes' share of the context (what attending evenly to
every earlier token would give). A block at or below that even share does not look at the picture.

With ``probe="mlp"`` a one-hidden-layer perceptron reads instead: what it reads and a linear probe
does not is there, but only in a form a model would have to learn to decode first. With
``probe="conv"`` a small convolutional reader does, on every reader laid out as the code grid (a
picture's pixels cell by cell, each code's vector in its cell): it combines neighbouring cells and
does not care where in the picture something is, which a shape needs (a linear reader of the pixels
themselves finds a lone shape barely above chance, because the same shape elsewhere is other pixels).

Pictures are drawn from known ground truth, as the text-to-image probes draw theirs
(:func:`polymodal.eval.attributes.draw_scene`). This module knows nothing of tasks, suites or reports.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image as PILImage
from scipy import sparse
from sklearn.exceptions import ConvergenceWarning

from polymodal.content import Document, Image
from polymodal.data.shapes.render import render_scene
from polymodal.data.shapes.world import POSITIONS
from polymodal.errors import ConfigError
from polymodal.eval.attributes import ATTRIBUTES, COUNT_WORDS, draw_scene
from polymodal.tokenizers.base import Grid, TokenSpan
from polymodal.tokenizers.document import DocumentTokenizer
from polymodal.tokenizers.image import ImageTokenizer, to_image, to_tensor

PROBES = ("linear", "mlp", "conv")


@dataclass(frozen=True)
class PerceptionSettings:
    examples: int = 1000  # training pictures per attribute
    held_out: int = 500  # scored pictures per attribute
    size: int = 32  # the pictures' side in pixels (the tokenizer picks its grid for that size)
    seed: int = 0
    attributes: tuple[str, ...] = tuple(ATTRIBUTES)
    # or "mlp": one hidden layer of 256, to tell "not there" from "not linearly there"; or "conv": a small
    # convolutional reader over the code grid, which can read a shape wherever it is
    probe: str = "linear"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.attributes) - set(ATTRIBUTES))
        if unknown:
            raise ConfigError(f"unknown attributes {unknown}; known: {', '.join(ATTRIBUTES)}")
        if self.examples < 20 or self.held_out < 20:
            raise ConfigError(
                f"need at least 20 training and 20 held-out pictures, got {self.examples}/{self.held_out}"
            )
        if self.probe not in PROBES:
            raise ConfigError(f"probe must be one of {', '.join(PROBES)}, got {self.probe!r}")
        if self.size < 8:
            raise ConfigError(f"size must be at least 8 px, got {self.size}")


@dataclass
class PerceptionReport:
    """Held-out accuracy of a linear probe, by reader (in path order) and attribute, with chance."""

    accuracy: dict[str, dict[str, float]]
    chance: dict[str, float]
    settings: PerceptionSettings
    grid: tuple[int, int]
    # the model's readers: the mean length (L2 norm) of its vector at a code, so that a block that swamps
    # what the embedding held shows as a jump here
    norms: dict[str, float] = field(default_factory=dict)
    # with a model: attention_to_pictures (its "even" entry: the codes' share of the context)
    attention: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "chance": self.chance, "settings": asdict(self.settings),
                "grid": list(self.grid), "norms": self.norms, "attention": self.attention}  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def format(self) -> str:
        """A Markdown table: one row per reader, one column per attribute, chance in the last row."""
        attributes = list(self.settings.attributes)
        norm = " norm at a code |" if self.norms else ""
        lines = [f"| read from | {' | '.join(attributes)} |{norm}", "|---|" + "---|" * (len(attributes) + bool(norm))]
        for reader, scores in self.accuracy.items():
            size = (f" {self.norms[reader]:.3g} |" if reader in self.norms else " |") if norm else ""
            lines.append(f"| {reader} | " + " | ".join(f"{scores[a]:.0%}" for a in attributes) + f" |{size}")
        chance = " | ".join(f"{self.chance[a]:.0%}" for a in attributes)
        lines.append(f"| chance | {chance} |" + (" |" if norm else ""))
        if self.attention:
            blocks = [k for k in self.attention if k != "even"]
            lines += ["", "share of attention on the picture's codes where the answer is predicted:", "",
                      "| block | " + " | ".join(b.removeprefix("block ") for b in blocks) + " | even |",
                      "|---|" + "---|" * (len(blocks) + 1),
                      "| share | " + " | ".join(f"{self.attention[b]:.0%}" for b in self.attention) + " |"]  # fmt: skip
        return "\n".join(lines)


def attribute_pictures(rng: np.random.Generator, attribute: str, n: int, size: int) -> tuple[list[Image], np.ndarray]:
    """``n`` pictures at ``size`` px with the index of their ``attribute`` value (a lone object of any
    colour and shape in any cell, or 1-4 objects for ``count``), drawn at twice the size and reduced."""
    images, labels = [], []
    for _ in range(n):
        if attribute == "count":
            count = str(rng.choice(COUNT_WORDS))
            scene, value = draw_scene(rng, count=count), count
        else:
            scene = draw_scene(rng, position=str(rng.choice(POSITIONS)))
            obj = scene.objects[0]
            value = {"colour": obj.colour, "shape": obj.shape, "position": obj.position}[attribute]
        picture = render_scene(scene, size=2 * size).pixels.resize((size, size), PILImage.BOX)
        images.append(Image(picture).with_detail("high"))  # its own size's grid, without the "auto" search
        labels.append(ATTRIBUTES[attribute].index(value))
    return images, np.array(labels)


def probe_perception(
    tokenizer: DocumentTokenizer,
    model: torch.nn.Module | None = None,
    settings: PerceptionSettings | None = None,
    *,
    say: Callable[[str], None] | None = None,
) -> PerceptionReport:
    """Fit and score a linear probe per reader and attribute (see the module's docstring). Without a
    ``model`` only the tokenizer's readers are probed."""
    settings = settings or PerceptionSettings()
    image_tokenizer = tokenizer.tokenizer("image")
    accuracy: dict[str, dict[str, float]] = {}
    norms: dict[str, float] = {}
    grid = (0, 0)
    for attribute in settings.attributes:
        # each attribute's pictures are its own, whichever others are probed beside it
        rng = np.random.default_rng([settings.seed, 11, list(ATTRIBUTES).index(attribute)])
        images, labels = attribute_pictures(rng, attribute, settings.examples + settings.held_out, settings.size)
        spans = _encode_all(image_tokenizer, images)
        grid = (spans[0].layout.height, spans[0].layout.width)
        for reader, features in _features(images, spans, tokenizer, model, settings.size):
            if reader == "embeddings" or reader.startswith("block "):
                cells = features.reshape(len(features), grid[0] * grid[1], -1)
                norms.setdefault(reader, float(np.linalg.norm(cells, axis=-1).mean()))
            if settings.probe == "conv":
                score = conv_probe_accuracy(
                    _as_grid(reader, features, grid), labels, settings.examples, settings.seed, grid
                )
            else:
                score = probe_accuracy(features, labels, settings.examples, settings.probe, settings.seed)
            accuracy.setdefault(reader, {})[attribute] = score
            if say is not None:
                say(f"{attribute:>8} from {reader:<13} {score:6.1%}")
    chance = {a: 1 / len(ATTRIBUTES[a]) for a in settings.attributes}
    report = PerceptionReport(accuracy, chance, settings, grid, norms)
    if model is not None:
        report.attention = attention_to_pictures(tokenizer, model, questions=settings.held_out, size=settings.size,
                                                 seed=settings.seed)  # fmt: skip
        if say is not None:
            say("attention on the picture: " + ", ".join(f"{k} {v:.0%}" for k, v in report.attention.items()))
    return report


@torch.no_grad()
def attention_to_pictures(tokenizer: DocumentTokenizer, model: torch.nn.Module, *, questions: int = 200,
                          size: int = 32, seed: int = 0) -> dict[str, float]:  # fmt: skip
    """Per block (``"block N"``), the share of attention that the positions predicting an answer pay to
    the picture's codes: mean over heads, answer tokens and ``questions`` shapes-world chats (a picture
    of one or two objects, a question, its right answer); ``"even"``: the codes' mean share of the
    context there, what attending evenly to every earlier token would give."""
    from polymodal.data.shapes.questions import image_question
    from polymodal.data.shapes.render import render_scene
    from polymodal.data.shapes.world import random_scene

    if not hasattr(model, "layers") or not hasattr(model, "embed"):
        raise ConfigError("reading a model's attention needs an early-fusion model (embed + layers)")
    if questions < 1:
        raise ConfigError(f"questions must be >= 1, got {questions}")
    image_ids = tokenizer.vocab.range("image")
    rng = np.random.default_rng([seed, 23])
    shares = np.zeros(len(model.layers))
    even = 0.0
    for _ in range(questions):
        scene = random_scene(rng, max_objects=2)
        question = image_question(scene, rng)
        seq = tokenizer.encode(Document.chat(("user", [render_scene(scene, size=size), question.text]),
                                             ("assistant", question.answer)))  # fmt: skip
        ids = seq.ids[None]
        at_picture = (seq.ids >= image_ids.start) & (seq.ids < image_ids.stop)
        # the answer's tokens (those the chat template trains on) are predicted one position earlier
        queries = (torch.nonzero(seq.loss_weight > 0).ravel() - 1).clamp(min=0)
        weights: list[torch.Tensor] = []

        def read(module, args, weights=weights, queries=queries, at_picture=at_picture):  # noqa: ANN001, ANN202
            probs = attention_probs(module, *args[:4], queries)  # [1, heads, queries, L]
            weights.append(probs[0, :, :, at_picture].sum(-1).mean())

        hooks = [layer.attention.register_forward_pre_hook(read) for layer in model.layers]
        try:
            model(ids, seq.positions[None], seq.modality[None])
        finally:
            for hook in hooks:
                hook.remove()
        shares += np.array([float(w) for w in weights])
        before = torch.cumsum(at_picture.float(), 0)[queries] / (queries + 1).float()
        even += float(before.mean())
    result = {f"block {i + 1}": float(v / questions) for i, v in enumerate(shares)}
    result["even"] = even / questions
    return result


def _features(images: Sequence[Image], spans: Sequence, tokenizer: DocumentTokenizer, model: torch.nn.Module | None,
              size: int) -> Iterator[tuple[str, np.ndarray]]:  # fmt: skip
    """(reader, ``[N, F]`` features: an array, or a sparse matrix for the one-hot codes) along the path."""
    image_tokenizer = tokenizer.tokenizer("image")
    yield "pixels", _pixels(images, size)
    yield "decoded", _pixels(_decode_all(image_tokenizer, spans), size)
    codes = torch.stack([span.ids for span in spans])  # [N, cells], the tokenizer's own code numbers
    n, cells = codes.shape
    columns = (codes + torch.arange(cells) * image_tokenizer.vocab_size).ravel().numpy()
    rows = np.repeat(np.arange(n), cells)
    yield "codes", sparse.csr_matrix((np.ones(n * cells, np.float32), (rows, columns)),
                                     shape=(n, cells * image_tokenizer.vocab_size))  # fmt: skip
    if hasattr(image_tokenizer, "code_latents"):  # a neural tokenizer (the built-in ones)
        yield "code_latents", image_tokenizer.code_latents()[codes].flatten(1).numpy()
        yield "code_appearance", image_tokenizer.code_appearance()[codes].flatten(1).numpy()
    if model is not None:
        yield from _model_features(images[0], codes, model, tokenizer)


@torch.no_grad()
def _model_features(first: Image, codes: torch.Tensor, model: torch.nn.Module, tokenizer: DocumentTokenizer,
                    batch_size: int = 64) -> Iterator[tuple[str, np.ndarray]]:  # fmt: skip
    """The model's embedding of each code and its hidden state there after every block, each picture
    read alone as a document that holds only it (``codes [N, cells]``: the pictures' codes, one grid)."""
    if not hasattr(model, "layers") or not hasattr(model, "embed"):
        raise ConfigError("probing a model's hidden states needs an early-fusion model (embed + layers)")
    # one grid: every picture's document is the first one's, with its own codes in the same places
    template = tokenizer.encode(Document.of(first))
    image_ids = tokenizer.vocab.range("image")
    at_codes = (template.ids >= image_ids.start) & (template.ids < image_ids.stop)
    if int(at_codes.sum()) != codes.shape[1]:
        raise ConfigError("could not find the picture's codes in its document")
    captured: dict[str, list[torch.Tensor]] = {}
    names = ["embeddings", *(f"block {i + 1}" for i in range(len(model.layers)))]
    modules = [model.embed, *model.layers]
    for start in range(0, len(codes), batch_size):
        chunk = codes[start : start + batch_size]
        ids = template.ids.repeat(len(chunk), 1)
        ids[:, at_codes] = tokenizer.vocab.to_global("image", chunk)
        outputs: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out, kept=outputs: kept.append(out)) for m in modules]
        try:
            model(ids, template.positions.expand(len(chunk), -1, -1), template.modality.expand(len(chunk), -1))
        finally:
            for hook in hooks:
                hook.remove()
        for name, out in zip(names, outputs, strict=True):
            out = out[0] if isinstance(out, tuple) else out
            captured.setdefault(name, []).append(out[:, at_codes].flatten(1).float())
    for name in names:
        yield name, torch.cat(captured[name]).numpy()


def attention_probs(attention: torch.nn.Module, x_BLD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    mask: torch.Tensor | None, queries: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """The attention weights ``[B, heads, Q, L]`` that an :class:`~polymodal.model.transformer.Attention`
    computes inside its fused kernel for these inputs (no cache; ``queries``: the rows to keep, all by
    default), recomputed from its projections."""
    if mask is not None and not isinstance(mask, torch.Tensor):
        raise ConfigError("reading attention of a sliding-window model over a long context is not supported")
    B, L, _ = x_BLD.shape
    queries = torch.arange(L) if queries is None else queries
    q, k = attention.queries_keys(x_BLD, cos, sin)
    k = k.repeat_interleave(attention.n_heads // attention.n_kv_heads, dim=1)
    scores = (q[:, :, queries] @ k.transpose(-1, -2)) / attention.head_dim**0.5
    if mask is None:  # causal
        allowed = torch.ones(L, L, dtype=torch.bool, device=x_BLD.device).tril()[queries]
    else:
        allowed = mask[:, :, queries]
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1)


@torch.no_grad()
def _encode_all(image_tokenizer, images: Sequence[Image]) -> list[TokenSpan]:  # noqa: ANN001
    """Every picture's codes, in batches through a neural tokenizer's encoder (one at a time otherwise)."""
    if not isinstance(image_tokenizer, ImageTokenizer):
        spans = [image_tokenizer.encode(image) for image in images]
    else:
        side = image_tokenizer.bucket(images[0], images[0].detail or "auto")
        spans = []
        for start in range(0, len(images), 128):
            batch = torch.stack([to_tensor(image, side) for image in images[start : start + 128]])
            codes = image_tokenizer.model.encode(batch.to(image_tokenizer.device)).cpu()
            spans += [TokenSpan("image", c.reshape(-1), Grid(*c.shape)) for c in codes]
    if len({(s.layout.height, s.layout.width) for s in spans}) > 1:
        raise ConfigError("the pictures were given different grids; probe one picture size at a time")
    return spans


@torch.no_grad()
def _decode_all(image_tokenizer, spans: Sequence[TokenSpan]) -> list[Image]:  # noqa: ANN001
    if not isinstance(image_tokenizer, ImageTokenizer):
        return [image_tokenizer.decode(span) for span in spans]
    h, w = spans[0].layout.height, spans[0].layout.width
    codes = torch.stack([span.ids.reshape(h, w) for span in spans])
    pixels = torch.cat([image_tokenizer.model.decode(codes[k : k + 128].to(image_tokenizer.device)).cpu()
                        for k in range(0, len(codes), 128)])  # fmt: skip
    return [to_image(p) for p in pixels]


def _pixels(images: Sequence[Image], size: int) -> np.ndarray:
    return np.stack([np.asarray(image.pixels.convert("RGB").resize((size, size), PILImage.BOX), np.float32).ravel()
                     / 255.0 for image in images])  # fmt: skip


def _as_grid(reader: str, features: np.ndarray | sparse.csr_matrix, grid: tuple[int, int]) -> tuple[str, np.ndarray]:
    """A reader's features as the ``conv`` probe reads them, with their kind: ``"pixels"``, the picture as
    an image ``[N, 3, S, S]``; ``"codes"``, one-hot codes as their code numbers on the grid ``[N, h, w]``
    (integers); ``"cells"``, the rest (``[N, cells · F]`` vectors, cell-major) on the grid, ``[N, h, w, F]``."""
    h, w = grid
    n = features.shape[0]
    if sparse.issparse(features):  # one one-hot code per cell: the column says which
        codes = features.tocsr().indices.reshape(n, h * w) % (features.shape[1] // (h * w))
        return "codes", codes.reshape(n, h, w)
    if reader in ("pixels", "decoded"):
        side = int(round((features.shape[1] / 3) ** 0.5))
        return "pixels", np.ascontiguousarray(features.reshape(n, side, side, 3).transpose(0, 3, 1, 2))
    return "cells", features.reshape(n, h, w, -1)


class ConvReader(torch.nn.Module):
    """The ``conv`` probe: a picture brought down to the code grid by strided convolutions (``pixels``: the
    stride, a power of two), or each cell's vector (or code number, through an embedding) projected to 64
    channels; a learned vector per cell added (so that where something is can be read too); two 3×3
    convolutions across the grid; the maximum and the mean over the cells; a linear layer."""

    def __init__(self, features: int, classes: int, *, kind: str, grid: tuple[int, int], stride: int = 1,
                 width: int = 64) -> None:  # fmt: skip
        super().__init__()
        nn = torch.nn
        if kind == "pixels":
            steps = max(1, int(math.log2(stride)))
            channels = [features, *[min(width, 16 * 2**i) for i in range(1, steps)], width]
            layers = [m for a, b in itertools.pairwise(channels) for m in (nn.Conv2d(a, b, 4, 2, 1), nn.SiLU())]
            self.cell = nn.Sequential(*layers[:-1])
        else:
            self.cell = nn.Embedding(features, width) if kind == "codes" else nn.Linear(features, width)
        self.kind = kind
        self.where = nn.Parameter(torch.zeros(1, width, *grid))
        self.mix = nn.Sequential(nn.SiLU(), nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.SiLU())  # fmt: skip
        self.out = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cells = self.cell(x) if self.kind == "pixels" else self.cell(x).permute(0, 3, 1, 2)  # [N, width, h, w]
        mixed = self.mix(cells + self.where)
        return self.out(torch.cat([mixed.amax(dim=(2, 3)), mixed.mean(dim=(2, 3))], dim=1))


def conv_probe_accuracy(laid_out: tuple[str, np.ndarray], labels: np.ndarray, n_train: int, seed: int,
                        grid: tuple[int, int], *, epochs: int = 30) -> float:  # fmt: skip
    """Held-out accuracy of a :class:`ConvReader` fit on the first ``n_train`` pictures; ``laid_out`` as
    :func:`_as_grid` gives it (float features standardised per channel on the training pictures)."""
    generator = torch.Generator().manual_seed(seed)
    kind, x = laid_out
    if kind == "codes":
        data = torch.from_numpy(x.astype(np.int64))
        features = int(data.max()) + 1
    else:
        data = torch.from_numpy(x.astype(np.float32))
        channel = 1 if kind == "pixels" else -1
        train = data[:n_train].movedim(channel, -1).reshape(-1, data.shape[channel])
        shape = [1] * data.ndim
        shape[channel] = -1
        data = (data - train.mean(0).view(shape)) / train.std(0).clamp_min(1e-6).view(shape)
        features = data.shape[channel]
    stride = data.shape[-1] // grid[1] if kind == "pixels" else 1
    y = torch.from_numpy(labels.astype(np.int64))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reader = ConvReader(features, int(labels.max()) + 1, kind=kind, grid=grid, stride=stride)
    optimizer = torch.optim.AdamW(reader.parameters(), lr=2e-3, weight_decay=1e-2)
    with torch.enable_grad():
        for _ in range(epochs):
            for batch in torch.randperm(n_train, generator=generator).split(64):
                loss = torch.nn.functional.cross_entropy(reader(data[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        predicted = torch.cat([reader(chunk).argmax(-1) for chunk in data[n_train:].split(256)])
    return float((predicted == y[n_train:]).float().mean())


def probe_accuracy(features: np.ndarray | sparse.csr_matrix, labels: np.ndarray, n_train: int, kind: str,
                   seed: int) -> float:  # fmt: skip
    """Held-out accuracy of a probe fit on the first ``n_train`` rows, on standardised features: ridge
    regression onto the one-hot labels (``linear``; its penalty picked by leave-one-out on the training
    rows, a closed form: the same figure on any machine) or a one-hidden-layer perceptron (``mlp``)."""
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # one-hot codes stay sparse and unscaled; dense features are standardised per column
    scaler = StandardScaler(with_mean=not sparse.issparse(features))
    if kind == "linear":
        head = RidgeClassifierCV(alphas=np.logspace(-1, 4, 6))
    else:
        head = MLPClassifier((256,), alpha=1e-3, max_iter=300, early_stopping=True, random_state=seed)
    probe = make_pipeline(scaler, head)
    with warnings.catch_warnings():  # an MLP stopped at max_iter still gives its held-out figure
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(features[:n_train], labels[:n_train])
    return float(probe.score(features[n_train:], labels[n_train:]))
