"""Write the JSON Schema of every protocol message: ``python -m relay.schema DIR``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import TypeAdapter

from common.messages import MESSAGES

__all__ = ["render_schemas", "write_schemas"]


def render_schemas() -> dict[str, str]:
    """File name → schema text, exactly as committed under docs/schema/."""
    return {
        f"{name}.schema.json": json.dumps(
            TypeAdapter(model).json_schema(mode="serialization"), indent=2, sort_keys=True
        )
        + "\n"
        for name, model in MESSAGES.items()
    }


def write_schemas(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in render_schemas().items():
        (directory / name).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    write_schemas(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schema"))
