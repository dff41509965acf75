"""Corruption scenarios with ground truth (label flips, backdoor triggers): the ``scenario`` section of a config."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, NonNegativeInt, PositiveInt

from tda_clean.config.base import _Frozen

class NoScenario(_Frozen):
    kind: Literal["none"] = "none"


class UniformFlip(_Frozen):
    """Flip a ``rate`` share of training labels, each to a uniformly drawn other class."""

    kind: Literal["uniform_flip"] = "uniform_flip"
    rate: float = Field(gt=0, lt=0.5)


class ClassFlip(_Frozen):
    """Flip a ``rate`` share (below 1: the class must keep rows) of the training rows of class ``source`` to
    class ``target``."""

    kind: Literal["class_flip"] = "class_flip"
    source: int
    target: int
    rate: float = Field(gt=0, lt=1)


class GroupFlip(_Frozen):
    """Flip a ``rate`` share of the training rows in one subgroup (``column == value``) with label ``source``
    to ``target`` — e.g. 30% of the positive labels of women become negative."""

    kind: Literal["group_flip"] = "group_flip"
    column: str
    value: str
    source: int = 1
    target: int = 0
    rate: float = Field(gt=0, le=1)


class BadNets(_Frozen):
    """BadNets backdoor: stamp a trigger patch on a ``rate`` share of training images (from classes other than
    ``target``) and relabel them ``target``; the test set gets a triggered copy to measure attack success.

    The patch: ``patch_size`` (side, or ``[height, width]``) at ``position`` (a corner, ``"center"``, or the
    ``[row, col]`` of its top-left pixel); ``pattern`` ``solid`` (every pixel ``patch_value``),
    ``checkerboard`` (``patch_value`` at the top-left pixel, alternating with ``1 - patch_value``) or
    ``random`` (uniform [0, 1) pixels drawn with ``pattern_seed``); blended into the image as
    ``(1 - alpha) x + alpha patch`` inside the patch (``alpha: 1`` = stamped). The defaults are the classic
    2x2 white square in the bottom-right corner."""

    kind: Literal["badnets"] = "badnets"
    target: int = 0
    rate: float = Field(gt=0, lt=0.5)
    patch_size: Union[PositiveInt, tuple[PositiveInt, PositiveInt]] = 2
    patch_value: float = 1.0
    position: Union[Literal["bottom-right", "bottom-left", "top-right", "top-left", "center"],
                    tuple[NonNegativeInt, NonNegativeInt]] = "bottom-right"
    pattern: Literal["solid", "checkerboard", "random"] = "solid"
    pattern_seed: int = 1234
    alpha: float = Field(default=1.0, gt=0, le=1)


class Blended(_Frozen):
    """Blended-trigger backdoor (Chen et al. 2017): ``x' = (1 - alpha) x + alpha P`` for a fixed seeded
    uniform-noise pattern ``P`` (``pattern_seed``) on a ``rate`` share of training images (from classes other
    than ``target``), relabelled ``target``; the test set gets a blended copy to measure attack success."""

    kind: Literal["blended"] = "blended"
    target: int = 0
    rate: float = Field(gt=0, lt=0.5)
    alpha: float = Field(default=0.2, gt=0, lt=1)
    pattern_seed: int = 1234


Scenario = Annotated[Union[NoScenario, UniformFlip, ClassFlip, GroupFlip, BadNets, Blended],
                     Field(discriminator="kind")]
