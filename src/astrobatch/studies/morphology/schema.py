"""Galaxy Zoo decision trees: questions, answers, which answer leads to which question.

The study's internal schema is the GZ DECaLS one (Walmsley et al. 2022, MNRAS 509, 3966,
arXiv:2102.08414; the DR5 tree as in Zoobot's ``label_metadata``): column names
``<question>_<answer>`` with counts, ``<question>_total-votes`` and
``<question>_<answer>_fraction``. GZ2 catalogues (Hart et al. 2016, MNRAS 461, 3663,
arXiv:1607.01019: ``t01_smooth_or_features_a01_smooth_count``, ``..._fraction``) are read
through :data:`GZ2_TO_DECALS`, which maps a GZ2 answer to the DECaLS answer of the same
meaning. Answers without one (GZ2's yes/no bar against DECaLS's strong/weak/no, its
four-level bulge against five, the "odd" questions) are not shared and are dropped.

A question is *asked* of a galaxy when its total votes are > 0; a volunteer reaches a
question only through the answer it hangs from (:attr:`Question.asked_after`), so the
votes of a question never exceed the count of that answer. Questions nobody was asked
contribute nothing to the losses (:mod:`astrobatch.tasks.votes`).

Examples
--------
>>> s = DECALS.restrict(["smooth-or-featured", "disk-edge-on", "has-spiral-arms"])
>>> s.answer_names[:3]
['smooth-or-featured_smooth', 'smooth-or-featured_featured-or-disk', 'smooth-or-featured_artifact']
>>> s.question_index.tolist()
[0, 0, 0, 1, 1, 2, 2]
>>> s.parent_answer.tolist()   # answer index each question hangs from (-1: always asked)
[-1, 1, 4]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Question:
    """One question of a Galaxy Zoo decision tree.

    Attributes
    ----------
    name : str
        Column prefix, e.g. ``"smooth-or-featured"``.
    answers : tuple of str
        Answer names, e.g. ``("smooth", "featured-or-disk", "artifact")``.
    asked_after : str or None
        The answer ``"<question>_<answer>"`` that leads a volunteer here; None: asked of
        every galaxy.
    """

    name: str
    answers: tuple[str, ...]
    asked_after: str | None = None

    @property
    def columns(self) -> list[str]:
        """``<question>_<answer>`` of every answer."""
        return [f"{self.name}_{a}" for a in self.answers]


@dataclass(frozen=True)
class Schema:
    """A decision tree: questions in an order where a parent comes before its children.

    Attributes
    ----------
    name : str
    questions : tuple of Question

    Raises
    ------
    ValueError
        A duplicate question, or an ``asked_after`` answer that is not an earlier
        question's answer.
    """

    name: str
    questions: tuple[Question, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        names: set[str] = set()
        for q in self.questions:
            if q.name in names:
                raise ValueError(f"schema {self.name}: question {q.name!r} twice")
            if q.asked_after is not None and q.asked_after not in seen:
                raise ValueError(
                    f"schema {self.name}: {q.name!r} is asked after {q.asked_after!r}, "
                    "which is not an answer of an earlier question"
                )
            names.add(q.name)
            seen.update(q.columns)

    @cached_property
    def answer_names(self) -> list[str]:
        """Every ``<question>_<answer>``, question by question (A names)."""
        return [c for q in self.questions for c in q.columns]

    @property
    def question_names(self) -> list[str]:
        """Question names (Q)."""
        return [q.name for q in self.questions]

    @cached_property
    def question_index(self) -> np.ndarray:
        """Question of each answer, int64 (A,)."""
        return np.repeat(np.arange(len(self.questions)), [len(q.answers) for q in self.questions])

    @cached_property
    def parent_answer(self) -> np.ndarray:
        """Index of the answer each question hangs from, int64 (Q,); -1: always asked."""
        col = {c: i for i, c in enumerate(self.answer_names)}
        return np.array([col.get(q.asked_after, -1) for q in self.questions], np.int64)

    def question(self, name: str) -> Question:
        """The question called ``name``.

        Raises
        ------
        KeyError
        """
        for q in self.questions:
            if q.name == name:
                return q
        raise KeyError(f"schema {self.name} has no question {name!r}; it has {self.question_names}")

    def restrict(self, questions: Iterable[str]) -> Schema:
        """The tree cut down to ``questions`` (in this schema's order).

        A kept question whose parent question is dropped is then asked of every galaxy
        that reaches it: its ``asked_after`` is kept only when its parent question is kept.

        Raises
        ------
        KeyError
            A name that is not a question of this schema.
        """
        keep = list(dict.fromkeys(questions))
        for name in keep:
            self.question(name)
        kept_cols = {c for q in self.questions if q.name in keep for c in q.columns}
        qs = tuple(
            Question(q.name, q.answers, q.asked_after if q.asked_after in kept_cols else None)
            for q in self.questions
            if q.name in keep
        )
        return Schema(self.name, qs)

    def total_votes(self, counts: np.ndarray) -> np.ndarray:
        """Votes per question: the sum of its answers' counts.

        Parameters
        ----------
        counts : numpy.ndarray, shape (N, A)

        Returns
        -------
        numpy.ndarray, shape (N, Q), same dtype
        """
        counts = np.asarray(counts)
        out = np.zeros((counts.shape[0], len(self.questions)), counts.dtype)
        np.add.at(out.T, self.question_index, counts.T)
        return out

    def fractions(self, counts: np.ndarray) -> np.ndarray:
        """Vote fractions per answer (count / its question's total; 0 where nobody voted).

        Parameters
        ----------
        counts : numpy.ndarray, shape (N, A)

        Returns
        -------
        numpy.ndarray, shape (N, A), float64
        """
        totals = self.total_votes(counts).astype(np.float64)[:, self.question_index]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(totals > 0, np.asarray(counts, np.float64) / totals, 0.0)


def _q(name: str, answers: Sequence[str], after: str | None = None) -> Question:
    return Question(name, tuple(answers), after)


#: The GZ DECaLS (DR5) tree, Walmsley et al. (2022), as in Zoobot's label metadata.
DECALS = Schema(
    "gz_decals",
    (
        _q("smooth-or-featured", ("smooth", "featured-or-disk", "artifact")),
        _q("disk-edge-on", ("yes", "no"), "smooth-or-featured_featured-or-disk"),
        _q("has-spiral-arms", ("yes", "no"), "disk-edge-on_no"),
        _q("bar", ("strong", "weak", "no"), "disk-edge-on_no"),
        _q("bulge-size", ("dominant", "large", "moderate", "small", "none"), "disk-edge-on_no"),
        _q("how-rounded", ("round", "in-between", "cigar-shaped"), "smooth-or-featured_smooth"),
        _q("edge-on-bulge", ("boxy", "none", "rounded"), "disk-edge-on_yes"),
        _q("spiral-winding", ("tight", "medium", "loose"), "has-spiral-arms_yes"),
        _q(
            "spiral-arm-count",
            ("1", "2", "3", "4", "more-than-4", "cant-tell"),
            "has-spiral-arms_yes",
        ),
        _q("merging", ("none", "minor-disturbance", "major-disturbance", "merger")),
    ),
)

#: The GZ2 tree (Willett et al. 2013, arXiv:1308.3496; Hart et al. 2016 column names),
#: task by task as ``t<nn>_<task>`` with answers ``a<nn>_<answer>``.
GZ2 = Schema(
    "gz2",
    (
        _q(
            "t01_smooth_or_features", ("a01_smooth", "a02_features_or_disk", "a03_star_or_artifact")
        ),
        _q("t02_edgeon", ("a04_yes", "a05_no"), "t01_smooth_or_features_a02_features_or_disk"),
        _q("t03_bar", ("a06_bar", "a07_no_bar"), "t02_edgeon_a05_no"),
        _q("t04_spiral", ("a08_spiral", "a09_no_spiral"), "t02_edgeon_a05_no"),
        _q(
            "t05_bulge_prominence",
            ("a10_no_bulge", "a11_just_noticeable", "a12_obvious", "a13_dominant"),
            "t02_edgeon_a05_no",
        ),
        _q("t06_odd", ("a14_yes", "a15_no")),
        _q(
            "t07_rounded",
            ("a16_completely_round", "a17_in_between", "a18_cigar_shaped"),
            "t01_smooth_or_features_a01_smooth",
        ),
        _q(
            "t08_odd_feature",
            (
                "a19_ring",
                "a20_lens_or_arc",
                "a21_disturbed",
                "a22_irregular",
                "a23_other",
                "a24_merger",
                "a38_dust_lane",
            ),
            "t06_odd_a14_yes",
        ),
        _q("t09_bulge_shape", ("a25_rounded", "a26_boxy", "a27_no_bulge"), "t02_edgeon_a04_yes"),
        _q("t10_arms_winding", ("a28_tight", "a29_medium", "a30_loose"), "t04_spiral_a08_spiral"),
        _q(
            "t11_arms_number",
            ("a31_1", "a32_2", "a33_3", "a34_4", "a36_more_than_4", "a37_cant_tell"),
            "t04_spiral_a08_spiral",
        ),
    ),
)

#: GZ2 answer -> the GZ DECaLS answer of the same meaning (the answers the surveys share).
GZ2_TO_DECALS: dict[str, str] = {
    "t01_smooth_or_features_a01_smooth": "smooth-or-featured_smooth",
    "t01_smooth_or_features_a02_features_or_disk": "smooth-or-featured_featured-or-disk",
    "t01_smooth_or_features_a03_star_or_artifact": "smooth-or-featured_artifact",
    "t02_edgeon_a04_yes": "disk-edge-on_yes",
    "t02_edgeon_a05_no": "disk-edge-on_no",
    "t04_spiral_a08_spiral": "has-spiral-arms_yes",
    "t04_spiral_a09_no_spiral": "has-spiral-arms_no",
    "t07_rounded_a16_completely_round": "how-rounded_round",
    "t07_rounded_a17_in_between": "how-rounded_in-between",
    "t07_rounded_a18_cigar_shaped": "how-rounded_cigar-shaped",
    "t09_bulge_shape_a25_rounded": "edge-on-bulge_rounded",
    "t09_bulge_shape_a26_boxy": "edge-on-bulge_boxy",
    "t09_bulge_shape_a27_no_bulge": "edge-on-bulge_none",
    "t10_arms_winding_a28_tight": "spiral-winding_tight",
    "t10_arms_winding_a29_medium": "spiral-winding_medium",
    "t10_arms_winding_a30_loose": "spiral-winding_loose",
    "t11_arms_number_a31_1": "spiral-arm-count_1",
    "t11_arms_number_a32_2": "spiral-arm-count_2",
    "t11_arms_number_a33_3": "spiral-arm-count_3",
    "t11_arms_number_a34_4": "spiral-arm-count_4",
    "t11_arms_number_a36_more_than_4": "spiral-arm-count_more-than-4",
    "t11_arms_number_a37_cant_tell": "spiral-arm-count_cant-tell",
}

#: Catalogue layouts by name: the tree and the map of its answers to the DECaLS ones.
LAYOUTS: dict[str, tuple[Schema, dict[str, str]]] = {
    "gz_decals": (DECALS, {c: c for c in DECALS.answer_names}),
    "gz2": (GZ2, GZ2_TO_DECALS),
}


def shared_questions(layouts: Iterable[str]) -> list[str]:
    """DECaLS questions whose every answer is mapped from every layout in ``layouts``.

    Examples
    --------
    >>> shared_questions(["gz_decals", "gz2"])  # doctest: +NORMALIZE_WHITESPACE
    ['smooth-or-featured', 'disk-edge-on', 'has-spiral-arms', 'how-rounded', 'edge-on-bulge',
     'spiral-winding', 'spiral-arm-count']
    """
    mapped = [set(LAYOUTS[name][1].values()) for name in layouts]
    return [q.name for q in DECALS.questions if all(set(q.columns) <= m for m in mapped)]
