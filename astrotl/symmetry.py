"""The symmetry group of a square image (the dihedral group D4), its subgroups, and how labels transform under it.

A galaxy or a star cluster has no preferred orientation on the sky, so rotating an image by a multiple of
90 degrees or mirroring it gives another valid image: training augmentation draws one of these transforms
per image, and test-time augmentation (TTA) averages the predictions over all of them. Some labels are
*not* invariant: a mirror turns a clockwise spiral galaxy into an anticlockwise one (Galaxy Zoo 1 classes
CW and ACW). A :class:`LabelSymmetry` declares, per class, what it becomes under a mirror flip and under a
90-degree rotation; augmentation then permutes the labels along with the pixels and TTA un-permutes the
probabilities, so that all eight transforms can be used on such data.

Group elements
--------------
Element ``(k, f)`` (index ``k + 4 f``, ``0..7``) first mirrors the image left-right when ``f = 1``
(``torch.flip(x, dims=(-1,))``) and then rotates it by ``k`` quarter turns
(``torch.rot90(x, k, dims=(-2, -1))``). Composition follows from ``flip . rot(k) = rot(-k) . flip``:
``(k1, f1) . (k2, f2) = (k1 + (-1)^f1 k2 mod 4, f1 xor f2)``; every element with ``f = 1`` is a mirror and
its own inverse.

Subgroups (the names ``task.tta`` and ``task.augment`` take)
------------------------------------------------------------
``none``
    the identity only;
``flip``
    identity and the left-right mirror (what ``augment: flip`` draws);
``flips``
    identity, left-right mirror, up-down mirror and their product (the 180-degree rotation);
``rot90``
    the four rotations by multiples of 90 degrees (no mirror: chirality is kept);
``d4``
    all eight.

Label symmetries
----------------
Declared as ``{"flip": {a: b, b: a}, "rot90": {...}}`` (class names; a class not listed maps to itself).
``flip`` is what a left-right mirror does to each class (every mirror does the same to chirality: the
up-down mirror is the left-right one followed by a half turn), ``rot90`` what a quarter turn does. The
permutation of element ``(k, f)`` is ``rot90^k . flip^f``, so the declaration must be consistent with the
group: ``flip`` an involution, ``rot90`` of order dividing 4, and ``flip . rot90 . flip = rot90^-1``.

Examples
--------
>>> import torch
>>> sym = LabelSymmetry.from_declaration({"flip": {"CW": "ACW", "ACW": "CW"}}, ["E", "CW", "ACW"])
>>> sym.permutation(element_index(0, 1)).tolist()      # a mirror swaps CW and ACW
[0, 2, 1]
>>> sym.permutation(element_index(1, 0)).tolist()      # a rotation keeps every class
[0, 1, 2]
>>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
>>> g = element_index(3, 1)
>>> torch.equal(transform(transform(x, g), inverse(g)), x)
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .errors import ConfigError

__all__ = ["GROUPS", "GENERATORS", "element_index", "element", "compose", "inverse", "transform", "transform_batch",
           "group_elements", "LabelSymmetry", "random_elements", "draw_elements", "tta_probabilities", "tta_logits",
           "average_probabilities"]

#: Subgroup name -> element indices (see the module docstring).
GROUPS: dict[str, tuple[int, ...]] = {
    "none": (0,),
    "flip": (0, 4),
    "flips": (0, 4, 6, 2),
    "rot90": (0, 1, 2, 3),
    "d4": (0, 1, 2, 3, 4, 5, 6, 7),
}

#: The generators a label symmetry may declare: a left-right mirror and a quarter turn.
GENERATORS = ("flip", "rot90")


def element_index(k: int, f: int) -> int:
    """Index ``0..7`` of the element that mirrors (``f = 1``) and then rotates by ``k`` quarter turns."""
    return int(k) % 4 + 4 * (int(f) % 2)


def element(index: int) -> tuple[int, int]:
    """``(k, f)`` of element ``index``."""
    if not 0 <= int(index) < 8:
        raise ValueError(f"a D4 element index is 0..7, got {index}")
    return int(index) % 4, int(index) // 4


def compose(a: int, b: int) -> int:
    """The element ``a . b`` (apply ``b`` first, then ``a``)."""
    k1, f1 = element(a)
    k2, f2 = element(b)
    return element_index(k1 + (-k2 if f1 else k2), f1 ^ f2)


def inverse(a: int) -> int:
    """The element undoing ``a``: a mirror is its own inverse, a rotation by ``k`` is undone by ``-k``."""
    k, f = element(a)
    return a if f else element_index(-k, 0)


def transform(images: torch.Tensor, index: int) -> torch.Tensor:
    """Apply element ``index`` to images ``[..., H, W]`` (square, so the shape is kept)."""
    k, f = element(index)
    if f:
        images = torch.flip(images, dims=(-1,))
    if k:
        images = torch.rot90(images, k, dims=(-2, -1))
    return images


def transform_batch(images: torch.Tensor, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Apply element ``indices[i]`` to image ``i`` of a batch ``[B, C, H, W]`` (any device)."""
    idx = torch.as_tensor(indices).reshape(-1).tolist()
    if len(idx) != images.shape[0]:
        raise ValueError(f"{len(idx)} elements for a batch of {images.shape[0]} images")
    out = images.clone()
    for g in set(idx):
        if g == 0:
            continue
        rows = [i for i, e in enumerate(idx) if e == g]
        out[rows] = transform(images[rows], g)
    return out


