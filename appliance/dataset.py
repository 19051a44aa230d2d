"""Labelled data sets described by a manifest CSV (the format of shared/data/busi).

Columns ``image``, ``label``, ``masks`` (``;``-separated, may be empty) and ``split``,
paths relative to the CSV; other columns (``site``, ``patient``, ...) are ignored. Rows
whose split is ``exclude`` are dropped. Read by training (`trainer.data`) and by
`fame-node evaluate`, so both see the same cases.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import FameNodeError

REQUIRED_COLUMNS = ("image", "label", "masks", "split")
EXCLUDED_SPLIT = "exclude"


class DatasetError(FameNodeError):
    """The manifest CSV, or a file it names, is unusable."""


@dataclass(frozen=True)
class Case:
    """One manifest row; paths are resolved against the CSV's folder."""

    image: Path
    label: str
    masks: tuple[Path, ...]
    split: str
    line: int  # in the CSV, for messages
    site: str | None = None  # the optional ``site`` column (BUS-BRA: the scanner)


def read_dataset_manifest(manifest: Path) -> list[Case]:
    """Every row of `manifest` but the excluded ones.

    Raises
    ------
    DatasetError
        the file cannot be read, or a required column is missing.
    """
    try:
        with manifest.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(
                    f"{manifest}: columns {missing} missing; expected at least "
                    f"{list(REQUIRED_COLUMNS)} (the format of shared/data/busi/manifest.csv)"
                )
            rows = [(line, row) for line, row in enumerate(reader, start=2)]
    except FileNotFoundError:
        raise DatasetError(f"{manifest} does not exist; pass the path of a manifest CSV") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {manifest}: {exc.strerror}") from exc
    base = manifest.parent
    return [
        Case(
            image=base / row["image"].strip(),
            label=row["label"].strip(),
            masks=tuple(base / m.strip() for m in row["masks"].split(";") if m.strip()),
            split=row["split"].strip(),
            line=line,
            site=(row.get("site") or "").strip() or None,
        )
        for line, row in rows
        if row["split"].strip() != EXCLUDED_SPLIT
    ]
