"""`kspec schema`: print the JSON Schema of the kspec language."""

from __future__ import annotations

import argparse
import json
from typing import IO

from kspec.frontend.schema import schema


def run(args: argparse.Namespace, flags: object, stdin: IO, stdout: IO, stderr: IO) -> int:
    stdout.write(json.dumps(schema(), indent=2) + "\n")
    return 0
