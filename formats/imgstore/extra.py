"""Extra data of an imgstore: per-chunk JSON arrays of records (DAQ values, labels...).

Records are matched to frames by their own `frame_index`/`frame_number` fields, never
by the file they sit in (upstream puts a record added right after a chunk filled up in
the next chunk's file). Files of a crashed writer lack the closing `]`; they are read
up to the last complete record.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os

from .index import FrameIndex, _CHUNK_NAME
from .metadata import StoreMetadata

log = logging.getLogger(__name__)


def extra_data_files(meta: StoreMetadata, index: FrameIndex) -> list[str]:
    """Extra-data files in chunk order: Motif's root `NNNNNN.extra_data.json` first, else
    the imgstore API's `NNNNNN.extra.json` / `NNNNNN/index.extra.json`."""
    numbers = set()
    try:
        names = meta.files.listdir(meta.path)
    except OSError:
        return []
    for name in names:
        stem = name.split(".", 1)[0]
        if _CHUNK_NAME.match(stem):
            numbers.add(int(stem))
    numbers.update(c.number for c in index.chunks)
    found = []
    for number in sorted(numbers):
        base = os.path.join(meta.path, f"{number:06d}")
        candidates = [base + ".extra_data.json"]
        candidates.append(os.path.join(base, "index.extra.json") if meta.kind == "directory"
                          else base + ".extra.json")
        for path in candidates:
            if meta.files.isfile(path):
                found.append(path)
                break
    return found


def _parse_records(text: str, path: str) -> list[dict]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        # an unterminated array from a writer that crashed: keep the complete records
        decoder = json.JSONDecoder()
        records, pos = [], text.find("[") + 1
        while pos > 0:
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            try:
                obj, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                break
            records.append(obj)
        log.warning("%s: extra data file is not complete JSON, read %d records", path, len(records))
        doc = records
    if not isinstance(doc, list):
        log.warning("%s: extra data is not a JSON array, ignored", path)
        return []
    return [r for r in doc if isinstance(r, dict)]


def _clean(value):
    """JSON-safe value: NaN and infinities (which upstream writes) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def read_extra_data(meta: StoreMetadata, index: FrameIndex) -> list[dict]:
    records = []
    for path in extra_data_files(meta, index):
        try:
            text = meta.files.read(path).decode("utf-8", errors="replace")
        except OSError as exc:
            log.warning("%s: %s", path, exc.strerror or exc)
            continue
        if not text.strip():
            continue
        found = [_clean(r) for r in _parse_records(text, path)]
        if path.endswith(".extra_data.json"):
            # Motif pre-allocates rows and marks the unused ones with negative numbers
            found = [r for r in found if not (isinstance(r.get("frame_number"), (int, float))
                                              and r["frame_number"] < 0)]
        records.extend(found)

    def order(r):
        fi, st = r.get("frame_index"), r.get("sensor_time")
        return (fi if isinstance(fi, (int, float)) else -1, st if isinstance(st, (int, float)) else 0)

    records.sort(key=order)
    return records


def records_to_jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records).encode()


def records_to_csv(records: list[dict]) -> bytes:
    """One row per record; columns are the union of keys in first-seen order, nested
    values as JSON text."""
    columns: dict[str, None] = {}
    for r in records:
        for k in r:
            columns.setdefault(k, None)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for r in records:
        row = []
        for k in columns:
            v = r.get(k)
            row.append("" if v is None else json.dumps(v) if isinstance(v, (dict, list)) else v)
        writer.writerow(row)
    return out.getvalue().encode()
