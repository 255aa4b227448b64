"""The benchmarks' output: JSON lines, each printed as soon as it is measured and, when a file is
named, appended to it, so a run cut off still leaves what it measured."""
from __future__ import annotations

import json


class Lines(list):
    """The lines emitted so far; ``extra`` fields are added to every line."""

    def __init__(self, output: str = "", **extra):
        super().__init__()
        self.output, self.extra = output, extra

    def emit(self, line: dict) -> dict:
        line = {**line, **self.extra}
        self.append(line)
        print(json.dumps(line), flush=True)
        if self.output:
            with open(self.output, "a") as f:
                f.write(json.dumps(line) + "\n")
        return line
