"""What every tab shares: the launch options and the one RunConfig (as a dict in gr.State)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LaunchOptions:
    model: str = "demo"
    dataset: str = ""
    max_file_size: str = "200mb"


@dataclass
class AppState:
    options: LaunchOptions
    config: Any = None  # gr.State holding RunConfig.to_dict(); set by app.build_app
    components: dict = field(default_factory=dict)  # named widgets other tabs may listen to
