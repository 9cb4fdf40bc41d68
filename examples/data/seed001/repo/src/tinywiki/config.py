"""Settings read from the TOML config file."""

import tomllib
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Config:
    source: Path
    output: Path
    title: str = "Wiki"


def load_config(path: Path) -> Config:
    data = tomllib.loads(path.read_text())
    return Config(Path(data["source"]), Path(data["output"]), data.get("title", "Wiki"))
