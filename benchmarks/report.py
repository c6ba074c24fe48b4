"""What the benchmark scripts share: the machine they ran on, and their block in a markdown file."""
from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path


def machine() -> str:
    """'<CPU model>, <n> cores' of this machine."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table: one header row, then one row per list of cells."""
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines)


def replace_block(path: Path, name: str, text: str) -> None:
    """Put `text` between the markers `<!-- name:begin -->` and `<!-- name:end -->` of a markdown
    file (appended with its markers when the file has none), leaving the rest alone."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    doc = path.read_text()
    head, _, rest = doc.partition(begin)
    _, _, tail = rest.partition(end)
    path.write_text(f"{head}{begin}\n\n{text}\n{end}{tail}" if rest else f"{doc}\n{begin}\n\n{text}\n{end}\n")
