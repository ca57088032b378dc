"""Streaming readers for dataset files. One parser, used by validation and by training.

Each yields (line, record) where record is a dict, or (line, Problem) for a line that cannot
be read at all. Line numbers are 1-based physical lines of the file."""

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

CHUNK = 1024 * 1024
EOL = re.compile(rb"\r\n|\r|\n")
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}


@dataclass(frozen=True)
class Problem:
    line: int | None
    field: str | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "message": self.message}


class UnknownFormat(ValueError):
    pass


def format_detect(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    if suffix not in FORMATS:
        raise UnknownFormat(f"{filename!r}: unsupported file type {suffix or '(none)'}; use .jsonl, .csv or .tsv")
    return FORMATS[suffix]


def _raw_lines(fh: IO[bytes], limit: int) -> Iterator[bytes | None]:
    """Physical lines (ended by \\n, \\r\\n or \\r), each at most `limit` bytes; None stands for a
    longer line, which is skipped in bounded memory."""
    buffer, skipping = b"", False
    while chunk := fh.read(CHUNK):
        buffer += chunk
        start = 0
        for end_of_line in EOL.finditer(buffer):
            if end_of_line.group() == b"\r" and end_of_line.end() == len(buffer):
                break  # may be the first half of \r\n: wait for the next chunk
            line, start = buffer[start : end_of_line.end()], end_of_line.end()
            if skipping:  # the rest of an over-long line, already reported
                skipping = False
                continue
            yield line if len(line) <= limit else None
        buffer = buffer[start:]
        if len(buffer) > limit:
            if not skipping:
                yield None
            buffer, skipping = b"", True
    if buffer and not skipping:
        yield buffer if len(buffer) <= limit else None


def _decoded_lines(path: Path, problems: list[Problem], limit: int) -> Iterator[str]:
    with open(path, "rb") as fh:
        for number, raw in enumerate(_raw_lines(fh, limit), start=1):
            if raw is None:
                problems.append(Problem(number, None, f"line is longer than {limit} bytes"))
                yield "\n"
                continue
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield raw.decode("utf-8").rstrip("\r\n") + "\n"
            except UnicodeDecodeError as exc:
                problems.append(Problem(number, None, f"not valid UTF-8 (byte {exc.start + 1} of the line)"))
                yield "\n"  # keep line numbering; the row is reported, not read


def _jsonl(path: Path, limit: int) -> Iterator[tuple[int, dict[str, Any] | Problem]]:
    problems: list[Problem] = []
    for number, text in enumerate(_decoded_lines(path, problems, limit), start=1):
        if problems:
            yield from ((p.line or number, p) for p in problems)
            problems.clear()
            continue
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield number, Problem(number, None, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        except RecursionError:
            yield number, Problem(number, None, "invalid JSON: nested too deeply")
            continue
        if not isinstance(value, dict):
            yield number, Problem(number, None, f"expected a JSON object, got {type(value).__name__}")
            continue
        yield number, value


def _delimited(path: Path, delimiter: str, limit: int) -> Iterator[tuple[int, dict[str, Any] | Problem]]:
    problems: list[Problem] = []
    lines = _decoded_lines(path, problems, limit)
    reader = csv.reader(lines, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
    header: list[str] | None = None
    last_line = 0
    try:
        for row in reader:
            start, last_line = last_line + 1, reader.line_num
            if problems:
                yield from ((p.line or start, p) for p in problems)
                problems.clear()
                continue
            if not row or all(not cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip() for cell in row]
                duplicates = sorted({h for h in header if header.count(h) > 1})
                if duplicates:
                    yield start, Problem(start, None, f"header repeats column(s) {duplicates}")
                    return
                continue
            if len(row) != len(header):
                yield start, Problem(start, None, f"has {len(row)} fields, the header has {len(header)}")
                continue
            yield start, dict(zip(header, row, strict=True))
    except csv.Error as exc:
        kind = "TSV" if delimiter == "\t" else "CSV"
        yield last_line + 1, Problem(last_line + 1, None, f"unreadable {kind}: {exc}")
    if problems:
        yield from ((p.line or last_line, p) for p in problems)


def records_iter(path: Path, fmt: str, *, max_line_bytes: int = 1024 * 1024) -> Iterator[
        tuple[int, dict[str, Any] | Problem]]:
    if fmt == "jsonl":
        return _jsonl(path, max_line_bytes)
    if fmt in {"csv", "tsv"}:
        csv.field_size_limit(max_line_bytes)
        return _delimited(path, "," if fmt == "csv" else "\t", max_line_bytes)
    raise UnknownFormat(f"unsupported format {fmt!r}")
