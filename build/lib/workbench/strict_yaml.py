"""YAML for run configs: what a person writes, and nothing that expands or hides a value."""

from __future__ import annotations

import yaml


class StrictLoader(yaml.SafeLoader):
    """YAML as a person writes a run config: no aliases (a few nested ``&a``/``*a`` expand a small
    file into gigabytes) and no key twice in one mapping (YAML keeps the last one silently)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"it uses the alias *{event.anchor} (line {event.start_mark.line + 1}); write the value "
                "out in full, as the workbench reads no aliases", None)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = self.construct_scalar(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key '{key[:80]}' appears twice in one mapping (lines {seen[key]} and "
                        f"{key_node.start_mark.line + 1}); keep one of them, as YAML would silently drop the first",
                        None)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


class PlainDumper(yaml.SafeDumper):
    """Writes every value in full, so what the workbench saves its own loader reads back."""

    def ignore_aliases(self, data):
        return True
