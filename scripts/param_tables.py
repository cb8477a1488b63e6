"""Print the README's node parameter tables from the nodes' parameter dataclasses.

    python scripts/param_tables.py > /tmp/params.md    (test/unit/test_readme.py checks the README)
"""
import dataclasses
import importlib

NODES = [  # (node name, module, dataclass)
    ("mujoco_bridge", "bc_policy_node.core.sim.bridge_params", "BridgeParams"),
    ("expert", "bc_policy_node.nodes.expert_node", "ExpertParams"),
    ("recorder", "bc_policy_node.nodes.recorder_node", "RecorderParams"),
    ("policy", "bc_policy_node.core.control.params", "PolicyParams"),
    ("dagger", "bc_policy_node.nodes.dagger_node", "DaggerParams"),
]


def params(module: str, cls: str):
    klass = getattr(importlib.import_module(module), cls)
    for f in dataclasses.fields(klass):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        yield f.name, default, f.metadata.get("doc", "")


def fmt(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(map(str, v)) + "]"
    if v == "":
        return '""'
    return str(v).lower() if isinstance(v, bool) else str(v)


def tables() -> str:
    out = []
    for node, module, cls in NODES:
        out += [f"**`{node}`**", "", "| parameter | default | meaning |", "|---|---|---|"]
        out += [f"| `{n}` | `{fmt(d)}` | {doc.replace('|', '/')} |" for n, d, doc in params(module, cls)]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(tables())
