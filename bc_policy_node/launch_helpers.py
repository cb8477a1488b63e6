"""Turn graph.py specs into launch actions (imported only by launch/*.launch.py).

Kept separate from graph.py so that the graph definitions stay importable without the launch
stack (CI starts the same specs as processes through procs.py).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from .graph import GRAPHS, PACKAGE, config_path


def _args(graph_names):
    seen, out = set(), []
    for g in graph_names:
        for a in GRAPHS[g][0]:
            if a.name not in seen:
                seen.add(a.name)
                out.append(a)
    return out


def _nodes(context, graph_names):
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in _args(graph_names)}
    actions = []
    for g in graph_names:
        for spec in GRAPHS[g][1](**values):
            params = [str(config_path(spec.param_file))] if spec.param_file else []
            params.append(dict(spec.parameters))
            actions.append(Node(package=PACKAGE, executable=spec.executable, name=spec.name,
                                parameters=params, remappings=list(spec.remappings), output="screen",
                                emulate_tty=True))
    return actions


def generate(*graph_names: str) -> LaunchDescription:
    """A LaunchDescription declaring every argument (with its description) and the nodes."""
    decls = [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
             for a in _args(graph_names)]
    return LaunchDescription(decls + [OpaqueFunction(function=_nodes, args=[list(graph_names)])])