def group_elements(name: str) -> tuple[int, ...]:
    """The element indices of subgroup ``name`` (``none``, ``flip``, ``flips``, ``rot90``, ``d4``)."""
    try:
        return GROUPS[name]
    except KeyError:
        raise ConfigError(f"unknown symmetry group '{name}'; use one of {', '.join(GROUPS)}") from None


def random_elements(group: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` elements drawn uniformly from subgroup ``group`` (with ``generator``, so the draws are repeatable)."""
    elems = torch.as_tensor(group_elements(group))
    return elems[torch.randint(0, len(elems), (n,), generator=generator)]


def _perm_compose(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The permutation ``p . q`` (apply ``q`` first): ``(p . q)[y] = p[q[y]]``."""
    return p[q]


class LabelSymmetry:
    """How class labels transform under the eight D4 elements.

    ``permutation(g)[y]`` is the class of the transformed image ``transform(x, g)`` when ``x`` has class ``y``.

    Parameters
    ----------
    flip, rot90 : array of int
        The class permutations of a left-right mirror and of a quarter turn (``perm[old] = new``).
    classes : sequence of str
        Class names, for messages and :meth:`describe`.
    """

    def __init__(self, flip: Sequence[int], rot90: Sequence[int], classes: Sequence[str]):
        self.classes = [str(c) for c in classes]
        n = len(self.classes)
        self.flip = np.asarray(flip, dtype=np.int64)
        self.rot90 = np.asarray(rot90, dtype=np.int64)
        ident = np.arange(n)
        for name, p in (("flip", self.flip), ("rot90", self.rot90)):
            if p.shape != (n,) or sorted(p.tolist()) != ident.tolist():
                raise ConfigError(f"label_symmetry.{name} is not a permutation of the {n} classes {self.classes}")
        # the group relations: flip^2 = 1, rot^4 = 1, flip rot flip = rot^-1
        r = [ident]
        for _ in range(4):
            r.append(_perm_compose(self.rot90, r[-1]))
        if not np.array_equal(_perm_compose(self.flip, self.flip), ident):
            raise ConfigError("label_symmetry.flip must undo itself (mirroring twice gives the original image): "
                              "map each class to one partner and the partner back")
        if not np.array_equal(r[4], ident):
            raise ConfigError("label_symmetry.rot90 must give the original class after four quarter turns; "
                              "make its class cycles of length 1, 2 or 4")
        if not np.array_equal(_perm_compose(self.flip, _perm_compose(self.rot90, self.flip)), r[3]):
            raise ConfigError("label_symmetry.flip and rot90 are inconsistent: mirroring, turning by 90 degrees and "
                              "mirroring again must equal turning back by 90 degrees")
        self._perms = np.stack([_perm_compose(r[k], self.flip if f else ident) for f in (0, 1) for k in range(4)])

    @classmethod
    def identity(cls, classes: Sequence[str]) -> LabelSymmetry:
        """Every class is invariant under every transform."""
        n = len(classes)
        return cls(np.arange(n), np.arange(n), classes)

    @classmethod
    def from_declaration(cls, decl: Mapping[str, Mapping[str, str]] | None, classes: Sequence[str]) -> LabelSymmetry:
        """Build from ``{"flip": {a: b, ...}, "rot90": {...}}`` (class names; unlisted classes are invariant).

        Raises
        ------
        ConfigError
            For an unknown generator, an unknown class, a class listed twice as a target, or a declaration
            that is inconsistent with the group (see the module docstring).
        """
        classes = [str(c) for c in classes]
        index = {c: i for i, c in enumerate(classes)}
        perms = {}
        for gen in GENERATORS:
            perms[gen] = np.arange(len(classes))
        for gen, mapping in (decl or {}).items():
            if gen not in GENERATORS:
                from .errors import did_you_mean

                raise ConfigError(f"label_symmetry: unknown transform '{gen}'{did_you_mean(gen, GENERATORS)}; declare "
                                  f"'flip' (left-right mirror) and/or 'rot90' (quarter turn)")
            p = np.arange(len(classes))
            for src, dst in (mapping or {}).items():
                for c in (src, dst):
                    if str(c) not in index:
                        raise ConfigError(f"label_symmetry.{gen} names class '{c}', which the data set does not have; "
                                          f"classes are {classes}")
                p[index[str(src)]] = index[str(dst)]
            if len(set(p.tolist())) != len(classes):
                raise ConfigError(f"label_symmetry.{gen} sends two classes to the same class ({dict(mapping)}); "
                                  f"each class must map to a different one, e.g. {{CW: ACW, ACW: CW}}")
            perms[gen] = p
        return cls(perms["flip"], perms["rot90"], classes)

    @property
    def trivial(self) -> bool:
        """True when every class is invariant under every transform."""
        return bool((self._perms == np.arange(len(self.classes))).all())

    def permutation(self, index: int) -> np.ndarray:
        """``perm`` of element ``index``: an image of class ``y`` becomes class ``perm[y]``."""
        return self._perms[int(index)]

    def permute_labels(self, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The labels of images transformed by ``indices`` (per sample); negative labels (unlabelled) are kept."""
        perms = torch.as_tensor(self._perms, device=labels.device)
        idx = torch.as_tensor(indices, device=labels.device).long()
        new = perms[idx, labels.clamp_min(0).long()]
        return torch.where(labels >= 0, new.to(labels.dtype), labels)

    def unpermute_probabilities(self, probs: torch.Tensor, index: int) -> torch.Tensor:
        """Class probabilities of the original image from those of the image transformed by ``index``.

        ``P(x is class j) = P(transform(x, index) is class perm[j])``: the columns are gathered by ``perm``.
        """
        return probs[..., torch.as_tensor(self._perms[int(index)], device=probs.device)]

    def describe(self) -> str:
        """A short text: which classes swap under a mirror and under a quarter turn."""
        parts = []
        for name, p in (("mirror", self.flip), ("quarter turn", self.rot90)):
            moved = [f"{self.classes[i]}->{self.classes[j]}" for i, j in enumerate(p) if i != j]
            if moved:
                parts.append(f"{name}: {', '.join(moved)}")
        return "; ".join(parts) if parts else "all classes invariant"

    def to_dict(self) -> dict[str, Any]:
        """The declaration (only the classes that move), as ``from_declaration`` takes it."""
        return {name: {self.classes[i]: self.classes[j] for i, j in enumerate(p) if i != j}
                for name, p in (("flip", self.flip), ("rot90", self.rot90))}


def tta_probabilities(logits_fn, images: torch.Tensor, group: str = "d4", symmetry: LabelSymmetry | None = None,
                      temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Class probabilities averaged over the transforms of ``group``, un-permuted by ``symmetry``.

    Parameters
    ----------
    logits_fn : callable
        ``images [B, C, H, W] -> logits [B, K]`` (the model).
    images : torch.Tensor
        The batch.
    group : str
        Subgroup name (``none`` gives plain softmax probabilities).
    symmetry : LabelSymmetry or None
        How the classes transform (None: all invariant).
    temperature : float or tensor
        Logits are divided by it before the softmax (temperature scaling).

    Returns
    -------
    torch.Tensor
        ``[B, K]`` probabilities (float32).
    """
    return average_probabilities(tta_logits(logits_fn, images, group), group, symmetry, temperature)

def draw_elements(group: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` random elements of ``group`` for training augmentation (CPU tensor of indices).

    ``d4`` draws the quarter turns and then the mirrors (as :func:`astrotl.data.d4_augment` always did, so a
    seeded run draws the same transforms as before), ``flip`` a mirror with probability 1/2, the other
    groups uniformly.
    """
    if group == "d4":
        k = torch.randint(0, 4, (n,), generator=generator)
        f = torch.randint(0, 2, (n,), generator=generator)
        return k + 4 * f
    if group == "flip":
        return (torch.rand(n, generator=generator) < 0.5).long() * 4
    return random_elements(group, n, generator)


def tta_logits(logits_fn, images: torch.Tensor, group: str = "d4") -> torch.Tensor:
    """The logits of every transform of ``group``: ``[G, B, K]`` (float32), in the order of :data:`GROUPS`."""
    return torch.stack([logits_fn(transform(images, g)).float() for g in group_elements(group)])


def average_probabilities(logits: torch.Tensor, group: str = "d4", symmetry: LabelSymmetry | None = None,
                          temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Probabilities ``[B, K]`` from :func:`tta_logits` output: softmax(logits / T), un-permuted, averaged."""
    total = None
    for i, g in enumerate(group_elements(group)):
        p = torch.softmax(logits[i].float() / temperature, dim=-1)
        if symmetry is not None:
            p = symmetry.unpermute_probabilities(p, g)
        total = p if total is None else total + p
    return total / logits.shape[0]
